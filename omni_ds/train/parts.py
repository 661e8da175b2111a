"""The Trainer's parts, one thing each: distributed start, model, data, engine, the stage-2
hidden-state cache, the memory check, the run description (summary.json)."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import time
from datetime import timedelta
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from omni_ds.precision import parameter_dtypes, torch_dtype
from omni_ds.train.config import ConfigError, TrainConfig
from omni_ds.train.ds_config import zero_stage


def start_distributed(cfg: TrainConfig) -> tuple[int, int, int]:
    """(rank, world size, local rank), the process group up (gloo on CPU, NCCL on GPUs)."""
    import deepspeed
    import torch.distributed as dist
    from deepspeed.accelerator import get_accelerator
    deepspeed.init_distributed(timeout=timedelta(minutes=cfg.dist_timeout_minutes))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if get_accelerator().device_name() == "cuda":
        get_accelerator().set_device(local_rank)
    return dist.get_rank(), dist.get_world_size(), local_rank


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ---- model ------------------------------------------------------------------------------------------
def build_model(cfg: TrainConfig, ds: dict, dtype: Optional[torch.dtype] = None):
    """Model + tokenizer, every parameter in the training precision (omni_ds.precision: DeepSpeed
    keeps fp32 masters of the trainable ones), or in `dtype` (export reads fp32 masters into fp32).
    Under ZeRO-3 the LLM is partitioned while it loads. With `lora.rank` the LLM gets peft's
    adapters (omni_ds.train.lora) and only they and the projector train."""
    from omni_ds.model.checkpoint import build_from_parts, load_omni_folder
    from omni_ds.train import lora
    dtype = dtype or torch_dtype(cfg.precision)
    lora.check_quantization(cfg, zero_stage(ds))
    keep = None
    if zero_stage(ds) == 3:
        from transformers.integrations import HfDeepSpeedConfig
        keep = HfDeepSpeedConfig(ds)       # makes from_pretrained partition the LLM while loading
        # The speech parts (encoder, projector, decoder: < 1.1 B params) are built whole and
        # partitioned by deepspeed.initialize: under zero.Init, transformers' WhisperEncoder
        # init writes sinusoids into an already-partitioned (0-sized) position table and fails.
    omni = effective_omni_config(cfg)
    if cfg.model.init_from:
        # stage 2: a stage-1 folder without a decoder gets a freshly initialised one (seeded)
        model, tok = load_omni_folder(cfg.model.init_from, dtype=dtype, omni_overrides=cfg.model.omni or None,
                                      attn_implementation=cfg.model.attn_implementation,
                                      with_speech_generator=_with_generator(cfg))
    else:
        model, tok = build_from_parts(cfg.model.whisper_path, cfg.model.llm_path, omni, tokenizer_path=cfg.model.tokenizer_path,
                                      dtype=dtype, attn_implementation=cfg.model.attn_implementation,
                                      quantization=lora.quantization_config(cfg, dtype))
    if model.omni_config.replace(speech_encoder=omni.speech_encoder) != omni:
        raise RuntimeError(f"the model's OmniConfig {model.omni_config} is not the planned {omni}")
    model._omni_ds_hf_ds_config = keep
    model.set_stage(cfg.stage, freeze_backbone=cfg.model.freeze_backbone or cfg.lora.enabled)
    if cfg.lora.enabled:
        lora.apply_lora(model, cfg, dtype)
    for name, p in model.named_parameters():
        if name.startswith("speech_encoder.") and p.requires_grad:
            raise RuntimeError(f"{name}: the Whisper encoder must stay frozen")
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    check_parameter_dtypes(model, dtype, also=("uint8",) if cfg.lora.load_in_4bit else ())
    return model, tok


def _with_generator(cfg: TrainConfig) -> Optional[bool]:
    """Stage 2 always has the CTC decoder; stage 1 from parts builds none (425.6 M frozen
    parameters at full size) unless asked; stage 1 from a folder keeps what the folder has."""
    return True if cfg.stage == 2 else (None if cfg.model.init_from else False)


def effective_omni_config(cfg: TrainConfig):
    """The OmniConfig the run builds: the init_from folder's config.json (or the defaults, from
    parts) with the config's `omni` overrides. No weights are read: the dry run plans with it."""
    import json
    from omni_ds.model.checkpoint import folder_omni_config
    from omni_ds.model.omni_config import OmniConfig
    try:
        if cfg.model.init_from:
            raw = json.loads((Path(cfg.model.init_from) / "config.json").read_text())
            return folder_omni_config(raw, cfg.model.omni or None, _with_generator(cfg))
        overrides = {"with_speech_generator": _with_generator(cfg), **cfg.model.omni}
        return OmniConfig(**overrides).replace(speech_encoder=str(cfg.model.whisper_path))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config key 'model.omni' = {cfg.model.omni!r}: {e}") from None


