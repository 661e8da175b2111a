"""A training run, either stage: setup (distributed, model, data, engine, resume), the loop,
the final save. `launch/stage1.py` and `launch/stage2.py` are thin CLIs over `main()`.

    deepspeed --num_gpus 4 launch/stage1.py --config launch/configs/stage1.json --ds ds_configs/zero3.json
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from omni_ds.precision import torch_dtype
from omni_ds.train.config import ConfigError, TrainConfig, load_config
from omni_ds.train.ds_config import load_ds_config, read_ds_config, zero_stage



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
        overrides.append(f"resume={args.resume}")
    try:
        cfg = load_config(args.config, overrides)
        if cfg.stage != stage:
            raise ConfigError(f"{args.config}: stage = {cfg.stage} but this is launch/stage{stage}.py")
        ds_raw = read_ds_config(args.ds)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        from omni_ds.train.plan import dry_run
        return dry_run(cfg, args.ds, ds_raw, args.world_size, args.gpu, args.gpu_memory_gib)
    summary = run(cfg, args.ds, args.gpu, args.gpu_memory_gib)
    return 0 if summary.get("status") == "completed" else 1


def shutdown_distributed() -> None:
    """Tear the process group down before the interpreter exits: left to interpreter shutdown,
    gloo's background threads can outlive it and abort the process ("terminate called without
    an active exception", seen after ZeRO-3 runs) although all work is saved."""
    import torch.distributed as dist
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


# ---- setup ------------------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def llm_hidden_size(cfg: TrainConfig) -> Optional[int]:
    folder = cfg.init_from or cfg.llm_path
    try:
        return int(json.loads((Path(folder) / "config.json").read_text())["hidden_size"])
    except (OSError, KeyError, ValueError, TypeError):
        return None


def build_model(cfg: TrainConfig, ds: dict, dtype: Optional[torch.dtype] = None):
    """Model + tokenizer, every parameter in the training precision (omni_ds.precision: DeepSpeed
    keeps fp32 masters of the trainable ones), or in `dtype` (export reads fp32 masters into fp32).
    Under ZeRO-3 the LLM is partitioned while it loads."""
    from omni_ds.model.checkpoint import build_from_parts, load_omni_folder
    from omni_ds.model.omni_config import OmniConfig
    dtype = dtype or torch_dtype(cfg.precision)
    keep = None
    if zero_stage(ds) == 3:
        from transformers.integrations import HfDeepSpeedConfig
        keep = HfDeepSpeedConfig(ds)       # makes from_pretrained partition the LLM while loading
        # The speech parts (encoder, projector, decoder: < 1.1 B params) are built whole and
        # partitioned by deepspeed.initialize: under zero.Init, transformers' WhisperEncoder
        # init writes sinusoids into an already-partitioned (0-sized) position table and fails.
    if cfg.init_from:
        # stage 2: a stage-1 folder without a decoder gets a freshly initialised one (seeded)
        model, tok = load_omni_folder(cfg.init_from, dtype=dtype, omni_overrides=cfg.omni or None,
                                      attn_implementation=cfg.attn_implementation,
                                      with_speech_generator=True if cfg.stage == 2 else None)
    else:
        try:
            # Stage 1 does not need the CTC decoder (425.6 M frozen parameters at full size):
            # built only when asked for; stage 2 adds it to the stage-1 folder.
            omni = OmniConfig(**{"with_speech_generator": cfg.stage == 2, **cfg.omni})
        except (TypeError, ValueError) as e:
            raise ConfigError(f"config key 'omni' = {cfg.omni!r}: {e}") from None
        model, tok = build_from_parts(cfg.whisper_path, cfg.llm_path, omni, tokenizer_path=cfg.tokenizer_path,
                                      dtype=dtype, attn_implementation=cfg.attn_implementation)
    model._omni_ds_hf_ds_config = keep
    model.set_stage(cfg.stage, freeze_backbone=cfg.freeze_backbone)
    for name, p in model.named_parameters():
        if name.startswith("speech_encoder.") and p.requires_grad:
            raise RuntimeError(f"{name}: the Whisper encoder must stay frozen")
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    check_parameter_dtypes(model, dtype)
    return model, tok


