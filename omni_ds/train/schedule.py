"""Learning-rate schedule: linear warmup then cosine (or linear / constant) decay, measured in
optimizer steps. The step count comes from the real data (samples after skipping bad records,
global batch, epochs) or `max_steps`, never from a guess."""
from __future__ import annotations

import math

import torch


def num_optimizer_steps(num_samples: int, global_batch: int, epochs: float, max_steps=None) -> tuple[int, int]:
    """(total optimizer steps, optimizer steps per epoch). An epoch is the data stream cut into
    global batches; the stream continues across epoch boundaries, and the last partial global
    batch of the whole run is dropped."""
    steps_per_epoch = num_samples / global_batch
    if max_steps is not None:
        return int(max_steps), max(1, int(steps_per_epoch))
    total = int(math.floor(epochs * num_samples / global_batch))
    if total < 1:
        raise ValueError(f"{num_samples} samples x {epochs} epochs is less than one global batch "
                         f"of {global_batch}; lower global_batch_size or add data")
    return total, max(1, int(steps_per_epoch))


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    return int(math.ceil(warmup_ratio * total_steps))


def lr_factor(step: int, total_steps: int, n_warmup: int, kind: str = "cosine", min_ratio: float = 0.0) -> float:
    """Multiplier of each group's peak lr for optimizer step `step` (0-based: the lr used by the
    step-th update)."""
    if n_warmup > 0 and step < n_warmup:
        return (step + 1) / n_warmup
    if kind == "constant":
        return 1.0
    span = max(1, total_steps - n_warmup)
    progress = min(1.0, (step - n_warmup) / span)
    if kind == "linear":
        decay = 1.0 - progress
    else:
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_ratio + (1.0 - min_ratio) * decay


def make_scheduler_factory(total_steps: int, n_warmup: int, kind: str, min_ratio: float):
    """A callable for `deepspeed.initialize(lr_scheduler=...)`: DeepSpeed calls it with the optimizer
    it built, steps the scheduler after each optimizer step and saves it in checkpoints."""
    def factory(optimizer):
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_factor(s, total_steps, n_warmup, kind, min_ratio))
    return factory