def check_parameter_dtypes(model, dtype: torch.dtype, also: tuple = ()) -> None:
    """Every parameter in the engine's dtype before deepspeed.initialize sees it: a mixture fails
    deep inside ZeRO-3 (an assert in its flat-buffer defragment) or trains a part in another dtype.
    `also`: dtypes allowed besides (QLoRA's frozen 4-bit base is stored as uint8)."""
    want = str(dtype).replace("torch.", "")
    off = {part: sorted(d) for part, d in parameter_dtypes(model).items() if not d <= {want, *also}}
    if off:
        raise RuntimeError(f"model parameters are not all {want} before the engine starts: {off}")


# ---- data -------------------------------------------------------------------------------------------
def build_data(cfg: TrainConfig, model, tokenizer, world: int, rank: int, log):
    """(train set, val set or None, the distributed batch sampler): validated, lengths known."""
    from omni_ds.data.sampler import Batching, DistributedBatchSampler
    from omni_ds.train.data import InMemory, build_dataset
    omni = model.omni_config
    args = (tokenizer, cfg, omni, log, model.speech_encoder.config.num_mel_bins)
    train = build_dataset(cfg.data.train_manifest, *args)
    val = build_dataset(cfg.data.val_manifest, *args) if cfg.data.val_manifest else None
    if val is not None and cfg.eval.max_samples:
        val.indices = val.indices[: cfg.eval.max_samples]
    if cfg.data.cache_in_memory:
        train, val = InMemory(train), (InMemory(val) if val is not None else None)
    micro, gas, _ = cfg.batch_geometry(world)
    sampler = DistributedBatchSampler(train.lengths, micro, world, rank, cfg.seed,
                                      Batching(cfg.batch.batching, gas, max_tokens=cfg.batch.max_tokens_per_batch))
    return train, val, sampler


# ---- engine -----------------------------------------------------------------------------------------
def build_engine(cfg: TrainConfig, model, ds: dict, total_steps: int, n_warmup: int):
    """(DeepSpeed engine, parameter groups). The optimizer comes from the DeepSpeed config when it
    has one (e.g. DeepSpeedCPUAdam for offload); torch AdamW otherwise."""
    import deepspeed
    from omni_ds.train.param_groups import build_param_groups, for_optimizer
    from omni_ds.train.schedule import make_scheduler_factory
    groups = build_param_groups(model, cfg)
    opt_groups = for_optimizer(groups)
    optimizer = None
    if "optimizer" not in ds:
        optimizer = torch.optim.AdamW(opt_groups, lr=cfg.optim.learning_rate, betas=(cfg.optim.adam_beta1, cfg.optim.adam_beta2),
                                      eps=cfg.optim.adam_epsilon, weight_decay=cfg.optim.weight_decay)
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, model_parameters=None if optimizer is not None else opt_groups,
        lr_scheduler=make_scheduler_factory(total_steps, n_warmup, cfg.optim.lr_scheduler_type, cfg.optim.min_lr_ratio),
        config=ds, dist_init_required=False)
    return engine, groups


