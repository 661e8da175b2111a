"""The training loop, stage-agnostic. Reads top to bottom: fetch a step's micro-batches, count
their targets across ranks, forward/backward each through the DeepSpeed engine, step, check,
log, checkpoint, evaluate.

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
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.distributed as dist

from omni_ds.precision import torch_dtype
from omni_ds.train.data import StepStream, count_targets


class NonFiniteLoss(RuntimeError):
    pass


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


def fit(engine, stream: StepStream, cfg, state: LoopState, total_steps: int, *, observer,
        checkpoints, checkpoint_state: Callable[[LoopState], dict], flops_model, peak_tflops,
        evaluate: Optional[Callable[[], dict]] = None, trace=None) -> LoopState:
    world = dist.get_world_size() if dist.is_initialized() else 1
    device = engine.device
    float_dtype = torch_dtype(cfg.precision)
    engine.train()

    while state.step < total_steps:
        t0 = time.perf_counter()
        # 1. this rank's GAS micro-batches, and the step's target count over all ranks
        epoch, step_in_epoch, micro_batches = stream.next_step()
        local_targets = sum(count_targets(b, cfg.stage) for b in micro_batches)
        positions = [flops_model.positions(b) for b in micro_batches]
        local_pos = {k: sum(p[k] for p in positions) for k in positions[0]}
        n_step, = all_sum([local_targets], device)
        scale = world / max(n_step, 1.0)

        # 2. forward / backward each micro-batch; DeepSpeed steps at the accumulation boundary
        lrs = group_lrs(engine)            # the lrs this step's update uses
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        for batch in micro_batches:
            out = engine(**to_device(batch, device, float_dtype))
            # the model's own count must be the loop's (checked on the first steps: it syncs a GPU)
            if state.step < 2 and int(out["n_targets"]) != count_targets(batch, cfg.stage):
                raise RuntimeError(f"the model counted {int(out['n_targets'])} targets in a micro-batch, "
                                   f"the loop {count_targets(batch, cfg.stage)}: loss normalisation "
                                   "would be wrong")
            engine.backward(out["loss_sum"] * scale, scale_wrt_gas=False)
            engine.step()
            loss_sum += out["loss_sum"].detach().double()
        state.step += 1

        # 3. the step's loss over all ranks, grad norm, and the non-finite check (same on all ranks)
        reduced = all_sum([float(loss_sum)] + [float(local_pos[k]) for k in
                                              ("llm_positions", "samples", "encoder_frames",
                                               "speech_positions", "decoder_positions")], device)
        loss = reduced[0] / max(n_step, 1.0)
        pos = dict(zip(("llm_positions", "samples", "encoder_frames", "speech_positions",
                        "decoder_positions"), reduced[1:]))
        grad_norm = engine.get_global_grad_norm()
        grad_norm = float(grad_norm) if grad_norm is not None else None
        skipped = int(getattr(engine, "skipped_steps", 0) or 0)
        if trace is not None:
            trace(state.step, epoch, step_in_epoch, loss, micro_batches)
        if cfg.stop_on_nonfinite and (not math.isfinite(loss) or
                                      (grad_norm is not None and not math.isfinite(grad_norm)
                                       and cfg.precision != "fp16")):
            last = checkpoints.latest()
            raise NonFiniteLoss(
                f"non-finite {'loss' if not math.isfinite(loss) else 'gradient norm'} at step "
                f"{state.step} (epoch {epoch}, step {step_in_epoch} of the epoch): loss={loss}, "
                f"grad_norm={grad_norm}. Training stopped without saving; the last good checkpoint "
                f"is {last or 'none (no checkpoint was written yet)'}. Lower learning_rate, use "
                "bf16 instead of fp16, or check the data of this step.")
        if skipped > state.skipped_steps:
            observer.message(f"step {state.step}: fp16 overflow, optimizer step skipped "
                             f"({skipped} so far, loss scale {engine.optimizer.cur_scale if hasattr(engine.optimizer, 'cur_scale') else '?'})")
            state.skipped_steps = skipped

        # 4. bookkeeping and logging
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        model_flops, hw_flops = flops_model.step_flops(pos)
        state.samples += int(pos["samples"])
        state.tokens += int(pos["llm_positions"])
        state.last_loss = loss
        state.train_seconds += dt
        state.model_flops += model_flops
        if state.step % cfg.logging_steps == 0 or state.step == total_steps:
            from omni_ds.train.flops import mfu
            from omni_ds.train.metrics import max_memory_gib
            scalars = {"loss": loss, "grad_norm": grad_norm, "epoch": epoch + (step_in_epoch + 1) /
                       stream.steps_in_epoch(epoch), "samples_per_s": pos["samples"] / dt,
                       "tokens_per_s": pos["llm_positions"] / dt, "step_time_s": dt,
                       "targets": n_step, "mfu": mfu(model_flops, dt, world, peak_tflops),
                       "hfu": mfu(hw_flops, dt, world, peak_tflops),
                       "tflops_per_device": model_flops / dt / world / 1e12,
                       "max_memory_gib": max_memory_gib(), "skipped_steps": skipped}
            scalars.update({f"lr/{k}": v for k, v in lrs.items()})
            observer.log(state.step, scalars)
            observer.progress(state.step, loss, next(iter(lrs.values())), pos["samples"] / dt)

        # 5. checkpoint and evaluation
        if cfg.save_steps and state.step % cfg.save_steps == 0:
            crash = cfg.crash_at_step == state.step
            checkpoints.save(engine, state.step, checkpoint_state(state), crash_before_commit=crash)
            state.last_saved = state.step
        elif cfg.crash_at_step == state.step:
            os.kill(os.getpid(), 9)      # fault injection (tests): a rank dies mid-run
        if evaluate is not None and cfg.eval_steps and state.step % cfg.eval_steps == 0 \
                and state.step < total_steps:
            result = evaluate()
            state.evals.append({"step": state.step, **result})
            observer.log(state.step, result, prefix="eval")
            engine.train()
    return state


@torch.no_grad()
def evaluate_loss(engine, batches_per_rank: list[dict], n_batches: int, fallback: dict, cfg) -> dict:
    """Mean loss over a validation set sharded across ranks. Every rank runs `n_batches`
    forwards (ZeRO-3 needs the same module calls on all ranks); a rank with fewer real batches
    repeats one and discards its result."""
    engine.eval()
    device = engine.device
    float_dtype = torch_dtype(cfg.precision)
    total, count = 0.0, 0.0
    for i in range(n_batches):
        real = i < len(batches_per_rank)
        batch = batches_per_rank[i] if real else fallback
        out = engine(**to_device(batch, device, float_dtype))
        if real:
            total += float(out["loss_sum"])
            count += float(out["n_targets"])
    total, count = all_sum([total, count], device)
    return {"loss": total / max(count, 1.0), "targets": count}


@torch.no_grad()
def evaluate_units(engine, batches_per_rank: list[dict], n_batches: int, fallback: dict, cfg) -> dict:
    """Stage-2 validation, sharded like `evaluate_loss`: the mean CTC loss per target unit and the
    unit edit distance (Levenshtein distance of the decoder's greedy units to the targets, summed
    over the set, divided by the total number of target units). Batches are either full batches
    (the frozen LLM computes the response states) or cached states (`response_states`)."""
    from omni_ds.constants import IGNORE_INDEX
    from omni_ds.model.ctc_decoder import ctc_collapse
    from omni_ds.train.edit_distance import levenshtein
    engine.eval()
    module = engine.module
    device = engine.device
    float_dtype = torch_dtype(cfg.precision)
    total, count, edits, n_samples = 0.0, 0.0, 0.0, 0.0
    for i in range(n_batches):
        real = i < len(batches_per_rank)
        batch = to_device(batches_per_rank[i] if real else fallback, device, float_dtype)
        if "response_states" in batch:
            states, lengths = batch["response_states"], batch["response_lengths"]
        else:
            states, lengths = module.response_hidden_states(batch["input_ids"], batch["attention_mask"],
                                                            batch["labels"], batch["speech_mel"],
                                                            batch["speech_frames"])
        out = engine(response_states=states, response_lengths=lengths, units=batch["units"])
        logits, n_out = module.speech_generator(states, lengths)        # inference length (25 n)
        if not real:
            continue
        total += float(out["loss_sum"])
        count += float(out["n_targets"])
        paths = logits.argmax(-1).cpu()
        blank = module.speech_generator.blank
        for b in range(paths.shape[0]):
            pred = ctc_collapse(paths[b, : int(n_out[b])].tolist(), blank)
            target = batch["units"][b]
            edits += levenshtein(pred, target[target.ne(IGNORE_INDEX)].tolist())
            n_samples += 1
    total, count, edits, n_samples = all_sum([total, count, edits, n_samples], device)
    return {"loss": total / max(count, 1.0), "targets": count,
            "unit_edit_distance": edits / max(count, 1.0), "samples": n_samples}
