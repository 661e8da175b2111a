"""What a checkpoint folder must hold to resume, checked before any weight loads (the dry run
and the run share it): every DeepSpeed shard of the world size that saved it, each a readable
torch archive; and the world size itself, which ZeRO shards are tied to.

    ZeRO-0     mp_rank_00_model_states.pt (the optimizer inside)
    ZeRO-1/2   mp_rank_00_model_states.pt + [bf16_]zero_pp_rank_{r}_mp_rank_00_optim_states.pt per rank
    ZeRO-3     zero_pp_rank_{r}_mp_rank_00_model_states.pt + the optim states, per rank
    universal  zero/ (one folder per parameter) + model states: any world size
               (tools/convert_checkpoint.py writes it from a ZeRO-1/2 checkpoint)

A world-size change needs a universal checkpoint. DeepSpeed's conversion of a ZeRO-3 checkpoint
loads, but the first optimizer step after it differs from the uninterrupted run (measured on the
tiny stage 1: step 4 loss 6.6323 vs 6.6240, 1 -> 2 ranks), so ZeRO-3 is refused rather than
resumed inexactly.
"""
from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Optional

from omni_ds.train.config import ConfigError

_OPTIM = re.compile(r"^(bf16_)?zero_pp_rank_(\d+)_mp_rank_00_optim_states\.pt$")
_Z3_MODEL = re.compile(r"^zero_pp_rank_(\d+)_mp_rank_00_model_states\.pt$")


def is_universal(path: Path) -> bool:
    return (Path(path) / "zero").is_dir()


def saved_zero3(path: Path) -> bool:
    return any(_Z3_MODEL.match(f.name) for f in Path(path).iterdir())


def file_problems(path: Path, world: int, zero: Optional[int] = None) -> list[str]:
    """Missing shards and unreadable archives of the checkpoint at `path`, saved by `world` ranks
    under ZeRO stage `zero` (None: a checkpoint that predates the record; no shard at all then
    reads as ZeRO-0)."""
    path = Path(path)
    names = {f.name for f in path.iterdir() if f.is_file()}
    if is_universal(path):
        wanted = [n for n in ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt") if n in names]
        missing = [] if wanted else ["mp_rank_00_model_states.pt"]
    else:
        optim = {int(m.group(2)) for m in map(_OPTIM.match, names) if m}
        zero = zero if zero is not None else (1 if optim or saved_zero3(path) else 0)
        missing = [f"optimizer shard of rank {r}" for r in range(world) if r not in optim] if zero else []
        if saved_zero3(path):
            model = {int(m.group(1)) for m in map(_Z3_MODEL.match, names) if m}
            missing += [f"model shard of rank {r}" for r in range(world) if r not in model]
        elif "mp_rank_00_model_states.pt" not in names:
            missing.append("mp_rank_00_model_states.pt")
    problems = [f"{path}: missing {m}" for m in missing]
    problems += [f"{path / n}: {why}" for n in sorted(names) if n.endswith(".pt") and (why := _unreadable(path / n))]
    return problems


def _unreadable(f: Path) -> Optional[str]:
    """Why a torch.save archive cannot be read (truncated, not an archive), or None. Reads only
    the zip directory at its end, not the tensors."""
    try:
        with zipfile.ZipFile(f) as z:
            z.namelist()
        return None
    except (zipfile.BadZipFile, OSError) as e:
        return f"not a readable checkpoint file ({e}; truncated or damaged?)"


def world_problem(path: Path, saved_world: Optional[int], world: int, zero: Optional[int] = None) -> Optional[str]:
    """Why a checkpoint saved by `saved_world` ranks cannot resume at `world`, or None. ZeRO-0
    keeps the whole optimizer in one file, which DeepSpeed loads at any world size (not tested here)."""
    if saved_world is None or saved_world == world or is_universal(path) or zero == 0:
        return None
    head = f"{path} was saved by {saved_world} rank(s), this run has {world}: ZeRO shards reload only at the world size that saved them."
    if saved_zero3(path):
        return (f"{head} For ZeRO-3, rerun at {saved_world} rank(s): DeepSpeed's universal conversion does not "
                "restore a ZeRO-3 optimizer exactly (omni_ds/train/checkpoint_files.py)")
    return (f"{head} Rerun at {saved_world} rank(s), or convert it once (any world size then): python "
            f"tools/convert_checkpoint.py --checkpoint {path}, then --set checkpoint.resume={path}_universal")


def check_checkpoint(path: Path, saved: dict, world: int) -> None:
    """ConfigError with every problem of resuming from `path` (its omni_ds state `saved`) at `world`."""
    problems = file_problems(path, int(saved.get("world_size") or world), saved.get("zero_stage"))
    world_issue = world_problem(path, saved.get("world_size"), world, saved.get("zero_stage"))
    problems += [world_issue] if world_issue else []
    if problems:
        raise ConfigError("cannot resume: " + "; ".join(problems))
