"""The command line of both stages: `launch/stage1.py` and `launch/stage2.py` are `main()`; the
run itself is omni_ds.train.trainer.Trainer.

    deepspeed --num_gpus 4 launch/stage1.py --config launch/configs/stage1.json --ds ds_configs/zero3.json
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional

from omni_ds.train.config import ConfigError, TrainConfig, load_config
from omni_ds.train.ds_config import read_ds_config
from omni_ds.train.run_lock import RunLocked
from omni_ds.train.run_lock import acquire as acquire_run_lock
from omni_ds.train.run_lock import release as release_run_lock


REPO = Path(__file__).resolve().parents[2]
PAPER_RECIPES = {1: REPO / "launch" / "configs" / "stage1.json", 2: REPO / "launch" / "configs" / "stage2.json"}


# ---- CLI --------------------------------------------------------------------------------------------
def parse_args(argv, stage: int):
    p = argparse.ArgumentParser(
        prog=f"launch/stage{stage}.py",
        description=f"omni_ds stage {stage} training on DeepSpeed. Run under the deepspeed launcher: "
                    f"deepspeed --num_gpus N launch/stage{stage}.py --config CFG --ds ds_configs/zero2.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Every training-config key is documented in omni_ds/train/config.py (TrainConfig).")
    p.add_argument("--config", default=str(PAPER_RECIPES[stage]),
                   help=f"training config JSON (default: the paper's stage-{stage} recipe, %(default)s)")
    p.add_argument("--ds", required=True, help="DeepSpeed config JSON; \"auto\" values come from --config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (repeatable; VALUE parsed as JSON when it parses)")
    p.add_argument("--resume", default=None, metavar="PATH|auto|never",
                   help="same as --set resume=...: a checkpoint dir, 'auto' (default) or 'never'")
    p.add_argument("--dry-run", action="store_true",
                   help="validate config, data and checkpoints; print the plan and memory estimate; no training")
    p.add_argument("--world-size", type=int, default=None,
                   help="dry run: plan for this many GPUs (default: the launcher's WORLD_SIZE)")
    p.add_argument("--gpu", default=None, help="memory check: device to plan for, e.g. L40, A100-80, H100 "
                   "(default: the CUDA device at hand)")
    p.add_argument("--gpu-memory-gib", type=float, default=None, help="memory check: device memory in GiB")
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)   # deepspeed launcher
    return p.parse_args(argv)


def main(argv=None, stage: int = 1) -> int:
    rc = run_cli(sys.argv[1:] if argv is None else argv, stage)
    shutdown_distributed()
    return rc


def run_cli(argv: list, stage: int) -> int:
    """launch/stage{N}.py without the final teardown (tests run several in one process)."""
    args = parse_args(argv, stage)
    overrides = list(args.set)
    if args.resume is not None:
        overrides.append(f"checkpoint.resume={args.resume}")
    try:
        cfg = load_config(args.config, overrides)
        if cfg.stage != stage:
            raise ConfigError(f"{args.config}: stage = {cfg.stage} but this is launch/stage{stage}.py")
        ds_raw = read_ds_config(args.ds)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        from omni_ds.train.dry_run import dry_run
        return dry_run(cfg, args.ds, ds_raw, args.world_size, args.gpu, args.gpu_memory_gib)
    lock = None
    if int(os.environ.get("RANK", "0")) == 0:     # the launcher's rank 0 holds it for every rank
        try:
            lock = acquire_run_lock(cfg.output_dir)
        except (RunLocked, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    try:
        summary = run(cfg, args.ds, args.gpu, args.gpu_memory_gib)
    except user_errors() as e:
        # The same data and config on every rank: each fails alike, rank 0 says it once.
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    finally:
        release_run_lock(lock)
    return 0 if summary.get("status") == "completed" else 1


def user_errors() -> tuple:
    """What a user's config, data or model folder can be wrong with: a one-line message, exit 2,
    no traceback (a bug still gives one)."""
    from omni_ds.data.manifest import ManifestError
    from omni_ds.data.prompt import PromptError
    from omni_ds.data.validate import DataError
    from omni_ds.model.whisper_dims import WhisperDimsError
    from omni_ds.train.checkpointing import CheckpointSaveError
    return (ConfigError, DataError, ManifestError, PromptError, WhisperDimsError, FileNotFoundError,
            CheckpointSaveError)


def shutdown_distributed() -> None:
    """Tear the process group down before the interpreter exits: left to interpreter shutdown,
    gloo's background threads can outlive it and abort the process ("terminate called without
    an active exception", seen after ZeRO-3 runs) although all work is saved. Through
    deepspeed.comm, which also drops DeepSpeed's cached clone of the world group: a later run
    in the same process (tests) would otherwise meet a group torch no longer knows."""
    import deepspeed.comm as ds_comm
    import torch.distributed as dist
    if dist.is_initialized():
        dist.barrier()
        ds_comm.destroy_process_group()


# ---- the run -----------------------------------------------------------------------------------------
def run(cfg: TrainConfig, ds_path: str, gpu: Optional[str] = None, gpu_memory_gib: Optional[float] = None) -> dict:
    """One training run (omni_ds.train.trainer.Trainer); its summary."""
    from omni_ds.train.trainer import Trainer
    return Trainer(cfg, ds_path, gpu, gpu_memory_gib).run()