# ---- stage 2: the hidden-state cache -----------------------------------------------------------------
def cache_settings(cfg: TrainConfig, model) -> dict:
    """Everything besides the model folder and the manifest that the cached states depend on."""
    omni = model.omni_config
    return {"omni": dataclasses.asdict(omni) if dataclasses.is_dataclass(omni) else vars(omni),
            "omni_overrides": cfg.model.omni, "precision": cfg.precision, "cache_dtype": cfg.data.cache_dtype,
            "prompt_template": cfg.data.prompt_template, "system_prompt": cfg.data.system_prompt,
            "instruction": cfg.data.instruction, "model_max_length": cfg.data.model_max_length,
            "max_speech_seconds": cfg.data.max_speech_seconds, "attn_implementation": cfg.model.attn_implementation}


def gathered_encoder(model, ds: dict):
    """Under ZeRO-3, the Whisper encoder's parameters gathered for the cache build: the build calls
    the model's response_hidden_states() outside the engine's forward, and the trimmed encoder
    reads its position table directly (not through a submodule call, so ZeRO-3's hooks would not
    gather it). The LLM runs through module calls and stays partitioned. A no-op otherwise."""
    if zero_stage(ds) != 3:
        return contextlib.nullcontext()
    import deepspeed
    return deepspeed.zero.GatheredParameters(list(model.speech_encoder.parameters()), modifier_rank=None)


def attach_hidden_cache(engine, cfg: TrainConfig, ds: dict, sets: tuple, collate, rank: int, world: int, log):
    """Stage 2 with `cache_hidden_states`: the frozen LLM's response states of the train and val
    manifests (`sets`: (train, val or None), batched by `collate` for the build), computed once
    (each rank a strided share, then a barrier) or found complete from an earlier run; returns
    (train_set, val_set, info) that read the cache only (collate them with
    hidden_cache.collate_cached).

    After this the training steps and validation run the decoder alone. Without ZeRO-3 the frozen
    encoder, projector and LLM are then moved to CPU memory (they stay in the model, so the final
    LLaMA-Omni folder still holds them bit for bit); under ZeRO-3 they stay partitioned on the
    devices (1/world of their 16-bit weights per device) and are never gathered again."""
    from omni_ds.train.data import InMemory
    from omni_ds.train.hidden_cache import CachedStatesDataset, HiddenStateCache, StateSource, cache_key
    root = Path(cfg.data.cache_dir) if cfg.data.cache_dir else Path(cfg.output_dir) / "hidden_cache"
    settings = cache_settings(cfg, engine.module)
    info: dict = {"cache_dir": str(root), "cache_dtype": cfg.data.cache_dtype}
    out = {}
    t0 = time.time()
    for name, data, manifest in zip(("train", "val"), sets, (cfg.data.train_manifest, cfg.data.val_manifest)):
        if data is None:
            out[name] = None
            continue
        base = data.dataset if isinstance(data, InMemory) else data       # the cache replaces RAM caching
        key = cache_key(Path(cfg.model.init_from), Path(manifest), settings)
        cache = HiddenStateCache(root, key, dtype=cfg.data.cache_dtype)
        with gathered_encoder(engine.module, ds):
            built = cache.build(StateSource(engine.module, base, collate, cfg.eval.batch_size,
                                            engine.device, torch_dtype(cfg.precision)), rank, world)
        log(f"hidden-state cache ({name}): {'built' if built else 'reused'} {cache.dir} "
            f"({cache.disk_bytes() / 1e6:.2f} MB for {len(base)} samples)")
        info[name] = {"key": key, "dir": str(cache.dir), "built": built, "bytes": cache.disk_bytes(),
                      "samples": len(base)}
        out[name] = CachedStatesDataset(base, cache)
    info["build_seconds"] = time.time() - t0
    info["frozen_parts_device"] = _park_frozen_parts(engine.module, ds)
    return out["train"], out["val"], info


