"""The Trainer: one training run of either stage on DeepSpeed.

    trainer = Trainer(cfg, "ds_configs/zero3.json")
    summary = trainer.run()            # train() to the end, final checkpoint / evaluation / folder

Built from parts, each returning one thing, in the order they depend on each other: distributed
start, DeepSpeed config, model, data (validated datasets and the sampler: the schedule's length),
engine, the stage-2 hidden-state cache (decided here, before the step stream exists), the step
stream, resume. `train()` runs `train_step()` until the schedule ends; the checkpointer and the
evaluator say when they are due. Loss normalisation: see omni_ds/train/loop.py.

Stage-2 answers that no CTC alignment exists for (omni_ds.model.ctc_lengths; validation makes
them bad records, so meeting one here means the data or the model changed under it) are found
from lengths before each step runs. Each is logged with its record id, answer and lengths by the
rank holding it, and counted (`ctc_infeasible` in the logs, `ctc_infeasible_answers` in
summary.json). data.on_bad = "error" stops the run before that step; "skip" trains the step on
its other answers (the infeasible ones have zero loss and gradient and are left out of the target
count, so the rest weigh as if they were alone), and still stops when no answer of the step is left,
rather than step the optimizer on nothing. A stop is status "stopped_ctc_infeasible".
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

from omni_ds.precision import torch_dtype
from omni_ds.train.config import ConfigError, TrainConfig
from omni_ds.train.data import StepStream, count_targets, infeasible_answers
from omni_ds.train.ds_config import load_ds_config, zero_stage
from omni_ds.train.loop import (InfeasibleCTC, LoopState, NonFiniteLoss, all_sum, group_lrs, nonfinite_message,
                                to_device)

POSITION_KEYS = ("llm_positions", "samples", "encoder_frames", "speech_positions", "decoder_positions")


def _manifest_of(dataset):
    """The manifest behind a (possibly wrapped: RAM cache, hidden-state cache) training set."""
    while dataset is not None and not hasattr(dataset, "manifest"):
        dataset = getattr(dataset, "base", None) or getattr(dataset, "dataset", None)
    return getattr(dataset, "manifest", None)


class Trainer:
    def __init__(self, cfg: TrainConfig, ds_path: str, gpu: Optional[str] = None,
                 gpu_memory_gib: Optional[float] = None):
        from omni_ds.train.debug import FaultInjector, SampleTrace
        from omni_ds.train.parts import (attach_hidden_cache, build_data, build_engine, build_model,
                                         memory_check, seed_everything, start_distributed)
        self.cfg = cfg
        from omni_ds.train.sample_answers import load_eval_vocoder, make_sample_answers
        self.rank, self.world, self.local_rank = start_distributed(cfg)
        from omni_ds.train.stall_watch import start_stall_watch
        self.stall_watch = start_stall_watch(self.rank, self.world, cfg.dist_timeout_minutes, self._latest)
        seed_everything(cfg.seed)
        vocoder = load_eval_vocoder(cfg)          # a bad eval.vocoder stops the run here, not at its first eval
        self.ds = load_ds_config(ds_path, cfg, self.world, _llm_hidden_size(cfg))
        self._load_universal_if_resuming_from_one()
        self.micro, self.gas, self.global_batch = cfg.batch_geometry(self.world)
        check = memory_check(cfg, self.ds, self.rank, self.world, self.micro, gpu, gpu_memory_gib)
        self.model, self.tokenizer = build_model(cfg, self.ds)
        self.train_set, self.val_set, self.sampler = build_data(cfg, self.model, self.tokenizer, self.world,
                                                                self.rank, self.log)
        self.total_steps, self.n_warmup = self._schedule()
        self.memory_check_fits = check(int(max(self.train_set.lengths)), self.log)
        self.engine, self.groups = build_engine(cfg, self.model, self.ds, self.total_steps, self.n_warmup)
        self.cache_info = None
        if cfg.stage == 2 and cfg.data.cache_hidden_states:     # decided before the step stream exists
            self.train_set, self.val_set, self.cache_info = attach_hidden_cache(
                self.engine, cfg, self.ds, (self.train_set, self.val_set), self._collate(), self.rank,
                self.world, self.log)
        self.collate = self._collate()
        self.stream = StepStream(self.train_set, self.sampler, self.gas, self.collate, cfg.data.num_workers)
        self.flops_model, self.peak_tflops = self._flops()
        self.identity = self._identity()
        self.checkpointer, self.state, self.resumed_from = self._restore()
        from omni_ds.train.evaluator import make_evaluator
        self.evaluator = make_evaluator(self.engine, self.val_set, self.collate, cfg, self.rank, self.world)
        self.samples = make_sample_answers(self.engine, self.val_set, cfg, self.tokenizer,
                                           (self.rank, self.world, self.ds), vocoder)
        self.faults = FaultInjector(cfg.debug.crash_at_step)
        self.trace = SampleTrace(cfg.output_dir, self.rank) if cfg.debug.trace_samples else None
        self.info = self._describe()
        from omni_ds.train.metrics import Observer
        self.observer = Observer(cfg, self.rank, self.total_steps, self.state.step, self.info)

    # ---- parts that need the run's own state ---------------------------------------------------
    def log(self, msg: str) -> None:
        if self.rank == 0:
            print(f"[omni_ds] {msg}", flush=True)

    def _load_universal_if_resuming_from_one(self) -> None:
        """A universal checkpoint (tools/convert_checkpoint.py) loads through DeepSpeed's universal
        path, which the engine must be built for."""
        from omni_ds.train.checkpoint_files import is_universal
        from omni_ds.train.checkpointing import CheckpointManager
        try:
            source = CheckpointManager(self.cfg.output_dir, 0, self.rank, self.local_rank, lambda: None).resolve(
                self.cfg.checkpoint.resume)
        except (OSError, RuntimeError):
            return                                   # _restore reports it
        if source is not None and is_universal(source):
            self.ds.setdefault("checkpoint", {})["load_universal"] = True

    def _latest(self):
        checkpointer = getattr(self, "checkpointer", None)
        return checkpointer.latest() if checkpointer is not None else None

    def _schedule(self) -> tuple[int, int]:
        from omni_ds.train.schedule import plan_steps
        steps = plan_steps(self.sampler, self.gas, self.cfg.optim)
        if steps.steps_per_epoch < 1:
            raise ConfigError(f"{self.cfg.data.train_manifest}: {len(self.train_set)} usable samples make fewer than "
                              f"one optimizer step of global batch {self.global_batch}")
        return steps.total, steps.warmup

    def _collate(self):
        if self.cache_info is not None:
            from omni_ds.train.hidden_cache import collate_cached
            return collate_cached
        from omni_ds.data.collator import OmniCollator
        return OmniCollator(self.tokenizer.pad_token_id)

    def _flops(self):
        from omni_ds.train.flops import flops_model_for, guess_peak_tflops
        omni = self.model.omni_config
        fm = flops_model_for(self.engine.module, self.cfg.stage, self.cfg.model.gradient_checkpointing,
                             omni.encoder_mode == "padded", omni.ctc_upsample_factor, omni.speech_encoder_ds_rate)
        peak = self.cfg.log.peak_tflops or (guess_peak_tflops(torch.cuda.get_device_name())
                                        if torch.cuda.is_available() else None)
        return fm, peak

    def _restore(self):
        """(checkpointer, loop state, the checkpoint resumed from or None)."""
        from omni_ds.train.checkpointing import CheckpointManager
        ckpt = CheckpointManager(self.cfg.output_dir, self.cfg.checkpoint.keep_last, self.rank, self.local_rank,
                                 dist.barrier, save_steps=self.cfg.checkpoint.every_steps)
        removed = ckpt.clean_partial()
        if removed:
            self.log(f"removed incomplete checkpoint(s) left by an interrupted save: {removed}")
        state = LoopState()
        source = ckpt.resolve(self.cfg.checkpoint.resume)
        if source is None:
            return ckpt, state, None
        from omni_ds.train.checkpoint_files import check_checkpoint
        from omni_ds.train.resume_check import check_resume
        # before any weights load: a refused resume costs nothing
        check_checkpoint(source, ckpt.read_state(source), self.world)
        for note in check_resume(ckpt.read_state(source), self.identity, self.cfg, source):
            self.log(note)
        saved = ckpt.load(self.engine, source)
        state.step, state.samples, state.tokens = saved["step"], saved["samples"], saved["tokens"]
        state.ctc_infeasible = saved.get("ctc_infeasible", 0)
        state.load_failures = saved.get("load_failures", 0)
        self.stream.epoch, self.stream.step_in_epoch = saved["data"]["epoch"], saved["data"]["step_in_epoch"]
        self.log(f"resumed from {source} at step {state.step} (epoch {self.stream.epoch}, "
                 f"step {self.stream.step_in_epoch} of {self.stream.steps_in_epoch(self.stream.epoch)})")
        return ckpt, state, source

    def _identity(self) -> dict:
        """What a resume must find unchanged (omni_ds.train.resume_check), saved with every checkpoint."""
        from omni_ds.train.parts import base_dataset
        from omni_ds.train.resume_check import run_identity
        return run_identity(self.cfg, self.global_batch, len(self.train_set),
                            base_dataset(self.train_set).manifest.digest)

    def _describe(self) -> dict:
        from omni_ds.train.parts import describe_run
        return describe_run(self)

    def checkpoint_state(self) -> dict:
        st = self.state
        return {"step": st.step, "samples": st.samples, "tokens": st.tokens, "data": self.stream.position(),
                "global_batch": self.global_batch, "num_samples": len(self.train_set), "loss": st.last_loss,
                "world_size": self.world, "zero_stage": zero_stage(self.ds), "config": self.cfg.to_dict(), "ctc_infeasible": st.ctc_infeasible,
                "load_failures": st.load_failures, "resume_identity": self.identity}

    # ---- the loop ----------------------------------------------------------------------------------
    def train(self, until: Optional[int] = None) -> LoopState:
        """Optimizer steps up to `until` (default: the schedule's end)."""
        until = self.total_steps if until is None else until
        self.engine.train()
        while self.state.step < until:
            self.train_step()
            step = self.state.step
            if self.checkpointer.due(step):
                self.checkpointer.save(self.engine, step, self.checkpoint_state(),
                                       crash_before_commit=self.faults.dies_during_save(step))
                self.state.last_saved = step
            else:
                self.faults.after_step(step)
            if self.evaluator is not None and self.evaluator.due(step, self.total_steps):
                self.evaluate()
                self.engine.train()
        return self.state

    def train_step(self) -> dict:
        """One optimizer step over this rank's GAS micro-batches; returns its logged scalars."""
        t0 = time.perf_counter()
        epoch, step_in_epoch, micro_batches = self.stream.next_step()
        targets, infeasible = self._step_targets(micro_batches)
        failed = self._load_failures(micro_batches)
        n_step, n_infeasible, n_failed = all_sum([sum(targets), len(infeasible), len(failed)], self.engine.device)
        self.state.load_failures += int(n_failed)
        if n_infeasible:
            self._on_infeasible(micro_batches, infeasible, int(n_infeasible), n_step, (epoch, step_in_epoch))
        lrs = group_lrs(self.engine)                 # the lrs this step's update uses
        loss_sum = self._forward_backward(micro_batches, targets, self.world / max(n_step, 1.0))
        self.state.step += 1
        loss, pos = self._reduce(loss_sum, micro_batches, n_step)
        grad_norm = self.engine.get_global_grad_norm()
        grad_norm = float(grad_norm) if grad_norm is not None else None
        if self.trace is not None:
            self.trace(self.state.step, epoch, step_in_epoch, loss, micro_batches)
        self._check_finite(loss, grad_norm, (epoch, step_in_epoch), micro_batches)
        if self.engine.device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        scalars = self._account(loss, grad_norm, pos, n_step, dt, epoch, step_in_epoch, lrs)
        return scalars

    def _step_targets(self, micro_batches: list[dict]) -> tuple[list[int], list]:
        """Per micro-batch its target count, CTC-infeasible answers left out; and those answers
        as (micro-batch, InfeasibleAnswer) (stage 2; see the module doc)."""
        omni, targets, bad = self.model.omni_config, [], []
        for i, batch in enumerate(micro_batches):
            found = (infeasible_answers(batch, omni.ctc_upsample_factor, omni.ctc_hidden_source)
                     if self.cfg.stage == 2 else [])
            targets.append(count_targets(batch, self.cfg.stage) - sum(a.n_units for a in found))
            bad += [(i, a) for a in found]
        return targets, bad

    def _load_failures(self, micro_batches: list[dict]) -> list[str]:
        """Records of this step that failed to load (audio gone since validation; data.on_bad =
        "skip"): left out of their micro-batch, each named here by the rank that met it."""
        failed = [f for b in micro_batches for f in b.pop("load_failures", [])]
        for reason in failed:
            print(f"[omni_ds rank {self.rank}] step {self.state.step + 1}: skipped a record that failed to load: "
                  f"{reason}", file=sys.stderr, flush=True)
        return failed

    def _on_infeasible(self, micro_batches: list[dict], bad: list, n_bad: int, n_step: float, where) -> None:
        """Log this rank's infeasible answers, count the step's (all ranks), apply the policy:
        every rank decides alike, on the all-reduced counts."""
        from omni_ds.model.ctc_lengths import infeasible_reason
        from omni_ds.train.parts import base_dataset
        step, ids = self.state.step + 1, base_dataset(self.train_set).manifest.arrow_column("id")
        for i, a in bad:
            index = int(micro_batches[i]["sample_index"][a.row])
            print(f"[omni_ds rank {self.rank}] step {step}: ctc infeasible: record {ids[index].as_py()} (manifest "
                  f"index {index}), answer {a.answer}: "
                  f"{infeasible_reason(a.n_states, a.n_units, a.repeats, self.model.omni_config.ctc_upsample_factor)}",
                  file=sys.stderr, flush=True)
        self.state.ctc_infeasible += n_bad
        if self.cfg.data.on_bad == "error" or n_step == 0:
            why = 'data.on_bad = "error"' if self.cfg.data.on_bad == "error" else "no other answer is left in the step"
            raise InfeasibleCTC(
                f"step {step} (epoch {where[0]}, step {where[1]} of the epoch): {n_bad} answer(s) that no CTC "
                f"alignment exists for (listed above with record ids and lengths) and {why}: stopped before the "
                f"step; the last checkpoint is {self.checkpointer.latest() or 'none'}. Validation reports such "
                "answers as bad records: check that the manifest, its units and model.omni.ctc_upsample_factor "
                "are what it saw (tools/validate_data.py --stage 2 --tokenizer ...)")
        self.observer.message(f"step {step}: {n_bad} answer(s) that no CTC alignment exists for left out of the "
                              f"step (data.on_bad = \"skip\"; {self.state.ctc_infeasible} so far)")

    def _forward_backward(self, micro_batches: list[dict], targets: list[int], scale: float) -> torch.Tensor:
        """Each micro-batch through the engine; DeepSpeed steps at the accumulation boundary."""
        device, dtype = self.engine.device, torch_dtype(self.cfg.precision)
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        for batch, n_targets in zip(micro_batches, targets):
            out = self.engine(**to_device(batch, device, dtype))
            # the model's own count must be the loop's (checked on the first steps: it syncs a GPU)
            if self.state.step < 2 and int(out["n_targets"]) != n_targets:
                raise RuntimeError(f"the model counted {int(out['n_targets'])} targets in a micro-batch, "
                                   f"the loop {n_targets}: loss normalisation would be wrong")
            self.engine.backward(out["loss_sum"] * scale, scale_wrt_gas=False)
            self.engine.step()
            loss_sum += out["loss_sum"].detach().double()
        return loss_sum

    def _reduce(self, loss_sum, micro_batches, n_step) -> tuple[float, dict]:
        """The step's loss over all ranks, and its position counts (FLOPs, throughput)."""
        positions = [self.flops_model.positions(b) for b in micro_batches]
        local = [float(loss_sum)] + [float(sum(p[k] for p in positions)) for k in POSITION_KEYS]
        reduced = all_sum(local, self.engine.device)
        return reduced[0] / max(n_step, 1.0), dict(zip(POSITION_KEYS, reduced[1:]))

    def _check_finite(self, loss: float, grad_norm, where: tuple[int, int], micro_batches: list[dict]) -> None:
        """Same outcome on every rank (the loss is all-reduced). fp16's inf grad norm is an
        overflow DeepSpeed skips, not a failure. Each rank names the records it trained on."""
        if not self.cfg.optim.stop_on_nonfinite:
            return
        bad_norm = grad_norm is not None and not math.isfinite(grad_norm) and self.cfg.precision != "fp16"
        if not math.isfinite(loss) or bad_norm:
            raise NonFiniteLoss(nonfinite_message(loss, grad_norm, self.state.step, *where,
                                                  self.checkpointer.latest(), self._record_ids(micro_batches)))

    def _record_ids(self, micro_batches: list[dict]) -> list[str]:
        """The manifest ids of this rank's samples in the step."""
        manifest = _manifest_of(self.train_set)
        ids = manifest.arrow_column("id") if manifest is not None else None
        indices = [int(i) for b in micro_batches for i in b["sample_index"].tolist()]
        return [ids[i].as_py() for i in indices] if ids is not None else [str(i) for i in indices]

    def _account(self, loss, grad_norm, pos, n_step, dt, epoch, step_in_epoch, lrs) -> dict:
        """Totals, fp16 overflow notices, and the logged scalars at the logging cadence."""
        from omni_ds.train.flops import mfu
        from omni_ds.train.metrics import max_memory_gib
        st, world = self.state, self.world
        skipped = int(getattr(self.engine, "skipped_steps", 0) or 0)
        if skipped > st.skipped_steps:
            scale = getattr(self.engine.optimizer, "cur_scale", "?")
            self.observer.message(f"step {st.step}: fp16 overflow, optimizer step skipped "
                                  f"({skipped} so far, loss scale {scale})")
            st.skipped_steps = skipped
        model_flops, hw_flops = self.flops_model.step_flops(pos)
        st.samples += int(pos["samples"])
        st.tokens += int(pos["llm_positions"])
        st.last_loss = loss
        st.train_seconds += dt
        st.model_flops += model_flops
        scalars = {"loss": loss, "grad_norm": grad_norm,
                   "epoch": epoch + (step_in_epoch + 1) / self.stream.steps_in_epoch(epoch),
                   "samples_per_s": pos["samples"] / dt, "tokens_per_s": pos["llm_positions"] / dt,
                   "step_time_s": dt, "targets": n_step, "mfu": mfu(model_flops, dt, world, self.peak_tflops),
                   "hfu": mfu(hw_flops, dt, world, self.peak_tflops),
                   "tflops_per_device": model_flops / dt / world / 1e12, "max_memory_gib": max_memory_gib(),
                   "skipped_steps": skipped, **{f"lr/{k}": v for k, v in lrs.items()}}
        if st.load_failures:
            scalars["load_failures"] = st.load_failures
        if self.cfg.stage == 2:
            scalars["ctc_infeasible"] = st.ctc_infeasible
            scalars["decoder_tokens_per_s"] = pos["decoder_positions"] / dt     # the CTC decoder's positions
        if st.step % self.cfg.log.every_steps == 0 or st.step == self.total_steps:
            self.observer.log(st.step, scalars)
            self.observer.progress(st.step, loss, next(iter(lrs.values())), pos["samples"] / dt)
        return scalars

    def evaluate(self) -> dict:
        result = self.evaluator()
        self.state.evals.append({"step": self.state.step, **result})
        self.observer.log(self.state.step, result, prefix="eval")
        if self.samples is not None:
            self.observer.log_samples(self.state.step, self.samples.answers(), self.samples.sampling_rate)
        return result

    # ---- the whole run -------------------------------------------------------------------------------
    def run(self) -> dict:
        """train(), then the final checkpoint, evaluation and LLaMA-Omni folder; the summary."""
        status, error, t0 = "completed", None, time.time()
        try:
            self.train()
        except (NonFiniteLoss, InfeasibleCTC) as e:
            status = "stopped_nonfinite" if isinstance(e, NonFiniteLoss) else "stopped_ctc_infeasible"
            error = str(e)
            print(f"[omni_ds rank {self.rank}] ERROR: {e}", file=sys.stderr, flush=True)
        final_dir = self._finish() if status == "completed" else None
        summary = self._summary(status, error, final_dir, time.time() - t0)
        self.close(summary)
        return summary

    def _finish(self) -> Optional[Path]:
        from omni_ds.train.checkpointing import save_final
        if self.state.last_saved != self.state.step:
            self.checkpointer.save(self.engine, self.state.step, self.checkpoint_state())
            self.state.last_saved = self.state.step
        if self.evaluator is not None:
            self.evaluate()
        if not self.cfg.checkpoint.save_final:
            return None
        return save_final(self.engine, self.model, self.tokenizer, self.cfg, zero_stage(self.ds),
                          self.rank, {"stage": self.cfg.stage, "steps": self.state.step,
                                      "final_loss": self.state.last_loss, "config": self.cfg.to_dict()})

    def _summary(self, status: str, error: Optional[str], final_dir, wall: float) -> dict:
        st, latest = self.state, self.checkpointer.latest()
        rate = (lambda x: x / st.train_seconds) if st.train_seconds else (lambda x: None)
        return {
            "status": status, "error": error, "stage": self.cfg.stage, "steps": st.step,
            "total_steps": self.total_steps, "final_loss": st.last_loss, "samples": st.samples,
            "tokens": st.tokens, "evals": st.evals, "train_seconds": st.train_seconds, "wall_seconds": wall,
            "samples_per_s": rate(st.samples),
            "mean_tflops_per_device": rate(st.model_flops / self.world / 1e12) if st.train_seconds else None,
            "mean_mfu": (st.model_flops / (st.train_seconds * self.world * self.peak_tflops * 1e12)
                         if self.peak_tflops and st.train_seconds else None),
            "peak_tflops": self.peak_tflops, "final_dir": str(final_dir) if final_dir else None,
            "checkpoint": str(latest) if latest else None,
            "skipped_steps": int(getattr(self.engine, "skipped_steps", 0) or 0),     # fp16 loss-scale overflows
            "ctc_infeasible_answers": st.ctc_infeasible,
            "load_failures": st.load_failures,          # records skipped because they failed to load
            **self.info}

    def close(self, summary: Optional[dict] = None) -> None:
        self.observer.close(summary)
        if self.trace is not None:
            self.trace.close()
        if dist.is_initialized():
            dist.barrier()
        if self.stall_watch is not None:      # after the last collective: a finished peer is not a stall
            self.stall_watch.stop()


def _llm_hidden_size(cfg: TrainConfig) -> Optional[int]:
    import json
    folder = cfg.model.init_from or cfg.model.llm_path
    try:
        return int(json.loads((Path(folder) / "config.json").read_text())["hidden_size"])
    except (OSError, KeyError, ValueError, TypeError):
        return None

