"""Learning-rate schedule: linear warmup then cosine (or linear / constant) decay, measured in
optimizer steps. The step count comes from the real data (samples after skipping bad records,
global batch, epochs: plan_steps) or `optim.max_steps`, never from a guess."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class StepPlan:
    steps_per_epoch: int
    total: int
    warmup: int


def plan_steps(sampler, gas: int, optim) -> StepPlan:
    """The run's optimizer steps, counted on its own sampler (bad records already left out, each
    rank's share of every global batch), or `optim.max_steps`. The dry run and the Trainer both
    count here. An epoch's last partial global batch is dropped."""
    from omni_ds.train.data import StepStream
    counter = StepStream(None, sampler, gas, None)
    total = optim.max_steps or counter.total_steps(optim.num_train_epochs)
    return StepPlan(counter.steps_in_epoch(0), total, warmup_steps(total, optim.warmup_ratio))


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
