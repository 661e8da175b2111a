"""Checkpoint size: trained parameters only (what omni_ds saves) vs every parameter (DeepSpeed's
default, what omni_ds saved before), side by side in one run; then the same at full size, computed.

    python bench/bench_checkpoint_size.py [--ds ds_configs/zero2.json] [--precision fp32]

Measured: a tiny stage-1 and a tiny stage-2 Trainer (1 CPU rank, the demo's tiny models and
real clips), one optimizer step, then `engine.save_checkpoint` twice, with and without
`exclude_frozen_parameters`: bytes on disk of each folder.

Computed (full size, ZeRO-2, bf16, REFERENCE.md shapes: Llama-3.1-8B, Whisper-large-v3 encoder,
projector, decoder "(2,4096,32,11008)"): DeepSpeed's default writes the 16-bit module state of
every parameter and, under ZeRO-2/3, the frozen parameters once more as "frozen fragments";
both write the trained parameters' fp32 master and Adam's two moments (12 bytes each).
"""
import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

LLM, ENCODER, PROJECTOR, DECODER = 8.030e9, 0.637e9, 21.5e6, 425.6e6


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def measure(stage: int, root: Path, ds: str, precision: str) -> tuple[int, int]:
    """(bytes saved with trained parameters only, bytes with every parameter)."""
    from launcher import single_rank_process_group
    from omni_ds.train.config import build_config
    from omni_ds.train.demo import demo_stage1_config, demo_stage2_config, write_tiny_stage2_setup
    from omni_ds.train.trainer import Trainer
    demo = write_tiny_stage2_setup(root / f"demo{stage}", n_clips=4, val_clips=2)
    make = demo_stage1_config if stage == 1 else demo_stage2_config
    raw = make(demo, output_dir=str(root / f"out{stage}"), per_device_train_batch_size=2, global_batch_size=2,
               max_steps=2, save_steps=0, report_to=[], progress_bar=False, val_manifest=None, precision=precision,
               **({"cache_hidden_states": False} if stage == 2 else {}))
    raw.pop("_comment")
    with single_rank_process_group():
        t = Trainer(build_config(raw), ds)
        t.train(until=1)
        sizes = []
        for exclude in (True, False):
            tag = f"exclude_{exclude}"
            t.engine.save_checkpoint(str(root / f"ck{stage}"), tag=tag, exclude_frozen_parameters=exclude)
            sizes.append(folder_bytes(root / f"ck{stage}" / tag))
        t.close()
    return sizes[0], sizes[1]


def full_size_gb(stage: int) -> tuple[float, float]:
    """(trained only, every parameter) in GB, bf16 ZeRO-2, stage 1 = projector + LLM trained."""
    total = LLM + ENCODER + PROJECTOR + DECODER * (stage == 2)
    trained = DECODER if stage == 2 else PROJECTOR + LLM
    frozen = total - trained
    only = trained * (2 + 12)
    every = total * 2 + frozen * 2 + trained * 12
    return only / 1e9, every / 1e9


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ds", default="ds_configs/zero2.json")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    args = ap.parse_args()
    print(f"{'':28s}{'trained only':>14s}{'every param':>14s}{'ratio':>8s}")
    with tempfile.TemporaryDirectory() as tmp:
        for stage in (1, 2):
            only, every = measure(stage, Path(tmp), args.ds, args.precision)
            print(f"{f'tiny stage {stage} (measured)':28s}{only / 1e6:11.2f} MB{every / 1e6:11.2f} MB"
                  f"{every / only:7.1f}x")
    for stage in (1, 2):
        only, every = full_size_gb(stage)
        print(f"{f'8B stage {stage} (computed)':28s}{only:11.1f} GB{every:11.1f} GB{every / only:7.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
