"""Training checkpoints: DeepSpeed `save_checkpoint` + our state, atomic from the user's view.

Layout under `output_dir/checkpoints/`:

    step_000200/            DeepSpeed files (model, optimizer and scheduler shards per rank):
                            the TRAINED parameters only. Frozen ones (the Whisper encoder; in
                            stage 2 the LLM and projector too) are rebuilt from the folders the
                            run starts from, whose digest the resume identity holds, so a resume
                            or an export from changed folders is refused rather than mixed.
        rng_rank{r}.pt      each rank's RNG states (python, numpy, torch, accelerator)
        omni_ds_state.json  step, data position, config, resume identity (omni_ds.train.resume_check);
                            written LAST, after every rank finished
    latest                  the tag of the newest COMPLETE checkpoint, replaced atomically

A crash mid-save leaves a directory without `omni_ds_state.json` and `latest` still names the
previous checkpoint; such leftovers are removed at the next start. Rotation keeps the newest
`checkpoint.keep_last` complete checkpoints and deletes older ones only after the new one is complete.
The directory must be shared by all nodes (the usual setup); with node-local disks each node's
local rank 0 manages its own copy.
"""
from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
from functools import partial
from pathlib import Path
from typing import Optional

import numpy as np
import torch

STATE_FILE = "omni_ds_state.json"
LATEST = "latest"
_TAG = re.compile(r"^step_(\d+)$")


def tag_for(step: int) -> str:
    return f"step_{step:06d}"


def rng_state() -> dict:
    st = {"python": random.getstate(), "numpy": list(np.random.get_state()), "torch": torch.get_rng_state()}
    st["numpy"][1] = torch.from_numpy(st["numpy"][1].copy())
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state()
    return st


def set_rng_state(st: dict) -> None:
    random.setstate((st["python"][0], tuple(st["python"][1]), st["python"][2]))
    np_state = list(st["numpy"])
    np_state[1] = np_state[1].numpy()
    np.random.set_state(tuple(np_state))
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state(st["cuda"])


def is_complete(path: Path) -> bool:
    return (path / STATE_FILE).is_file()


def find_checkpoint(path: str | Path, what: str) -> Path:
    """A step folder, a checkpoints/ folder or an output_dir -> the complete checkpoint it names
    (a folder's `latest`), by the rule a run resumes with; tools/export.py takes the same paths.
    `what` is how the user named the path, for the messages."""
    p = Path(path)
    if p.is_dir() and not is_complete(p):
        for folder in (p, p / "checkpoints"):
            if (folder / LATEST).is_file():
                p = folder / (folder / LATEST).read_text().strip()
                break
    if not p.is_dir():
        raise FileNotFoundError(f"{what}: no such checkpoint directory")
    if not is_complete(p):
        raise RuntimeError(f"{what}: {p} is incomplete or not a checkpoint (no {STATE_FILE}, and no "
                           f"'{LATEST}' in it or in its checkpoints/ folder); an interrupted save leaves "
                           "such a folder: choose an earlier checkpoint")
    return p


class CheckpointSaveError(OSError):
    """A checkpoint could not be written (e.g. the disk is full); the message says what is intact."""


