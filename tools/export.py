"""Export a DeepSpeed training checkpoint to a LLaMA-Omni-layout folder.

    python tools/export.py --checkpoint runs/stage1 --out exported/stage1            # latest checkpoint
    python tools/export.py --checkpoint runs/stage1/checkpoints/step_000400 --out ... [--dtype bf16]

ZeRO-2 and ZeRO-3 shards are consolidated to fp32 on the CPU with DeepSpeed's zero_to_fp32
(the trained params, from the optimizer's fp32 partitions), loaded into a model built from the
run's own training config (saved in the checkpoint), whose folders give the frozen params (they
are not in the checkpoint; their digest must match the one it recorded), and written with
`save_omni_folder` (config.json with LLaMA-Omni keys, safetensors with LLaMA-Omni names,
tokenizer). Needs CPU memory for the fp32 model (~4 bytes/param) and no GPU.
"""
import argparse
import fnmatch
import json
import os
import sys
from pathlib import Path
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _resolve(path: str) -> Path:
    from omni_ds.train.checkpointing import find_checkpoint
    try:
        return find_checkpoint(path, f"--checkpoint {path}")
    except (OSError, RuntimeError) as e:
        raise SystemExit(f"error: {e}") from None


# What save_omni_folder writes (model, config, tokenizer files): an export folder holds only these.
_EXPORT_FILES = ("config.json", "generation_config.json", "omni_ds_training.json", "model*.safetensors",
                 "model.safetensors.index.json", "tokenizer*", "special_tokens_map.json", "chat_template.jinja",
                 "vocab.json", "merges.txt", "added_tokens.json")


def _out_problem(out: Path, overwrite: bool) -> Optional[str]:
    """Why --out must not be written, or None: the export replaces the folder whole, so it may
    only replace an earlier export, and only when asked to."""
    if out.is_file():
        return "is a file"
    if not out.is_dir() or not any(out.iterdir()):
        return None
    if not overwrite:
        return "is not empty; pass --overwrite to replace an earlier export, or choose a new folder"
    foreign = sorted(p.name for p in out.iterdir()
                     if p.is_dir() or not any(fnmatch.fnmatch(p.name, pat) for pat in _EXPORT_FILES))
    if foreign or not (out / "omni_ds_training.json").is_file():
        return (f"holds files an export does not write ({foreign[:5]}): it is not replaced, even with --overwrite"
                if foreign else "is not an earlier export (no omni_ds_training.json): it is not replaced")
    return None


def _check_matches(ckpt: Path, state: dict, model, full: dict, accept_change: bool) -> None:
    """The checkpoint holds the trained parameters; the frozen ones come from the folders the
    run started from (built into `model`), which must be the folders the checkpoint was trained on."""
    from omni_ds.train.checkpointing import frozen_names
    from omni_ds.train.resume_check import model_digest
    own = model.state_dict()
    missing = sorted(set(own) - set(full) - frozen_names(model))
    unexpected = sorted(set(full) - set(own))
    if missing or unexpected:
        raise SystemExit(f"error: checkpoint {ckpt} does not match the model of its config: "
                         f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                         f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
    saved = state.get("resume_identity", {}).get("model")
    now = model_digest(state["config"]["model"], state["config"].get("lora"))     # as the run's identity
    if set(own) - set(full) and saved and saved != now and not accept_change:
        raise SystemExit(f"error: checkpoint {ckpt} holds the trained parameters only; the frozen ones come from "
                         f"the folders its config names ({_folders(state['config']['model'])}), which changed "
                         "since it was saved (a digest of their files; a copy with new mtimes counts as changed): "
                         "export with the folders it was trained from, or pass --accept-model-change")


def _folders(model: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in model.items() if k.endswith(("_path", "init_from")) and v)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True,
                    help="a step_N checkpoint folder, a checkpoints/ folder or an output_dir (latest)")
    ap.add_argument("--out", required=True, help="folder to write: new or empty, or an earlier export with "
                    "--overwrite (replaced atomically)")
    ap.add_argument("--overwrite", action="store_true",
                    help="replace --out when it holds an earlier export; a folder with any other file is "
                         "never replaced")
    ap.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="bf16",
                    help="dtype of the written weights (default bf16, as released)")
    ap.add_argument("--accept-model-change", action="store_true",
                    help="export even though the folders the frozen weights come from changed since training")
    args = ap.parse_args(argv)
    problem = _out_problem(Path(args.out), args.overwrite)
    if problem:
        print(f"error: --out {args.out}: {problem}", file=sys.stderr)
        return 2

    import torch
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from omni_ds.model.checkpoint import save_omni_folder
    from omni_ds.precision import torch_dtype
    from omni_ds.train.config import build_config
    from omni_ds.train.parts import build_model

    ckpt = _resolve(args.checkpoint)
    state = json.loads((ckpt / "omni_ds_state.json").read_text())
    cfg = build_config(state["config"], source=f"{ckpt}/omni_ds_state.json")
    print(f"export: {ckpt} (stage {cfg.stage}, step {state['step']}) -> {args.out}")
    full = get_fp32_state_dict_from_zero_checkpoint(str(ckpt.parent), tag=ckpt.name)
    # skeleton + tokenizer from the run's config, in fp32: the checkpoint's masters are fp32
    model, tokenizer = build_model(cfg, {}, dtype=torch.float32)
    _check_matches(ckpt, state, model, full, args.accept_model_change)
    model.load_state_dict({k: v.contiguous() for k, v in full.items()}, strict=False)
    dtype = torch_dtype(args.dtype)
    from omni_ds.train.lora import final_state
    merged = final_state(model, model.state_dict())            # a LoRA run: the merged model
    out = save_omni_folder(args.out, model, tokenizer, state_dict=merged, metadata={
        "exported_from": str(ckpt), "step": state["step"], "stage": cfg.stage, "loss": state.get("loss"),
        "config": state["config"]}, dtype=dtype)
    print(f"export: wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
