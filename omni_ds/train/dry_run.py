"""`--dry-run`: validate config, DeepSpeed config, data and checkpoints, print the plan (world
size, batch geometry, steps, warmup, parameter counts, per-GPU memory estimate) — no training,
no weights loaded (parameter counts come from config.json files on the meta device).
Exit status 0 when everything checks out and the memory estimate fits, 1 otherwise."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import torch

from omni_ds.train.config import ConfigError, TrainConfig
from omni_ds.train.ds_config import fill_ds_config, offload_optimizer, offload_params, zero_stage
from omni_ds.train import memory as mem
from omni_ds.train.parts import effective_omni_config


def _n(x: float) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if x >= div:
            return f"{x / div:.2f} {unit}"
    return str(int(x))


def _llm_config(cfg: TrainConfig):
    from transformers import AutoConfig
    if cfg.model.init_from:
        raw = json.loads((Path(cfg.model.init_from) / "config.json").read_text())
        llm_type = raw.get("omni_ds", {}).get("llm_model_type", "llama")
        keep = {k: v for k, v in raw.items() if not k.startswith(("speech_", "ctc_", "omni_ds", "unit_"))
                and k not in ("model_type", "architectures", "auto_map")}
        return AutoConfig.for_model(llm_type, **keep), raw
    return AutoConfig.from_pretrained(cfg.model.llm_path), None


def _whisper_dims(cfg: TrainConfig, omni_raw: Optional[dict]) -> dict:
    if cfg.model.whisper_path and (Path(cfg.model.whisper_path) / "config.json").is_file():
        w = json.loads((Path(cfg.model.whisper_path) / "config.json").read_text())
        return {k: w[k] for k in ("d_model", "encoder_layers", "encoder_ffn_dim", "num_mel_bins",
                                  "max_source_positions")}
    if omni_raw and "speech_encoder_config" in omni_raw.get("omni_ds", {}):
        w = omni_raw["omni_ds"]["speech_encoder_config"]
        return {k: w[k] for k in ("d_model", "encoder_layers", "encoder_ffn_dim", "num_mel_bins",
                                  "max_source_positions")}
    pt = Path(cfg.model.whisper_path) if cfg.model.whisper_path else None
    if pt is not None and pt.suffix == ".pt" and pt.is_file():
        # openai-whisper checkpoints state their dims; mmap reads no weights
        d = torch.load(str(pt), map_location="cpu", weights_only=True, mmap=True).get("dims") or {}
        if all(k in d for k in ("n_audio_state", "n_audio_layer", "n_mels", "n_audio_ctx")):
            return {"d_model": d["n_audio_state"], "encoder_layers": d["n_audio_layer"],
                    "encoder_ffn_dim": 4 * d["n_audio_state"], "num_mel_bins": d["n_mels"],
                    "max_source_positions": d["n_audio_ctx"]}
    return dict(mem.WHISPER_LARGE_V3)      # no readable dims (e.g. a released folder's .pt): large-v3


def model_shape(cfg: TrainConfig) -> tuple[mem.ModelShape, int]:
    """Exact LLM counts from a meta-device instantiation; speech parts from their formulas."""
    from transformers import AutoModelForCausalLM
    from omni_ds.model.omni_config import parse_ctc_decoder_config
    llm_cfg, omni_raw = _llm_config(cfg)
    with torch.device("meta"):
        llm = AutoModelForCausalLM.from_config(llm_cfg)
    llm_params = sum(p.numel() for p in llm.parameters())
    largest = max(p.numel() for p in llm.parameters())
    w = _whisper_dims(cfg, omni_raw)
    omni = effective_omni_config(cfg)               # the run's own: init_from's config + overrides
    proj_h, k = omni.speech_projector_hidden_size, omni.speech_encoder_ds_rate
    layers, width, heads, ffn = parse_ctc_decoder_config(omni.ctc_decoder_config)
    shape = mem.ModelShape(
        llm_params=llm_params, llm_largest_layer=largest, hidden_size=llm_cfg.hidden_size,
        intermediate_size=getattr(llm_cfg, "intermediate_size", 4 * llm_cfg.hidden_size),
        num_layers=llm_cfg.num_hidden_layers, vocab_size=llm_cfg.vocab_size,
        encoder_params=mem.whisper_encoder_param_count(**w),
        projector_params=mem.projector_param_count(w["d_model"], llm_cfg.hidden_size, k, proj_h),
        decoder_params=mem.ctc_decoder_param_count(llm_cfg.hidden_size, layers, width, heads, ffn),
        decoder_hidden=width, decoder_intermediate=ffn, decoder_layers=layers)
    if cfg.lora.enabled:
        shape.lora_params, shape.lora_rank = _lora_params(llm, cfg), cfg.lora.rank
    return shape, w["d_model"]


def _lora_params(llm, cfg: TrainConfig) -> int:
    """The adapters' parameter count: peft adapts the linear layers whose name ends in a target."""
    targets = set(cfg.lora.target_modules)
    linears = [(m.in_features, m.out_features) for name, m in llm.named_modules()
               if isinstance(m, torch.nn.Linear) and name.split(".")[-1] in targets]
    if not linears:
        raise ConfigError(f"config key 'lora.target_modules' = {cfg.lora.target_modules!r}: no linear layer "
                          f"of the LLM has such a name")
    return mem.lora_param_count(linears, cfg.lora.rank)


