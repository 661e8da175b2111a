"""Test instruments, kept out of the training step: fault injection and the per-rank sample trace.

Config keys (for tests and resume audits, not for training): `crash_at_step` (the process kills
itself with SIGKILL at that step; on a save step, after the DeepSpeed files are written and
before the checkpoint is committed) and `trace_samples` (output_dir/trace/rank{r}.jsonl).
"""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Optional


class FaultInjector:
    def __init__(self, crash_at_step: Optional[int]):
        self.crash_at_step = crash_at_step

    def dies_during_save(self, step: int) -> bool:
        """The checkpointer asks: die mid-save at this step?"""
        return self.crash_at_step == step

    def after_step(self, step: int) -> None:
        """A rank dies mid-run (the step was not a save step)."""
        if self.crash_at_step == step:
            os.kill(os.getpid(), signal.SIGKILL)


class SampleTrace:
    """Per-rank JSONL of (step, epoch, loss, sample indices): the resume audit trail."""

    def __init__(self, output_dir: str, rank: int):
        d = Path(output_dir) / "trace"
        d.mkdir(parents=True, exist_ok=True)
        self.f = open(d / f"rank{rank}.jsonl", "a")

    def __call__(self, step, epoch, step_in_epoch, loss, micro_batches) -> None:
        idx = [int(i) for b in micro_batches for i in b["sample_index"]]
        self.f.write(json.dumps({"step": step, "epoch": epoch, "step_in_epoch": step_in_epoch,
                                 "loss": loss, "samples": idx}) + "\n")
        self.f.flush()

    def close(self) -> None:
        self.f.close()