def _park_frozen_parts(model, ds: dict) -> str:
    if zero_stage(ds) == 3:
        return "partitioned (ZeRO-3)"
    for part in (model.speech_encoder, model.speech_projector, model.llm):
        part.to("cpu")
    return "cpu"


# ---- the memory check and the run description ----------------------------------------------------------
def memory_check(cfg: TrainConfig, ds: dict, rank: int, world: int, micro: int, gpu: Optional[str],
                 gpu_memory_gib: Optional[float]):
    """The run's memory verdict as a callable `check(longest_sample, log) -> fits | None`. The
    model's shape is read now, before the model is built (under ZeRO-3 transformers would
    partition even a meta-device instance); rank 0 only."""
    from omni_ds.train.dry_run import device_memory, model_shape, run_memory_check
    device = device_memory(gpu, gpu_memory_gib, [])
    shape = model_shape(cfg)[0] if rank == 0 and device[0] is not None else None

    def check(longest: int, log) -> Optional[bool]:
        if rank != 0:
            return None
        return run_memory_check(cfg, ds, shape, world, micro, longest, device, log)
    return check


def base_dataset(dataset):
    """The validated OmniSpeechDataset (its manifest, its report) behind a possibly wrapped (RAM
    cache, hidden-state cache) dataset; None when there is none."""
    while dataset is not None and not hasattr(dataset, "report"):
        dataset = getattr(dataset, "base", None) or getattr(dataset, "dataset", None)
    return dataset


def _report_of(dataset):
    """The validation report behind a (possibly wrapped) dataset."""
    return getattr(base_dataset(dataset), "report", None)


def describe_run(t) -> dict:
    """The run's facts for summary.json and the log (a Trainer after its parts are built)."""
    from omni_ds.train.param_groups import count_params, module_of, optimizer_parameter_names
    cfg, counts = t.cfg, count_params(t.model)
    shapes = {n: (getattr(p, "ds_numel", None) or p.numel()) for n, p in t.engine.module.named_parameters()}
    opt_numel: dict = {}
    for n in optimizer_parameter_names(t.engine):
        opt_numel[module_of(n)] = opt_numel.get(module_of(n), 0) + shapes[n]
    steps_per_epoch = t.stream.steps_in_epoch(0)
    info = {"config": cfg.to_dict(), "ds_config": t.ds, "world_size": t.world, "micro_batch": t.micro,
            "gradient_accumulation_steps": t.gas, "global_batch": t.global_batch,
            "train_samples": len(t.train_set), "skipped_records": t.train_set.n_skipped,
            "steps_per_epoch": steps_per_epoch, "total_steps": t.total_steps, "warmup_steps": t.n_warmup,
            "params": counts, "zero_stage": zero_stage(t.ds),
            "param_groups": {g["name"]: {"lr": g["lr"], "weight_decay": g["weight_decay"],
                                         "tensors": len(g["params"])} for g in t.groups},
            "optimizer_state_params": opt_numel,          # read back from the engine's optimizer
            "param_dtypes": {part: sorted(d) for part, d in parameter_dtypes(t.engine.module).items()},
            "resumed_from": str(t.resumed_from) if t.resumed_from is not None else None,
            "memory_check_fits": t.memory_check_fits}     # None: no device memory known (rank 0 only)
    info["data"] = {name: _report_of(d).counts() for name, d in (("train", t.train_set), ("val", t.val_set))
                    if d is not None and _report_of(d) is not None}
    if t.cache_info is not None:
        info["hidden_cache"] = t.cache_info
    if cfg.lora.enabled:
        from omni_ds.train.lora import describe
        info["lora"] = describe(cfg)
    t.log(f"world {t.world}, micro {t.micro} x GAS {t.gas} = global batch {t.global_batch}; "
          f"{len(t.train_set)} samples, {steps_per_epoch} steps/epoch, {t.total_steps} steps, {t.n_warmup} warmup; "
          f"trainable {counts['trainable'] / 1e6:.2f} M of {counts['total'] / 1e6:.2f} M params; ZeRO-{zero_stage(t.ds)}")
    return info
