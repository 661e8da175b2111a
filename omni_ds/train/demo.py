"""Demo / test training setups on tiny models.

`demo_stage1_config(demo_dir)` / `demo_stage2_config(demo_dir)` are what `tools/make_demo_data.py`
writes as DIR/stage1.json / DIR/stage2.json.
`write_tiny_setup(dir)` builds a self-contained tiny run (tokenizer, Whisper, Llama, a manifest of
the real spoken instructions in ../shared/data/spoken_instructions with distinct short answers)
for tests and the benchmark.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

SHARED_CLIPS = Path(__file__).resolve().parents[3] / "shared" / "data" / "spoken_instructions"

ANSWERS = [
    "Red apples are sweet.", "The sky is blue today.", "Cats sleep all day long.",
    "Seven plus two is nine.", "Paris is in France.", "Water boils at one hundred.",
    "Birds can fly south.", "Music makes people happy.", "Snow is cold and white.",
    "Books open new worlds.",
]


def demo_stage1_config(demo_dir: str | Path, **overrides) -> dict:
    """Stage 1 training config for the demo data and tiny models under `demo_dir`
    (DIR/train.jsonl, DIR/val.jsonl, DIR/models/whisper, DIR/models/llm): 2 CPU ranks, fp32,
    trimmed encoder (the clips are a few seconds), enough steps for the tiny model to learn.
    `overrides` take any key spelling the config accepts (`max_steps`, `optim.max_steps`)."""
    d = Path(demo_dir).resolve()
    cfg = {
        "_comment": "deepspeed --num_gpus 2 launch/stage1.py --config DIR/stage1.json --ds ds_configs/zero2.json",
        "stage": 1, "precision": "fp32", "seed": 0, "output_dir": str(d / "runs" / "stage1"),
        "model": {"whisper_path": str(d / "models" / "whisper"), "llm_path": str(d / "models" / "llm"),
                  "omni": {"speech_projector_hidden_size": 128, "ctc_decoder_config": "(2,64,4,128)",
                           "encoder_mode": "trimmed"}},
        "data": {"train_manifest": str(d / "train.jsonl"),
                 "val_manifest": str(d / "val.jsonl") if (d / "val.jsonl").exists() else None,
                 "cache_in_memory": True},
        "batch": {"per_device_train_batch_size": 2, "global_batch_size": 4},
        "optim": {"num_train_epochs": 60, "learning_rate": 3e-3, "warmup_ratio": 0.03, "weight_decay": 0.0,
                  "max_grad_norm": 1.0},
        "checkpoint": {"every_steps": 100, "keep_last": 1},
        "eval": {"every_steps": 0, "sample_max_new_tokens": 24},     # the demo's answers are a few tokens
        "log": {"every_steps": 5, "report_to": ["tensorboard"]},
    }
    return with_overrides(cfg, overrides)


def demo_stage2_config(demo_dir: str | Path, **overrides) -> dict:
    """Stage 2 training config for the demo: the CTC decoder trains on the frozen stage-1 model
    (DIR/runs/stage1/final) against DIR/train_units.jsonl (tools/extract_units.py output),
    validated on DIR/val_units.jsonl (CTC loss + unit edit distance). The LLM's response states
    are cached once (fp32: the demo is fp32) so the steps run the tiny decoder alone."""
    d = Path(demo_dir).resolve()
    cfg = {
        "_comment": "deepspeed --num_gpus 2 launch/stage2.py --config DIR/stage2.json --ds ds_configs/zero2.json",
        "stage": 2, "precision": "fp32", "seed": 0, "output_dir": str(d / "runs" / "stage2"),
        "model": {"init_from": str(d / "runs" / "stage1" / "final"),
                  "omni": {"ctc_decoder_config": "(2,64,4,128)"}},   # the demo stage 1's tiny decoder shape
        "data": {"train_manifest": str(d / "train_units.jsonl"), "val_manifest": str(d / "val_units.jsonl"),
                 "cache_hidden_states": True, "cache_dir": str(d / "runs" / "hidden_cache"), "cache_dtype": "fp32"},
        "batch": {"per_device_train_batch_size": 2, "global_batch_size": 4},
        "optim": {"num_train_epochs": 250, "learning_rate": 5e-3, "lr_scheduler_type": "cosine",
                  "warmup_ratio": 0.03, "weight_decay": 0.0, "max_grad_norm": 1.0},
        "checkpoint": {"every_steps": 200, "keep_last": 1},
        "eval": {"every_steps": 0, "batch_size": 2, "sample_max_new_tokens": 24},
        "log": {"every_steps": 10, "report_to": ["tensorboard"]},
    }
    return with_overrides(cfg, overrides)


def with_overrides(cfg: dict, overrides: dict) -> dict:
    """`cfg` (nested) with each override set at its section's place."""
    from omni_ds.train.config import set_key
    for key, value in overrides.items():
        set_key(cfg, key, value)
    return cfg


def write_tiny_setup(out_dir: str | Path, n_clips: int = 8, val_clips: int = 2,
                     clips_dir: Optional[str | Path] = None) -> Path:
    """Tiny models + train/val manifests of real speech clips with distinct answers."""
    from omni_ds.tiny.models import write_tiny_llm, write_tiny_whisper
    from omni_ds.tiny.tokenizer import write_tiny_tokenizer
    out = Path(out_dir)
    models = out / "models"
    if not (models / "llm" / "config.json").exists():
        write_tiny_tokenizer(models / "tokenizer")
        write_tiny_whisper(models / "whisper")
        write_tiny_llm(models / "llm", models / "tokenizer")
    clips = sorted(Path(clips_dir or SHARED_CLIPS).glob("*.wav"))
    if len(clips) < n_clips:
        raise FileNotFoundError(f"{clips_dir or SHARED_CLIPS}: need {n_clips} .wav clips, found {len(clips)}")
    rows = [{"id": c.stem, "speech_instruction_path": str(c), "text_instruction": "",
             "text_response": ANSWERS[i % len(ANSWERS)]} for i, c in enumerate(clips[:n_clips])]
    with open(out / "train.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    with open(out / "val.jsonl", "w") as f:
        for r in rows[:val_clips]:
            f.write(json.dumps(r) + "\n")
    return out


def write_tiny_stage2_setup(out_dir: str | Path, n_clips: int = 8, val_clips: int = 2) -> Path:
    """write_tiny_setup + what stage 2 needs: random unit targets in range (20-39 per record,
    seeded) in train_units.jsonl / val_units.jsonl (the first `val_clips` TRAINING records), and
    a trimmed-mode "stage-1 folder" without a speech decoder at runs/stage1/final (stage 2 then
    starts the decoder from a seeded init, as from a real stage-1 folder)."""
    import torch
    from omni_ds.model.checkpoint import build_from_parts, save_omni_folder
    from omni_ds.tiny.models import tiny_omni_config
    d = write_tiny_setup(out_dir, n_clips=n_clips, val_clips=val_clips)
    g = torch.Generator().manual_seed(0)
    rows = [json.loads(line) for line in open(d / "train.jsonl")]
    for r in rows:
        r["speech_response_path"] = r["speech_instruction_path"]
        r["units"] = torch.randint(0, 1000, (int(torch.randint(20, 40, (1,), generator=g)),), generator=g).tolist()
    (d / "train_units.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "val_units.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:val_clips]))
    torch.manual_seed(0)
    model, tok = build_from_parts(d / "models" / "whisper", d / "models" / "llm",
                                  tiny_omni_config(encoder_mode="trimmed", with_speech_generator=False))
    save_omni_folder(d / "runs" / "stage1" / "final", model, tok)
    return d