def check_parameter_dtypes(model, dtype: torch.dtype) -> None:
    """Every parameter in the engine's dtype before deepspeed.initialize sees it: a mixture fails
    deep inside ZeRO-3 (an assert in its flat-buffer defragment) or trains a part in another dtype."""
    from omni_ds.precision import parameter_dtypes
    want = str(dtype).replace("torch.", "")
    off = {part: sorted(d) for part, d in parameter_dtypes(model).items() if d != {want}}
    if off:
        raise RuntimeError(f"model parameters are not all {want} before the engine starts: {off}")


def build_data(cfg: TrainConfig, tokenizer, encoder_mode: str, ds_rate: int, log, n_mels: int = 128):
    from omni_ds.train.data import build_dataset
    train = build_dataset(cfg.train_manifest, tokenizer, cfg, encoder_mode, ds_rate, log, n_mels)
    val = build_dataset(cfg.val_manifest, tokenizer, cfg, encoder_mode, ds_rate, log, n_mels) if cfg.val_manifest else None
    if val is not None and cfg.eval_max_samples:
        val.indices = val.indices[: cfg.eval_max_samples]
    if cfg.cache_in_memory:
        from omni_ds.train.data import InMemory
        train, val = InMemory(train), (InMemory(val) if val is not None else None)
    return train, val


def make_evaluator(engine, val, collate, cfg, rank: int, world: int):
    """Validation over `val`, rank-sharded: loss (stage 1); CTC loss and unit edit distance
    (stage 2)."""
    if val is None or len(val) == 0:
        return None
    from omni_ds.train.loop import evaluate_loss, evaluate_units
    evaluate_fn = evaluate_units if cfg.stage == 2 else evaluate_loss
    bs = cfg.per_device_eval_batch_size
    chunks = [list(range(i, min(i + bs, len(val)))) for i in range(0, len(val), bs)]
    mine = chunks[rank::world]
    n_batches = math.ceil(len(chunks) / world)

    def evaluate() -> dict:
        batches = [collate([val[i] for i in c]) for c in mine]
        fallback = batches[0] if batches else collate([val[i] for i in chunks[0]])
        return evaluate_fn(engine, batches, n_batches, fallback, cfg)
    return evaluate


def cache_settings(cfg: TrainConfig, model) -> dict:
    """Everything besides the model folder and the manifest that the cached states depend on."""
    import dataclasses
    omni = model.omni_config
    return {"omni": dataclasses.asdict(omni) if dataclasses.is_dataclass(omni) else vars(omni),
            "omni_overrides": cfg.omni, "precision": cfg.precision, "cache_dtype": cfg.cache_dtype,
            "prompt_template": cfg.prompt_template, "system_prompt": cfg.system_prompt,
            "instruction": cfg.instruction, "model_max_length": cfg.model_max_length,
            "max_speech_seconds": cfg.max_speech_seconds, "attn_implementation": cfg.attn_implementation}


def _gathered_encoder(model, ds: dict):
    """Under ZeRO-3, the Whisper encoder's parameters gathered for the cache build: the build calls
    the model's response_hidden_states() outside the engine's forward, and the trimmed encoder
    reads its position table directly (not through a submodule call, so ZeRO-3's hooks would not
    gather it). The LLM runs through module calls and stays partitioned. A no-op otherwise."""
    import contextlib
    if zero_stage(ds) != 3:
        return contextlib.nullcontext()
    import deepspeed
    return deepspeed.zero.GatheredParameters(list(model.speech_encoder.parameters()), modifier_rank=None)


