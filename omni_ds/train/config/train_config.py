"""TrainConfig: the run-wide settings and one typed section per concern (sections.py)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from omni_ds.train.config.checks import ConfigError, bad, check_omni_overrides, check_section
from omni_ds.train.config.sections import (SECTIONS, BatchSection, CheckpointSection, DataSection,
                                           DebugSection, EvalSection, LogSection, LoraSection, ModelSection,
                                           OptimSection)


@dataclass
class TrainConfig:
    """What one run is: its stage, precision and output folder, and a section per concern."""
    stage: Literal[1, 2] = 1
    """1: projector + LLM on text loss (encoder frozen); 2: speech decoder only on CTC loss."""
    output_dir: str = "runs/stage1"
    """Checkpoints, logs, summary.json and final/ go here."""
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"
    """Every parameter, trainable and frozen, in this precision; fp16 uses dynamic loss scaling."""
    seed: int = 42
    """Python, NumPy and torch seeds, and the data order (with the epoch)."""
    dist_timeout_minutes: float = 60
    """How long a collective may wait for a slow rank before the run fails, and how long a rank
    may be silent (no heartbeat: stopped, frozen) before the job ends naming it (exit 3;
    omni_ds.train.stall_watch). Fractions of a minute are allowed."""
    model: ModelSection = field(default_factory=ModelSection)
    lora: LoraSection = field(default_factory=LoraSection)
    data: DataSection = field(default_factory=DataSection)
    batch: BatchSection = field(default_factory=BatchSection)
    optim: OptimSection = field(default_factory=OptimSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    eval: EvalSection = field(default_factory=EvalSection)
    log: LogSection = field(default_factory=LogSection)
    debug: DebugSection = field(default_factory=DebugSection)

    RANGES = {"dist_timeout_minutes": (lambda v: v > 0, "must be > 0"),
              "output_dir": (lambda v: bool(v.strip()), "must name a folder (not empty)")}

    def validate(self) -> "TrainConfig":
        check_section("", self)
        for name in SECTIONS:
            check_section(name, getattr(self, name))
        check_omni_overrides(self.model.omni)
        self._check_rules()
        return self

    def _check_rules(self) -> None:
        """What no single field can say: stage rules and keys that need each other."""
        m, d = self.model, self.data
        if self.stage == 1 and m.init_from is None and (not m.whisper_path or not m.llm_path):
            raise ConfigError("stage 1 needs either model.init_from (a LLaMA-Omni folder) or both "
                              f"model.whisper_path and model.llm_path (got whisper_path={m.whisper_path!r}, "
                              f"llm_path={m.llm_path!r})")
        if self.stage == 2 and m.init_from is None:
            bad("model.init_from", None, "stage 2 starts from a LLaMA-Omni folder (stage 1's output_dir/final)")
        if d.cache_hidden_states and self.stage != 2:
            bad("data.cache_hidden_states", True, "is a stage 2 option (the LLM trains in stage 1)")
        if self.stage == 2 and d.supervise_turns != "all":
            bad("data.supervise_turns", d.supervise_turns, 'is a stage 1 option (stage 2 trains on every answer: "all")')
        if self.stage == 2 and m.freeze_backbone:
            bad("model.freeze_backbone", True, "is a stage 1 option (stage 2 always trains the decoder only)")
        if self.lora.enabled:
            self._check_lora()
        elif self.lora.load_in_4bit:
            bad("lora.load_in_4bit", True, "needs lora.rank (QLoRA trains LoRA adapters on the 4-bit base)")
        if not d.train_manifest:
            bad("data.train_manifest", d.train_manifest, "a manifest path is required")
        if self.optim.max_steps is None and not self.optim.num_train_epochs > 0:
            bad("optim.num_train_epochs", self.optim.num_train_epochs, "must be > 0 when optim.max_steps is null")
        if self.eval.vocoder:
            self._check_eval_vocoder()
        if self.batch.batching == "token_budget" and not self.batch.max_tokens_per_batch:
            bad("batch.max_tokens_per_batch", self.batch.max_tokens_per_batch,
                'batch.batching "token_budget" needs a positive max_tokens_per_batch')

    def _check_eval_vocoder(self) -> None:
        """What eval.vocoder needs besides a usable folder (that is checked at start-up)."""
        e = self.eval
        if self.stage != 2:
            bad("eval.vocoder", e.vocoder, "is a stage 2 option (stage 1 trains no speech decoder)")
        if not self.data.val_manifest:
            bad("eval.vocoder", e.vocoder, "vocodes sample answers of the validation set: set data.val_manifest")
        if e.sample_answers == 0:
            bad("eval.vocoder", e.vocoder, "vocodes sample answers: eval.sample_answers must be >= 1")

    def _check_lora(self) -> None:
        if self.stage != 1:
            bad("lora.rank", self.lora.rank, "is a stage 1 option (stage 2 trains the speech decoder only)")
        if self.model.freeze_backbone:
            bad("lora.rank", self.lora.rank, "and model.freeze_backbone exclude each other (LoRA trains "
                "adapters on the LLM; freeze_backbone trains none of it)")

    def to_dict(self) -> dict:
        """The nested form, as a config file writes it (and build_config reads it back)."""
        return dataclasses.asdict(self)

    def batch_geometry(self, world_size: int) -> tuple[int, int, int]:
        """(micro batch per rank, gradient accumulation steps, global batch) for this world size."""
        b = self.batch
        micro = b.per_device_train_batch_size
        if b.global_batch_size is None:
            return micro, b.gradient_accumulation_steps, micro * b.gradient_accumulation_steps * world_size
        per_pass = micro * world_size
        if b.global_batch_size % per_pass:
            raise ConfigError(
                f"config key 'batch.global_batch_size' = {b.global_batch_size}: not divisible by "
                f"batch.per_device_train_batch_size ({micro}) x world size ({world_size}) = {per_pass}; "
                f"choose a global batch that is a multiple of {per_pass} or change the micro batch")
        return micro, b.global_batch_size // per_pass, b.global_batch_size

    def prompt_builder(self, tokenizer):
        from omni_ds.constants import DEFAULT_INSTRUCTION, SYSTEM_PROMPT
        from omni_ds.data.prompt import PromptBuilder
        d = self.data
        return PromptBuilder(tokenizer, template=d.prompt_template,
                             system_prompt=SYSTEM_PROMPT if d.system_prompt is None else d.system_prompt,
                             instruction=DEFAULT_INSTRUCTION if d.instruction is None else d.instruction,
                             model_max_length=d.model_max_length)

