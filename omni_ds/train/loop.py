"""What the training step is made of (omni_ds/train/trainer.py runs it): the loop state, the
cross-rank sums, moving a batch to the device, the non-finite message.

Loss normalisation (docs/ARCHITECTURE.md): the gradient of a step must be
    d/dθ [ Σ_{all ranks, all micro-batches} loss_sum / N_step ]
with N_step the supervised targets of the whole step. DeepSpeed averages gradients over the
data-parallel ranks (÷ world) and, with `scale_wrt_gas`, divides each micro-batch loss by GAS.
We call `backward(loss_sum · world / N_step, scale_wrt_gas=False)`: the ÷ world of the averaging
cancels the · world, and no ÷ GAS is applied, so each target weighs 1 / N_step wherever it sits.
A 2-rank run then reproduces a 1-rank run with the same global batch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.distributed as dist


class NonFiniteLoss(RuntimeError):
    pass


class InfeasibleCTC(RuntimeError):
    """A stage-2 step met answers no CTC alignment exists for and the policy stops the run."""


@dataclass
class LoopState:
    step: int = 0                     # optimizer steps done
    samples: int = 0                  # samples consumed (global)
    tokens: int = 0                   # LLM positions processed (global)
    last_loss: float = float("nan")
    last_saved: Optional[int] = None
    evals: list = field(default_factory=list)
    train_seconds: float = 0.0
    model_flops: float = 0.0
    skipped_steps: int = 0
    ctc_infeasible: int = 0           # stage-2 answers left out of their step (no CTC alignment)
    load_failures: int = 0            # records left out of their step: they failed to load


def all_sum(values: list[float], device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t.tolist()


def to_device(batch: dict, device, float_dtype: torch.dtype) -> dict:
    out = {}
    for k, v in batch.items():
        if torch.is_tensor(v):
            v = v.to(device, non_blocking=True)
            if v.is_floating_point():
                v = v.to(float_dtype)
        out[k] = v
    return out


def group_lrs(engine) -> dict:
    return {g.get("name", str(i)): g["lr"] for i, g in enumerate(engine.optimizer.param_groups)}


def nonfinite_message(loss: float, grad_norm, step: int, epoch: int, step_in_epoch: int, last_checkpoint,
                      record_ids: list[str] = ()) -> str:
    shown = ", ".join(list(record_ids)[:32]) + (" ..." if len(record_ids) > 32 else "")
    return (f"non-finite {'loss' if not math.isfinite(loss) else 'gradient norm'} at step "
            f"{step} (epoch {epoch}, step {step_in_epoch} of the epoch): loss={loss}, "
            f"grad_norm={grad_norm}. Training stopped without saving; the last good checkpoint "
            f"is {last_checkpoint or 'none (no checkpoint was written yet)'}. Lower optim.learning_rate, use "
            "bf16 instead of fp16, or check the data of this step"
            + (f" (this rank's records: {shown})." if record_ids else "."))