def attach_hidden_cache(engine, model, cfg: TrainConfig, ds: dict, train_set, val_set, collate,
                        rank: int, world: int, log):
    """Stage 2 with `cache_hidden_states`: the frozen LLM's response states of the train and val
    manifests, computed once (each rank a strided share, then a barrier) or found complete from an
    earlier run; returns (train_set, val_set, collate, info) that read the cache only.

    After this the training steps and validation run the decoder alone. Without ZeRO-3 the frozen
    encoder, projector and LLM are then moved to CPU memory (they stay in the model, so the final
    LLaMA-Omni folder still holds them bit for bit); under ZeRO-3 they stay partitioned on the
    devices (1/world of their 16-bit weights per device) and are never gathered again."""
    from omni_ds.train.data import InMemory
    from omni_ds.train.hidden_cache import CachedStatesDataset, HiddenStateCache, cache_key, collate_cached
    root = Path(cfg.cache_dir) if cfg.cache_dir else Path(cfg.output_dir) / "hidden_cache"
    settings = cache_settings(cfg, model)
    info: dict = {"cache_dir": str(root), "cache_dtype": cfg.cache_dtype}
    sets = {"train": (train_set, cfg.train_manifest), "val": (val_set, cfg.val_manifest)}
    out = {}
    t0 = time.time()
    for name, (data, manifest) in sets.items():
        if data is None:
            out[name] = None
            continue
        base = data.dataset if isinstance(data, InMemory) else data       # the cache replaces RAM caching
        key = cache_key(Path(cfg.init_from), Path(manifest), settings)
        cache = HiddenStateCache(root, key, dtype=cfg.cache_dtype)
        with _gathered_encoder(engine.module, ds):
            built = cache.build(engine.module, base, collate, cfg.per_device_eval_batch_size, engine.device,
                                torch_dtype(cfg.precision), rank, world)
        log(f"hidden-state cache ({name}): {'built' if built else 'reused'} {cache.dir} "
            f"({cache.disk_bytes() / 1e6:.2f} MB for {len(base)} samples)")
        info[name] = {"key": key, "dir": str(cache.dir), "built": built, "bytes": cache.disk_bytes(),
                      "samples": len(base)}
        out[name] = CachedStatesDataset(base, cache)
    info["build_seconds"] = time.time() - t0
    if zero_stage(ds) != 3:
        m = engine.module
        for part in (m.speech_encoder, m.speech_projector, m.llm):
            part.to("cpu")
        info["frozen_parts_device"] = "cpu"
    else:
        info["frozen_parts_device"] = "partitioned (ZeRO-3)"
    return out["train"], out["val"], collate_cached, info


# ---- the run -----------------------------------------------------------------------------------------
@dataclass
class Run:
    """Everything a training run holds after setup (engine, data, schedule, checkpoints)."""
    cfg: TrainConfig
    ds: dict
    rank: int
    world: int
    engine: Any
    model: Any
    tokenizer: Any
    train_set: Any
    val_set: Any
    collate: Any
    stream: Any
    total_steps: int
    n_warmup: int
    global_batch: int
    groups: list
    counts: dict
    flops_model: Any
    peak_tflops: Optional[float]
    ckpt: Any
    state: Any
    info: dict = field(default_factory=dict)
    val_collate: Any = None

    def log(self, msg: str) -> None:
        if self.rank == 0:
            print(f"[omni_ds] {msg}", flush=True)

    def checkpoint_state(self, st) -> dict:
        return {"step": st.step, "samples": st.samples, "tokens": st.tokens, "data": self.stream.position(),
                "global_batch": self.global_batch, "num_samples": len(self.train_set), "loss": st.last_loss,
                "world_size": self.world, "config": self.cfg.to_dict()}