class CheckpointManager:
    def __init__(self, output_dir: str, keep: int, rank: int, local_rank: int, barrier, save_steps: int = 0):
        self.dir = Path(output_dir) / "checkpoints"
        self.save_steps = save_steps
        self.keep = keep
        self.rank = rank
        self.local_rank = local_rank
        self.barrier = barrier

    # ---- finding ----------------------------------------------------------------------------
    def latest(self) -> Optional[Path]:
        f = self.dir / LATEST
        if not f.is_file():
            return None
        p = self.dir / f.read_text().strip()
        if not is_complete(p):
            raise RuntimeError(f"{f} names {p}, which is not a complete checkpoint "
                               f"(no {STATE_FILE}); pass --resume with an earlier checkpoint")
        return p

    def complete_checkpoints(self) -> list[Path]:
        if not self.dir.is_dir():
            return []
        found = [p for p in self.dir.iterdir() if p.is_dir() and _TAG.match(p.name) and is_complete(p)]
        return sorted(found, key=lambda p: int(_TAG.match(p.name).group(1)))

    def resolve(self, resume: str) -> Optional[Path]:
        """`resume` key -> checkpoint path to load, or None for a fresh start."""
        if resume == "never":
            return None
        if resume == "auto":
            return self.latest()
        return find_checkpoint(resume, f"config key 'checkpoint.resume' = {resume!r}")

    def clean_partial(self) -> list[str]:
        """Remove directories left by interrupted saves (call on all ranks; local rank 0 deletes)."""
        removed = []
        if self.local_rank == 0 and self.dir.is_dir():
            for p in self.dir.iterdir():
                if p.is_dir() and _TAG.match(p.name) and not is_complete(p):
                    shutil.rmtree(p, ignore_errors=True)
                    removed.append(p.name)
        self.barrier()
        return removed

    # ---- saving -----------------------------------------------------------------------------
    def due(self, step: int) -> bool:
        """Every `checkpoint.every_steps` optimizer steps (0: only the final checkpoint)."""
        return bool(self.save_steps) and step % self.save_steps == 0

    def save(self, engine, step: int, state: dict, crash_before_commit: bool = False) -> Path:
        """Collective: every rank calls it. `state` (JSON-able) goes into omni_ds_state.json."""
        tag = tag_for(step)
        path = self.dir / tag
        if self.local_rank == 0 and path.exists():      # a stale partial save of the same step
            shutil.rmtree(path, ignore_errors=True)
        self.barrier()
        try:
            engine.save_checkpoint(str(self.dir), tag=tag, client_state={"omni_ds": state}, save_latest=False,
                                   exclude_frozen_parameters=True)
            torch.save(rng_state(), path / f"rng_rank{self.rank}.pt")
        except (OSError, RuntimeError) as e:
            raise self._save_failed(path, e) from e
        self.barrier()
        if crash_before_commit:                          # fault injection (tests): die mid-save
            os.kill(os.getpid(), 9)
        if self.rank == 0:
            try:                        # atomic writes: a failure leaves the old `latest` in place
                _write_atomic(path / STATE_FILE, json.dumps(state, indent=1, default=str))
                _write_atomic(self.dir / LATEST, tag)
            except OSError as e:
                raise self._save_failed(path, e) from e
        self.barrier()
        self._rotate()
        return path

    def _save_failed(self, path: Path, error: Exception) -> Exception:
        """A full disk named as such (torch says only "file write failed"), the partial folder
        removed to give its space back; `latest` was not touched. Other errors pass unchanged."""
        free = shutil.disk_usage(self.dir).free
        full = getattr(error, "errno", None) == errno.ENOSPC or free < (1 << 20) or "No space left" in str(error)
        if not full:
            return error
        if self.local_rank == 0:
            shutil.rmtree(path, ignore_errors=True)
        latest = self.latest() if (self.dir / LATEST).is_file() else None
        return CheckpointSaveError(
            f"saving checkpoint {path} failed: no space left on device ({free / 1e6:.1f} MB free on its "
            f"filesystem). The last complete checkpoint, {latest or 'none yet'}, is untouched and '{LATEST}' "
            "still names it: free space (or set output_dir elsewhere) and rerun to resume from it")

    def _rotate(self) -> None:
        if self.keep and self.local_rank == 0:
            for p in self.complete_checkpoints()[:-self.keep]:
                shutil.rmtree(p, ignore_errors=True)
        self.barrier()

    # ---- loading ----------------------------------------------------------------------------
    @staticmethod
    def read_state(path: Path) -> dict:
        """The checkpoint's omni_ds_state.json (step, data position, config, resume identity)."""
        return json.loads((path / STATE_FILE).read_text())

    def load(self, engine, path: Path) -> dict:
        load_path, client = engine.load_checkpoint(str(path.parent), tag=path.name,
                                                   custom_load_fn=partial(load_trained, source=path))
        if load_path is None:
            raise RuntimeError(f"DeepSpeed could not load the checkpoint {path}")
        state = self.read_state(path)
        rng_file = path / f"rng_rank{self.rank}.pt"
        if rng_file.is_file():
            set_rng_state(torch.load(rng_file, weights_only=True))
        return state


def frozen_names(module) -> set[str]:
    return {n for n, p in module.named_parameters() if not p.requires_grad}


def load_trained(src: dict, dst, source) -> None:
    """A checkpoint's module weights into the model: what it lacks must be frozen (built from
    the run's folders); anything else missing, or a key the model lacks, is an error. Older
    checkpoints that hold the frozen weights too load as they are."""
    result = dst.load_state_dict(src, strict=False)
    missing = sorted(set(result.missing_keys) - frozen_names(dst))
    if missing or result.unexpected_keys:
        raise RuntimeError(f"checkpoint {source} does not match the model: trained parameters missing "
                           f"{missing[:5]}, unexpected keys {sorted(result.unexpected_keys)[:5]}")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_final(engine, model, tokenizer, cfg, zero: int, rank: int, metadata: dict) -> Path:
    """output_dir/final in the LLaMA-Omni layout; under ZeRO-3 from the gathered 16-bit weights.
    A LoRA run's final folder holds the merged model (no adapter tensors) and its adapter goes to
    output_dir/lora_adapter in peft's format (omni_ds.train.lora)."""
    import torch.distributed as dist
    from omni_ds.model.checkpoint import save_omni_folder
    from omni_ds.train import lora
    out = Path(cfg.output_dir) / "final"
    if zero == 3:
        state = engine._zero3_consolidated_16bit_state_dict()      # collective; full dict on rank 0
    else:
        state = {k: v.detach().cpu() for k, v in engine.module.state_dict().items()} if rank == 0 else None
    if rank == 0:
        if lora.has_lora(model):
            adapter = lora.save_adapter(cfg, state, cfg.output_dir)
            print(f"[omni_ds] LoRA adapter (peft format): {adapter}", flush=True)
            from omni_ds.precision import torch_dtype
            base = lora.base_weights_16bit(cfg, torch_dtype(cfg.precision))
            state = lora.final_state(model, state, base)
        save_omni_folder(out, model, tokenizer, state_dict=state, metadata=metadata)
        print(f"[omni_ds] final model: {out}", flush=True)
    if dist.is_initialized():
        dist.barrier()
    return out
