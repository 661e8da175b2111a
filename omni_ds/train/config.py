"""The training configuration: one typed, validated dataclass for both stages.

A run is described by a JSON file (`--config`) plus `--set key=value` overrides. Values given to
`--set` are parsed as JSON when they parse (`--set learning_rate=1e-4`, `--set report_to='["wandb"]'`)
and kept as strings otherwise (`--set output_dir=runs/a`). Keys of the `omni` section (the model's
speech-side settings, `OmniConfig`) are addressed with a dot: `--set omni.encoder_mode=trimmed`.
Unknown keys are an error that names them; every value is checked when the config is built.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Optional


class ConfigError(ValueError):
    """A training-config problem; the message names the key, the value and what is allowed."""


@dataclass
class TrainConfig:
    # ---- what to train -------------------------------------------------------------------
    stage: int = 1
    """1: projector + LLM on text loss (encoder frozen); 2: speech decoder only on CTC loss."""
    whisper_path: Optional[str] = None
    """Local HF Whisper folder (stage 1 start from parts)."""
    llm_path: Optional[str] = None
    """Local HF causal-LM folder (stage 1 start from parts)."""
    tokenizer_path: Optional[str] = None
    """Tokenizer folder; defaults to llm_path."""
    init_from: Optional[str] = None
    """A LLaMA-Omni-layout folder to start from instead of parts (stage 2: stage 1's final folder)."""
    omni: dict = field(default_factory=dict)
    """OmniConfig fields (encoder_mode, projector / CTC settings); `--set omni.KEY=VALUE`."""
    attn_implementation: str = "sdpa"
    freeze_backbone: bool = False
    """Stage 1 only: train the speech projector alone (LLM frozen)."""
    gradient_checkpointing: bool = False

    # ---- data ----------------------------------------------------------------------------
    train_manifest: Optional[str] = None
    val_manifest: Optional[str] = None
    max_speech_seconds: Optional[float] = None
    """None: instructions over 30 s are cut to 30 s (the official behaviour); a number: longer
    instructions are bad records."""
    prompt_template: str = "llama3"
    """"llama3" (REFERENCE.md's Llama-3 chat format) or "tokenizer" (the LLM tokenizer's own chat
    template, e.g. ChatML for Qwen2.5 / SmolLM2)."""
    system_prompt: Optional[str] = None
    """None: LLaMA-Omni's system prompt (omni_ds.constants.SYSTEM_PROMPT)."""
    instruction: Optional[str] = None
    """Text after <speech> in the user turn; None: omni_ds.constants.DEFAULT_INSTRUCTION."""
    model_max_length: int = 2048
    """Longest LLM sequence (tokens, the speech placeholder counted once); longer records are skipped."""
    bad_records: str = "skip"
    """"skip" (report each and count them) or "stop" (refuse to train)."""
    batching: str = "random"
    """"random", "length_grouped" (LLaVA-style megabatches sorted by length) or "token_budget"."""
    max_tokens_per_batch: Optional[int] = None
    """token_budget batching: micro-batch size x longest LLM length stays within this."""
    num_workers: int = 0
    cache_in_memory: bool = False
    """Keep loaded samples (log-mel, ids) in RAM after the first epoch: small data sets only."""
    cache_hidden_states: bool = False
    """Stage 2 only: compute the frozen LLM's response states of the train (and val) manifest once
    before training (rank-sharded, omni_ds.train.hidden_cache), then train the decoder on them
    alone; reruns with the same model, manifest and settings reuse the cache. Built in batches of
    per_device_eval_batch_size. After the build the frozen encoder, projector and LLM move to CPU
    memory (ZeRO-0/1/2) or stay partitioned (ZeRO-3); training steps never run them."""
    cache_dir: Optional[str] = None
    """Where the hidden-state cache lives; None: output_dir/hidden_cache. Share it between runs."""
    cache_dtype: str = "bf16"
    """"bf16" (half the disk) or "fp32" (bit-exact with uncached fp32 training)."""

    # ---- batch and schedule --------------------------------------------------------------
    per_device_train_batch_size: int = 1
    global_batch_size: Optional[int] = None
    """When set, gradient_accumulation_steps = global / (per_device * world size)."""
    gradient_accumulation_steps: int = 1
    num_train_epochs: float = 3.0
    max_steps: Optional[int] = None
    """Optimizer steps; overrides num_train_epochs when set."""
    learning_rate: float = 2e-5
    speech_projector_lr: Optional[float] = None
    """Projector lr; falls back to learning_rate."""
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = 0.03
    min_lr_ratio: float = 0.0
    max_grad_norm: float = 1.0
    precision: str = "bf16"
    """"bf16", "fp16" (dynamic loss scaling) or "fp32"."""
    seed: int = 42

    # ---- checkpoints ---------------------------------------------------------------------
    output_dir: str = "runs/stage1"
    save_steps: int = 500
    save_total_limit: int = 2
    """Keep this many DeepSpeed checkpoints (oldest deleted after a newer one is complete)."""
    resume: str = "auto"
    """"auto" (from output_dir/checkpoints/latest if present), "never", or a checkpoint path."""
    save_final: bool = True

    # ---- evaluation ----------------------------------------------------------------------
    eval_steps: int = 0
    """Evaluate on val_manifest every N optimizer steps (0: only at the end, if val_manifest)."""
    per_device_eval_batch_size: int = 1
    eval_max_samples: Optional[int] = None

    # ---- observability -------------------------------------------------------------------
    logging_steps: int = 1
    report_to: list = field(default_factory=lambda: ["tensorboard"])
    """Any of "tensorboard", "wandb"; [] for none."""
    run_name: Optional[str] = None
    wandb_project: str = "omni_ds"
    peak_tflops: Optional[float] = None
    """Per-device peak dense TFLOPS for MFU; guessed from the device name when None."""
    progress_bar: bool = True
    stop_on_nonfinite: bool = True
    dist_timeout_minutes: int = 60
    trace_samples: bool = False
    """Write output_dir/trace/rank{r}.jsonl: per step, the loss and the sample indices this rank
    trained on (resume audits: no sample seen twice or skipped)."""
    crash_at_step: Optional[int] = None
    """Fault injection for tests: the process kills itself (SIGKILL) at this step; on a save step
    it dies after the DeepSpeed files are written and before the checkpoint is committed."""

    # ------------------------------------------------------------------------------------
    def validate(self) -> "TrainConfig":
        self._check_types()
        self._check_choices()
        self._check_ranges()
        self._check_stage_rules()
        return self

    def _bad(self, key: str, allowed: str):
        raise ConfigError(f"config key {key!r} = {getattr(self, key)!r}: {allowed}")

    def _check_types(self) -> None:
        for name, f in self.__dataclass_fields__.items():
            v = getattr(self, name)
            want = _base_type(f.type)
            if v is None:
                if not _optional(f.type):
                    self._bad(name, "must not be null")
                continue
            if want is float and isinstance(v, int) and not isinstance(v, bool):
                setattr(self, name, float(v))
                v = float(v)
            message = _type_error(want, v)
            if message:
                self._bad(name, message)
            if want is float and not math.isfinite(v):
                self._bad(name, "must be a finite number")

    def _check_choices(self) -> None:
        for key, allowed in _CHOICES.items():
            if getattr(self, key) not in allowed:
                self._bad(key, "allowed: " + ", ".join(f'"{a}"' if isinstance(a, str) else str(a) for a in allowed))
        for r in self.report_to:
            if r not in ("tensorboard", "wandb"):
                raise ConfigError(f"config key 'report_to' = {self.report_to!r}: "
                                  f"unknown entry {r!r}; allowed: \"tensorboard\", \"wandb\"")
        if self.resume not in ("auto", "never") and not self.resume:
            self._bad("resume", 'allowed: "auto", "never" or a checkpoint path')

    def _check_ranges(self) -> None:
        for k in ("per_device_train_batch_size", "gradient_accumulation_steps",
                  "per_device_eval_batch_size", "logging_steps", "model_max_length"):
            if getattr(self, k) < 1:
                self._bad(k, "must be >= 1")
        for k in ("save_steps", "eval_steps", "num_workers", "save_total_limit"):
            if getattr(self, k) < 0:
                self._bad(k, "must be >= 0 (0 disables)")
        for key, (ok, allowed) in _RANGES.items():
            v = getattr(self, key)
            if v is not None and not ok(v):
                self._bad(key, allowed)
        if self.max_steps is None and not self.num_train_epochs > 0:
            self._bad("num_train_epochs", "must be > 0 when max_steps is null")
        if self.batching == "token_budget" and not self.max_tokens_per_batch:
            self._bad("max_tokens_per_batch", 'batching "token_budget" needs a positive max_tokens_per_batch')

    def _check_stage_rules(self) -> None:
        if self.stage == 1 and self.init_from is None:
            if not self.whisper_path or not self.llm_path:
                raise ConfigError("stage 1 needs either init_from (a LLaMA-Omni folder) or both "
                                  f"whisper_path and llm_path (got whisper_path={self.whisper_path!r}, "
                                  f"llm_path={self.llm_path!r})")
        if self.stage == 2 and self.init_from is None:
            self._bad("init_from", "stage 2 starts from a LLaMA-Omni folder (stage 1's output_dir/final)")
        if self.cache_hidden_states and self.stage != 2:
            self._bad("cache_hidden_states", "is a stage 2 option (the LLM trains in stage 1)")
        if self.stage == 2 and self.freeze_backbone:
            self._bad("freeze_backbone", "is a stage 1 option (stage 2 always trains the decoder only)")
        if not self.train_manifest:
            self._bad("train_manifest", "a manifest path is required")

    # ------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def prompt_builder(self, tokenizer):
        from omni_ds.constants import DEFAULT_INSTRUCTION, SYSTEM_PROMPT
        from omni_ds.data.prompt import PromptBuilder
        return PromptBuilder(tokenizer, template=self.prompt_template,
                             system_prompt=SYSTEM_PROMPT if self.system_prompt is None else self.system_prompt,
                             instruction=DEFAULT_INSTRUCTION if self.instruction is None else self.instruction,
                             model_max_length=self.model_max_length)

    def projector_lr(self) -> float:
        return self.speech_projector_lr if self.speech_projector_lr is not None else self.learning_rate

    def batch_geometry(self, world_size: int) -> tuple[int, int, int]:
        """(micro batch per rank, gradient accumulation steps, global batch) for this world size."""
        micro = self.per_device_train_batch_size
        if self.global_batch_size is None:
            gas = self.gradient_accumulation_steps
            return micro, gas, micro * gas * world_size
        per_pass = micro * world_size
        if self.global_batch_size % per_pass:
            raise ConfigError(
                f"config key 'global_batch_size' = {self.global_batch_size}: not divisible by "
                f"per_device_train_batch_size ({micro}) x world size ({world_size}) = {per_pass}; "
                f"choose a global batch that is a multiple of {per_pass} or change the micro batch")
        return micro, self.global_batch_size // per_pass, self.global_batch_size


_CHOICES = {"stage": (1, 2), "precision": ("bf16", "fp16", "fp32"),
            "lr_scheduler_type": ("cosine", "linear", "constant"), "prompt_template": ("llama3", "tokenizer"),
            "bad_records": ("skip", "stop"), "batching": ("random", "length_grouped", "token_budget"),
            "cache_dtype": ("bf16", "fp32")}
# key -> (accepts the value, what is allowed); None values are checked by _check_types
_RANGES = {
    "global_batch_size": (lambda v: v >= 1, "must be >= 1 or null"),
    "max_steps": (lambda v: v >= 1, "must be >= 1 or null (then num_train_epochs decides)"),
    "learning_rate": (lambda v: v > 0, "must be > 0"),
    "speech_projector_lr": (lambda v: v > 0, "must be > 0 or null (falls back to learning_rate)"),
    "adam_beta1": (lambda v: 0.0 <= v < 1.0, "must be in [0, 1)"),
    "adam_beta2": (lambda v: 0.0 <= v < 1.0, "must be in [0, 1)"),
    "adam_epsilon": (lambda v: v > 0, "must be > 0"),
    "warmup_ratio": (lambda v: 0.0 <= v < 1.0, "must be in [0, 1)"),
    "min_lr_ratio": (lambda v: 0.0 <= v <= 1.0, "must be in [0, 1]"),
    "weight_decay": (lambda v: v >= 0, "must be >= 0"),
    "max_grad_norm": (lambda v: v >= 0, "must be >= 0 (0 disables clipping)"),
    "max_speech_seconds": (lambda v: v > 0, "must be > 0 or null"),
    "dist_timeout_minutes": (lambda v: v >= 1, "must be >= 1"),
}


def _type_error(want: type, v) -> Optional[str]:
    if want is bool and not isinstance(v, bool):
        return "must be true or false"
    if want is int and (isinstance(v, bool) or not isinstance(v, int)):
        return "must be an integer"
    if want is float and not isinstance(v, float):
        return "must be a number"
    for ty, word in ((str, "a string"), (dict, "a JSON object"), (list, "a JSON list")):
        if want is ty and not isinstance(v, ty):
            return f"must be {word}"
    return None


def _base_type(t) -> type:
    s = str(t).replace("typing.", "")
    for name, ty in (("bool", bool), ("int", int), ("float", float), ("str", str),
                     ("dict", dict), ("list", list)):
        if s == name or s.startswith(f"Optional[{name}") or s == f"{name} | None":
            return ty
    return object


def _optional(t) -> bool:
    s = str(t)
    return "Optional" in s or "None" in s


def parse_value(text: str) -> Any:
    """`--set` value: JSON when it parses (numbers, true/false/null, lists, objects), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    out = dict(raw)
    out["omni"] = dict(out.get("omni") or {})
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, text = item.split("=", 1)
        key = key.strip()
        value = parse_value(text)
        if key.startswith("omni."):
            out["omni"][key[len("omni."):]] = value
        else:
            out[key] = value
    return out


def build_config(raw: dict, source: str = "<dict>") -> TrainConfig:
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(k for k in raw if k not in known and not k.startswith("_"))
    if unknown:
        raise ConfigError(f"{source}: unknown config key(s) {unknown}; known keys: {sorted(known)}")
    cfg = TrainConfig(**{k: v for k, v in raw.items() if k in known})
    try:
        return cfg.validate()
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def load_config(path: Optional[str], overrides: Optional[list[str]] = None) -> TrainConfig:
    """Read a JSON training config, apply `--set` overrides, validate. Keys starting with "_" are
    comments. Relative paths in the file stay relative to the working directory, as users type them."""
    raw: dict = {}
    if path is not None:
        if not os.path.isfile(path):
            raise ConfigError(f"--config {path!r}: no such file")
        try:
            with open(path) as f:
                raw = json.load(f)
        except json.JSONDecodeError as e:
            raise ConfigError(f"--config {path!r}: not valid JSON ({e})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"--config {path!r}: the top level must be a JSON object")
    src = path or "<defaults>"
    if overrides:
        src += " + --set " + " ".join(overrides)
    return build_config(apply_overrides(raw, overrides or []), src)