def setup(cfg: TrainConfig, ds_path: str, gpu: Optional[str] = None, gpu_memory_gib: Optional[float] = None) -> Run:
    import deepspeed
    import torch.distributed as dist

    from omni_ds.train.checkpointing import CheckpointManager
    from omni_ds.data.collator import OmniCollator
    from omni_ds.data.sampler import DistributedBatchSampler
    from omni_ds.train.data import StepStream
    from omni_ds.train.flops import flops_model_for, guess_peak_tflops
    from omni_ds.train.loop import LoopState
    from omni_ds.train.param_groups import build_param_groups, count_params, for_optimizer
    from omni_ds.train.schedule import make_scheduler_factory, warmup_steps

    deepspeed.init_distributed(timeout=timedelta(minutes=cfg.dist_timeout_minutes))
    rank, world = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    from deepspeed.accelerator import get_accelerator
    if get_accelerator().device_name() == "cuda":
        get_accelerator().set_device(local_rank)

    def log(msg: str) -> None:
        if rank == 0:
            print(f"[omni_ds] {msg}", flush=True)

    seed_everything(cfg.seed)
    ds = load_ds_config(ds_path, cfg, world, llm_hidden_size(cfg))
    micro, gas, global_batch = cfg.batch_geometry(world)

    # model, data, schedule (the memory check's shape is read before the model exists)
    from omni_ds.train.plan import device_memory, model_shape, run_memory_check
    shape = model_shape(cfg)[0] if rank == 0 and device_memory(gpu, gpu_memory_gib, [])[0] else None
    model, tokenizer = build_model(cfg, ds)
    encoder_mode = model.omni_config.encoder_mode
    train_set, val_set = build_data(cfg, tokenizer, encoder_mode, model.omni_config.speech_encoder_ds_rate, log,
                                    model.speech_encoder.config.num_mel_bins)
    collate = OmniCollator(tokenizer.pad_token_id)
    sampler = DistributedBatchSampler(train_set.lengths, micro, world, rank, cfg.seed, mode=cfg.batching,
                                      grad_accum=gas, max_tokens=cfg.max_tokens_per_batch)
    stream = StepStream(train_set, sampler, gas, collate, cfg.num_workers)
    if stream.steps_in_epoch(0) < 1:
        raise ConfigError(f"{cfg.train_manifest}: {len(train_set)} usable samples make fewer than one "
                          f"optimizer step of global batch {global_batch}")
    total_steps = cfg.max_steps or stream.total_steps(cfg.num_train_epochs)
    n_warmup = warmup_steps(total_steps, cfg.warmup_ratio)
    fits = run_memory_check(cfg, ds, shape, world, micro, int(max(train_set.lengths)), gpu, gpu_memory_gib,
                            log) if rank == 0 else None

    # optimizer groups and engine (the optimizer from the DeepSpeed config when it has one,
    # e.g. DeepSpeedCPUAdam for offload; torch AdamW otherwise)
    groups = build_param_groups(model, cfg)
    counts = count_params(model)
    opt_groups = for_optimizer(groups)
    optimizer = None
    if "optimizer" not in ds:
        optimizer = torch.optim.AdamW(opt_groups, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                      eps=cfg.adam_epsilon, weight_decay=cfg.weight_decay)
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, model_parameters=None if optimizer is not None else opt_groups,
        lr_scheduler=make_scheduler_factory(total_steps, n_warmup, cfg.lr_scheduler_type, cfg.min_lr_ratio),
        config=ds, dist_init_required=False)
    val_collate = collate
    cache_info = None
    if cfg.stage == 2 and cfg.cache_hidden_states:
        train_set, val_set, collate, cache_info = attach_hidden_cache(
            engine, model, cfg, ds, train_set, val_set, collate, rank, world, log)
        stream.dataset, stream.collate, val_collate = train_set, collate, collate
    flops_model = flops_model_for(engine.module, cfg.stage, cfg.gradient_checkpointing, encoder_mode == "padded",
                                  model.omni_config.ctc_upsample_factor, model.omni_config.speech_encoder_ds_rate)
    peak = cfg.peak_tflops or (guess_peak_tflops(torch.cuda.get_device_name()) if torch.cuda.is_available() else None)

    # resume
    ckpt = CheckpointManager(cfg.output_dir, cfg.save_total_limit, rank, local_rank, dist.barrier)
    removed = ckpt.clean_partial()
    if removed:
        log(f"removed incomplete checkpoint(s) left by an interrupted save: {removed}")
    state = LoopState()
    resume_from = ckpt.resolve(cfg.resume)
    if resume_from is not None:
        saved = ckpt.load(engine, resume_from)
        if saved["global_batch"] != global_batch or saved["num_samples"] != len(train_set):
            raise RuntimeError(f"{resume_from}: saved with global batch {saved['global_batch']} over "
                               f"{saved['num_samples']} samples; this run has {global_batch} over "
                               f"{len(train_set)}: the data position would not carry over")
        state.step, state.samples, state.tokens = saved["step"], saved["samples"], saved["tokens"]
        stream.epoch, stream.step_in_epoch = saved["data"]["epoch"], saved["data"]["step_in_epoch"]
        log(f"resumed from {resume_from} at step {state.step} (epoch {stream.epoch}, "
            f"step {stream.step_in_epoch} of {stream.steps_in_epoch(stream.epoch)})")

    info = {"config": cfg.to_dict(), "ds_config": ds, "world_size": world, "micro_batch": micro,
            "gradient_accumulation_steps": gas, "global_batch": global_batch,
            "train_samples": len(train_set), "skipped_records": train_set.n_skipped,
            "steps_per_epoch": stream.steps_in_epoch(0), "total_steps": total_steps, "warmup_steps": n_warmup,
            "params": counts, "zero_stage": zero_stage(ds),
            "param_groups": {g["name"]: {"lr": g["lr"], "weight_decay": g["weight_decay"],
                                         "tensors": len(g["params"])} for g in groups}}
    from omni_ds.train.param_groups import module_of, optimizer_parameter_names
    opt_numel: dict = {}
    shapes = {n: (getattr(p, "ds_numel", None) or p.numel()) for n, p in engine.module.named_parameters()}
    for n in optimizer_parameter_names(engine):
        opt_numel[module_of(n)] = opt_numel.get(module_of(n), 0) + shapes[n]
    info["optimizer_state_params"] = opt_numel          # read back from the engine's optimizer
    from omni_ds.precision import parameter_dtypes
    info["param_dtypes"] = {part: sorted(d) for part, d in parameter_dtypes(engine.module).items()}
    info["resumed_from"] = str(resume_from) if resume_from is not None else None
    info["memory_check_fits"] = fits          # None: no device memory known (rank 0 only)
    if cache_info is not None:
        info["hidden_cache"] = cache_info
    log(f"world {world}, micro {micro} x GAS {gas} = global batch {global_batch}; "
        f"{len(train_set)} samples, {stream.steps_in_epoch(0)} steps/epoch, {total_steps} steps, {n_warmup} warmup; "
        f"trainable {counts['trainable'] / 1e6:.2f} M of {counts['total'] / 1e6:.2f} M params; ZeRO-{zero_stage(ds)}")
    return Run(cfg, ds, rank, world, engine, model, tokenizer, train_set, val_set, collate, stream, total_steps,
               n_warmup, global_batch, groups, counts, flops_model, peak, ckpt, state, info, val_collate)