def dry_run(cfg: TrainConfig, ds_path: str, ds_raw: dict, world_size: Optional[int],
            gpu: Optional[str], gpu_gib: Optional[float]) -> int:
    """Validate config, data and checkpoints; print the plan and the memory verdict (rank 0).
    0 when the run would start and fit, 1 otherwise (each problem printed)."""
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    return DryRun(cfg, world_size or int(os.environ.get("WORLD_SIZE", "1"))).run(ds_path, ds_raw, gpu, gpu_gib)


class DryRun:
    """The dry run's sections in order; each reports and collects problems, none stops the rest
    (except a batch geometry that cannot be)."""

    def __init__(self, cfg: TrainConfig, world: int, out=print):
        self.cfg, self.world, self.out = cfg, world, out
        self.problems: list[str] = []
        self.shape, self.seq_len, self.answer_len = None, 415, None
        self.train_data = None          # (usable samples, manifest sha256) for the resume check

    def run(self, ds_path: str, ds_raw: dict, gpu: Optional[str], gpu_gib: Optional[float]) -> int:
        self.out(f"omni_ds dry run: stage {self.cfg.stage}, config OK, --ds {ds_path}")
        ds = self.batch_and_deepspeed(ds_path, ds_raw)
        if ds is None:
            return 1
        self.model()
        self.eval_vocoder()
        self.data()
        self.checkpoints()
        fits = True
        if self.shape is not None:
            device = device_memory(gpu, gpu_gib, self.problems)
            run = run_settings(self.cfg, self.world, self.micro, self.seq_len, self.answer_len)
            fits = memory_report(self.cfg, ds, self.shape, run, device, self.out)
        for p in self.problems:
            self.out(f"  ERROR {p}")
        ok = not self.problems and fits
        self.out("dry run: OK" if ok else "dry run: NOT READY")
        return 0 if ok else 1

    def batch_and_deepspeed(self, ds_path: str, ds_raw: dict) -> Optional[dict]:
        cfg, world = self.cfg, self.world
        try:
            self.micro, self.gas, self.global_batch = cfg.batch_geometry(world)
            ds = fill_ds_config(ds_raw, cfg, world, source=f"--ds {ds_path}")
        except ConfigError as e:
            self.out(f"  ERROR {e}")
            return None
        self.out(f"  world size {world}: micro batch {self.micro} x GAS {self.gas} x {world} ranks = "
                 f"global batch {self.global_batch}")
        self.out(f"  DeepSpeed: ZeRO-{zero_stage(ds)}, precision {cfg.precision}, clipping {cfg.optim.max_grad_norm}, "
                 f"optimizer offload {offload_optimizer(ds)}, param offload {offload_params(ds)}")
        return ds

    def model(self) -> None:
        """Model sizes from config.json files only (no weights)."""
        cfg = self.cfg
        for key in (("init_from",) if cfg.model.init_from else ("whisper_path", "llm_path")):
            path = getattr(cfg.model, key)
            if not Path(path).exists():
                self.problems.append(f"config key 'model.{key}' = {path!r}: no such file or folder")
        try:
            shape, _ = model_shape(cfg)
        except Exception as e:                      # noqa: BLE001 - report, keep validating the rest
            self.problems.append(f"model config: {e}")
            return
        self.shape = shape
        trainable = (shape.projector_params + (0 if cfg.model.freeze_backbone else shape.llm_params)
                     if cfg.stage == 1 else shape.decoder_params)
        if cfg.lora.enabled:
            trainable = shape.projector_params + shape.lora_params
            self.out(f"  LoRA r={cfg.lora.rank} (alpha {cfg.lora.scale_alpha():g}) on {', '.join(cfg.lora.target_modules)}: "
                     f"{_n(shape.lora_params)} adapter params; the LLM's {_n(shape.llm_params)} frozen"
                     + (" in 4-bit NF4 (QLoRA)" if cfg.lora.load_in_4bit else ""))
        self.out(f"  model: LLM {_n(shape.llm_params)} (hidden {shape.hidden_size}, {shape.num_layers} layers, "
                 f"vocab {shape.vocab_size}), encoder {_n(shape.encoder_params)} (frozen), projector "
                 f"{_n(shape.projector_params)}, speech decoder {_n(shape.decoder_params)}; "
                 f"trainable in stage {cfg.stage}: {_n(trainable)} params")

    def eval_vocoder(self) -> None:
        """eval.vocoder loaded and matched against the run's unit vocabulary, as the run will."""
        if not self.cfg.eval.vocoder:
            return
        from omni_ds.train.sample_answers import load_eval_vocoder
        try:
            vocoder = load_eval_vocoder(self.cfg)
        except ConfigError as e:
            self.problems.append(str(e))
            return
        self.out(f"  eval.vocoder: {self.cfg.eval.vocoder}: {vocoder.cfg['num_embeddings']} units (the model's), "
                 f"{vocoder.sampling_rate} Hz; {self.cfg.eval.sample_answers} sample answers vocoded per evaluation")

    def data(self) -> None:
        """The same validation and batching the run uses (cached audio/token index)."""
        from omni_ds.data.manifest import load_manifest
        from omni_ds.data.validate import validate_manifest
        from omni_ds.model.checkpoint import load_tokenizer
        from omni_ds.train.data import validation_config
        cfg = self.cfg
        try:
            tok = load_tokenizer(cfg.model.tokenizer_path or cfg.model.init_from or cfg.model.llm_path)
            omni = effective_omni_config(cfg)           # the run's encoder mode and rate, not the defaults
            vcfg = validation_config(cfg, omni)
            for key in ("train_manifest", "val_manifest"):
                path = getattr(cfg.data, key)
                if not path:
                    continue
                if not Path(path).is_file():
                    self.problems.append(f"config key 'data.{key}' = {path!r}: no such file")
                    continue
                manifest = load_manifest(path, cfg.data.audio_root)
                report = validate_manifest(manifest, vcfg, cfg.prompt_builder(tok))
                self.report_manifest(key, path, report)
                if key == "train_manifest":
                    self.train_data = (len(report.good), manifest.digest)
        except Exception as e:                      # noqa: BLE001 - report, keep validating the rest
            self.problems.append(f"data: {type(e).__name__}: {e}")

    def report_manifest(self, key: str, path: str, report) -> None:
        cfg = self.cfg
        self.out(f"  {key}: {path}: {report.summary()}")
        for b in report.bad:
            self.out(f"    bad record {b.id} (index {b.index}): {b.reason}")
        if report.bad and cfg.data.on_bad == "error":
            self.problems.append(f"{key}: {len(report.bad)} bad records and data.on_bad = 'error'")
        if cfg.stage == 2 and cfg.data.cache_hidden_states and len(report.good) and self.shape is not None:
            self.cache_cost(report)
        if key == "train_manifest" and len(report.good):
            self.schedule(report)
        elif key == "train_manifest":
            self.problems.append(f"data.train_manifest {path}: no usable records ({report.summary()})")

    def cache_cost(self, report) -> None:
        """One cached state per supervised response token (the answer ids incl. its end-of-turn)."""
        cfg, width = self.cfg, self.shape.hidden_size
        states = report.n_answer[report.good].clip(min=0).astype("int64")
        per = 2 if cfg.data.cache_dtype == "bf16" else 4
        disk = float(states.sum()) * width * per
        self.out(f"    hidden-state cache ({cfg.data.cache_dtype}): ~{states.mean():.0f} states x {width} x {per} B = "
                 f"{disk / len(states) / 1e6:.3f} MB/sample, {disk / 1e9:.3f} GB under "
                 f"{cfg.data.cache_dir or Path(cfg.output_dir) / 'hidden_cache'}")

    def schedule(self, report) -> None:
        from omni_ds.data.sampler import Batching, DistributedBatchSampler
        from omni_ds.train.schedule import plan_steps
        cfg = self.cfg
        lengths = report.lengths[report.good]
        self.seq_len = int(lengths.max())
        self.answer_len = int(report.n_answer[report.good].max())    # what reaches the LM head
        self.out(f"    LLM positions per sample: mean {lengths.mean():.0f}, max {self.seq_len} "
                 "(memory is planned for the max)")
        sampler = DistributedBatchSampler(lengths, self.micro, self.world, 0, cfg.seed,
                                          Batching(cfg.batch.batching, self.gas, max_tokens=cfg.batch.max_tokens_per_batch))
        steps = plan_steps(sampler, self.gas, cfg.optim)
        if steps.total < 1 or steps.steps_per_epoch < 1:
            self.problems.append(f"{len(report.good)} usable samples make no optimizer step of "
                                 f"global batch {self.global_batch}")
        o = cfg.optim
        self.out(f"  schedule: {steps.steps_per_epoch} steps/epoch, {steps.total} optimizer steps "
                 f"({'optim.max_steps' if o.max_steps else f'{o.num_train_epochs:g} epochs'}), "
                 f"{steps.warmup} warmup, {o.lr_scheduler_type}, peak lr {o.learning_rate:g} "
                 f"(projector {o.projector_lr():g})")

    def checkpoints(self) -> None:
        from omni_ds.train.checkpointing import CheckpointManager
        cfg = self.cfg
        try:
            where = CheckpointManager(cfg.output_dir, cfg.checkpoint.keep_last, 0, 0, lambda: None).resolve(cfg.checkpoint.resume)
        except (OSError, RuntimeError) as e:
            self.problems.append(f"checkpoints: {e}")
            return
        unwritable = _unwritable(Path(cfg.output_dir))
        if unwritable:
            self.problems.append(f"output_dir {cfg.output_dir}: {unwritable}")
        from omni_ds.train.run_lock import held_by_other
        holder = held_by_other(cfg.output_dir)
        if holder:
            self.problems.append(f"output_dir {cfg.output_dir} is in use by another run ({holder})")
        self.out(f"  checkpoints: {'resume from ' + str(where) if where else 'fresh start'} "
                 f"(output_dir {cfg.output_dir}, every {cfg.checkpoint.every_steps or 'end only'} steps, keep "
                 f"{cfg.checkpoint.keep_last})")
        if where is not None:
            from omni_ds.train.checkpoint_files import check_checkpoint
            try:                            # every shard there and readable, at this world size
                check_checkpoint(where, CheckpointManager.read_state(where), self.world)
            except ConfigError as e:
                self.problems.append(str(e))
        if where is not None and self.train_data is not None:
            self.resume_check(where)

    def resume_check(self, where: Path) -> None:
        """What the run would refuse at resume (omni_ds.train.resume_check), said now."""
        from omni_ds.train.checkpointing import CheckpointManager
        from omni_ds.train.resume_check import check_resume, run_identity
        identity = run_identity(self.cfg, self.global_batch, *self.train_data)
        try:
            for note in check_resume(CheckpointManager.read_state(where), identity, self.cfg, where):
                self.out(f"  {note}")
        except ConfigError as e:
            self.problems.append(str(e))