def run(cfg: TrainConfig, ds_path: str, gpu: Optional[str] = None, gpu_memory_gib: Optional[float] = None) -> dict:
    """Setup, the loop, the final checkpoint / evaluation / LLaMA-Omni folder, the JSON summary."""
    import torch.distributed as dist
    from omni_ds.train.loop import NonFiniteLoss, fit
    from omni_ds.train.metrics import Observer

    r = setup(cfg, ds_path, gpu, gpu_memory_gib)
    state = r.state
    observer = Observer(cfg, r.rank, r.total_steps, state.step, r.info)
    trace = SampleTrace(cfg, r.rank) if cfg.trace_samples else None
    evaluate = make_evaluator(r.engine, r.val_set, r.val_collate or r.collate, cfg, r.rank, r.world)

    status, error = "completed", None
    t0 = time.time()
    try:
        fit(r.engine, r.stream, cfg, state, r.total_steps, observer=observer, checkpoints=r.ckpt,
            checkpoint_state=r.checkpoint_state, flops_model=r.flops_model, peak_tflops=r.peak_tflops,
            evaluate=evaluate, trace=trace)
    except NonFiniteLoss as e:
        status, error = "stopped_nonfinite", str(e)
        print(f"[omni_ds rank {r.rank}] ERROR: {e}", file=sys.stderr, flush=True)

    final_dir = None
    if status == "completed":
        if state.last_saved != state.step:
            r.ckpt.save(r.engine, state.step, r.checkpoint_state(state))
            state.last_saved = state.step
        if evaluate is not None:
            result = evaluate()
            state.evals.append({"step": state.step, **result})
            observer.log(state.step, result, prefix="eval")
        if cfg.save_final:
            final_dir = save_final(r.engine, r.model, r.tokenizer, cfg, r.ds, r.rank,
                                   {"stage": cfg.stage, "steps": state.step, "final_loss": state.last_loss,
                                    "config": cfg.to_dict()})
    latest = r.ckpt.latest()
    summary = {
        "status": status, "error": error, "stage": cfg.stage, "steps": state.step, "total_steps": r.total_steps,
        "final_loss": state.last_loss, "samples": state.samples, "tokens": state.tokens,
        "evals": state.evals, "train_seconds": state.train_seconds, "wall_seconds": time.time() - t0,
        "samples_per_s": state.samples / state.train_seconds if state.train_seconds else None,
        "mean_tflops_per_device": (state.model_flops / state.train_seconds / r.world / 1e12
                                   if state.train_seconds else None),
        "mean_mfu": (state.model_flops / (state.train_seconds * r.world * r.peak_tflops * 1e12)
                     if r.peak_tflops and state.train_seconds else None),
        "peak_tflops": r.peak_tflops, "final_dir": str(final_dir) if final_dir else None,
        "checkpoint": str(latest) if latest else None,
        "skipped_steps": int(getattr(r.engine, "skipped_steps", 0) or 0),     # fp16 loss-scale overflows
        **r.info}
    observer.close(summary)
    if trace is not None:
        trace.close()
    if dist.is_initialized():
        dist.barrier()
    return summary


def save_final(engine, model, tokenizer, cfg, ds, rank: int, metadata: dict) -> Path:
    """output_dir/final in the LLaMA-Omni layout; under ZeRO-3 from the gathered 16-bit weights."""
    from omni_ds.model.checkpoint import save_omni_folder
    out = Path(cfg.output_dir) / "final"
    if zero_stage(ds) == 3:
        state = engine._zero3_consolidated_16bit_state_dict()      # collective; full dict on rank 0
    else:
        state = {k: v.detach().cpu() for k, v in engine.module.state_dict().items()} if rank == 0 else None
    if rank == 0:
        save_omni_folder(out, model, tokenizer, state_dict=state, metadata=metadata)
        print(f"[omni_ds] final model: {out}", flush=True)
    import torch.distributed as dist
    if dist.is_initialized():
        dist.barrier()
    return out


class SampleTrace:
    """Per-rank JSONL of (step, epoch, loss, sample indices) — the resume audit trail."""

    def __init__(self, cfg, rank: int):
        d = Path(cfg.output_dir) / "trace"
        d.mkdir(parents=True, exist_ok=True)
        self.f = open(d / f"rank{rank}.jsonl", "a")

    def __call__(self, step, epoch, step_in_epoch, loss, micro_batches) -> None:
        idx = [int(i) for b in micro_batches for i in b["sample_index"]]
        self.f.write(json.dumps({"step": step, "epoch": epoch, "step_in_epoch": step_in_epoch,
                                 "loss": loss, "samples": idx}) + "\n")
        self.f.flush()

    def close(self) -> None:
        self.f.close()