def _unwritable(folder: Path) -> Optional[str]:
    """Why the run could not write into `folder` (created by the run if missing), or None."""
    if folder.exists() and not folder.is_dir():
        return "is a file, not a folder"
    existing = next(p for p in [folder, *folder.absolute().parents] if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        return f"cannot be written ({existing} is not writable)"
    return None


def device_memory(gpu: Optional[str], gpu_gib: Optional[float], problems: list) -> tuple[Optional[float], str]:
    """(GiB, name) of the device to plan for: --gpu-memory-gib, --gpu NAME, else the CUDA device
    at hand, else (None, "GPU"): no comparison possible."""
    gpu_mem = gpu_gib or (mem.GPU_MEMORY_GIB.get(gpu.upper()) if gpu else None)
    if gpu and gpu_mem is None:
        problems.append(f"--gpu {gpu!r}: unknown; known: {sorted(mem.GPU_MEMORY_GIB)} (or give --gpu-memory-gib)")
    name = gpu or "GPU"
    if gpu_mem is None and torch.cuda.is_available():
        gpu_mem = torch.cuda.get_device_properties(0).total_memory / 2 ** 30
        name = torch.cuda.get_device_name(0)
    return gpu_mem, name


def _ds_config_for(plan) -> str:
    if plan.offload_params:
        name = "zero3_offload.json"
    elif plan.zero_stage == 2:
        name = "zero2_offload.json" if plan.offload_optimizer else "zero2.json"
    else:
        name = "zero3.json + offload_optimizer" if plan.offload_optimizer else "zero3.json"
    return f"ds_configs/{name}" + (", gradient_checkpointing true" if plan.gradient_checkpointing else "")


def run_settings(cfg: TrainConfig, world: int, micro: int, seq_len: int, answer_len: Optional[int] = None):
    """The memory model's RunSettings of a config; `answer_len` None: every position reaches the
    LM head (an upper bound)."""
    return mem.RunSettings(cfg.stage, world, micro, seq_len, cfg.precision, cfg.model.freeze_backbone,
                           lora=cfg.lora.enabled, quantized_base=cfg.lora.load_in_4bit, answer_len=answer_len)


def memory_report(cfg: TrainConfig, ds: dict, shape, run: mem.RunSettings,
                  device: tuple[Optional[float], str], out=print) -> bool:
    """Print the per-GPU memory estimate, the verdict and, when it does not fit, what fits
    instead; True when it fits (or nothing is known to compare with). `device`: (GiB, name)."""
    gpu_mem, name = device
    plan = mem.estimate(shape, run, mem.MemorySetup(zero_stage(ds), cfg.model.gradient_checkpointing,
                                                     offload_optimizer(ds), offload_params(ds)))
    out(f"  memory per GPU (sequence {run.seq_len} LLM positions): {plan.describe()}")
    out(f"  {mem.verdict(plan, gpu_mem, name)}")
    if gpu_mem is None or plan.total_gib <= gpu_mem:
        return True
    alts = mem.alternatives(shape, run, gpu_mem)
    if alts:
        out("  what fits instead:")
        for a in alts:
            out(f"    - {a.describe().splitlines()[0]}: {a.total_gib:.1f} GiB ({_ds_config_for(a)})")
    else:
        out("  nothing fits at this micro batch on this many GPUs: add GPUs or lower the micro batch")
    return False


def run_memory_check(cfg: TrainConfig, ds: dict, shape, world: int, micro: int, longest: int,
                     device: tuple[Optional[float], str], out=print) -> Optional[bool]:
    """The dry run's memory verdict at the start of a real run (rank 0), against the device at
    hand or --gpu / --gpu-memory-gib: a recipe that will not fit is named before it runs out of
    memory minutes in. It warns, not refuses: the estimate is a model. `shape`: model_shape(cfg),
    taken before the model is built (under ZeRO-3, transformers would partition even the
    meta-device instance). `device`: device_memory()'s (GiB, name). None: nothing to compare."""
    gpu_mem, name = device
    if gpu_mem is None or shape is None:
        out("  memory check: no CUDA device and no --gpu / --gpu-memory-gib: skipped")
        return None
    fits = memory_report(cfg, ds, shape, run_settings(cfg, world, micro, longest), device, out)
    if not fits:
        out(f"  WARNING: by this estimate the run does not fit {name}; it goes on, but expect an "
            "out-of-memory error: change the recipe as listed above")
    return fits
