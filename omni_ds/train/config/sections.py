"""The training config's sections: one typed dataclass per concern, a docstring per field.

Each field's type is its check: `Literal[...]` lists the allowed values, `Optional` allows null,
and `RANGES` (name -> (accepts, what is allowed)) bounds the numbers. `omni_ds.train.config.checks`
applies both to every section, so a message always names the dotted key, the value and what is
allowed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

Positive = (lambda v: v >= 1, "must be >= 1")
ZeroDisables = (lambda v: v >= 0, "must be >= 0 (0 disables)")
OpenUnit = (lambda v: 0.0 <= v < 1.0, "must be in [0, 1)")
# what a resume checks is unchanged (omni_ds.train.resume_check), by the names
# checkpoint.accept_changes takes
RESUME_ITEMS = ("seed", "train_manifest", "train_samples", "batching", "global_batch", "model")


@dataclass
class ModelSection:
    """What the run starts from and how the model is built."""
    whisper_path: Optional[str] = None
    """Local HF Whisper folder (stage 1 start from parts)."""
    llm_path: Optional[str] = None
    """Local HF causal-LM folder (stage 1 start from parts)."""
    tokenizer_path: Optional[str] = None
    """Tokenizer folder; defaults to llm_path."""
    init_from: Optional[str] = None
    """A LLaMA-Omni-layout folder to start from instead of parts (stage 2: stage 1's final folder)."""
    omni: dict = field(default_factory=dict)
    """OmniConfig fields to set (encoder_mode, projector / CTC settings), checked against
    omni_ds.model.omni_config.OmniConfig; the rest come from init_from's config.json or the
    defaults. `--set model.omni.KEY=VALUE`."""
    attn_implementation: str = "sdpa"
    """The LLM's attention kernel, as transformers names it ("sdpa", "eager", "flash_attention_2")."""
    freeze_backbone: bool = False
    """Stage 1 only: train the speech projector alone (LLM frozen)."""
    gradient_checkpointing: bool = False
    """Recompute the LLM's layer activations in backward: less memory, about a third more compute."""

    RANGES = {}


LLAMA_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class LoraSection:
    """Stage 1 with LoRA adapters on the LLM (through peft) instead of training all its weights:
    the LLM's base weights stay frozen in the training precision, the adapters train at
    optim.learning_rate (their own parameter group, "lora"), the projector trains fully at
    optim.speech_projector_lr. output_dir/final is the merged model (a plain LLaMA-Omni folder);
    output_dir/lora_adapter holds the adapter in peft's own format."""
    rank: Optional[int] = None
    """LoRA rank r; null: no LoRA (the whole LLM trains, or none of it with freeze_backbone)."""
    alpha: Optional[float] = None
    """LoRA alpha: the adapter's update is scaled by alpha / rank; null: 2 x rank."""
    dropout: float = 0.05
    """Dropout on the adapters' input."""
    target_modules: list = field(default_factory=lambda: list(LLAMA_PROJECTIONS))
    """Names of the LLM's linear layers that get adapters; the default is every attention and MLP
    projection of a Llama / Qwen2 layer."""
    load_in_4bit: bool = False
    """QLoRA: the frozen LLM base in 4-bit NF4 (bitsandbytes; needs a CUDA GPU, ZeRO-0/1/2).
    The merged final folder is built on the 16-bit base read again from model.llm_path."""

    RANGES = {"rank": (lambda v: v >= 1, "must be >= 1 or null (no LoRA)"),
              "alpha": (lambda v: v > 0, "must be > 0 or null (2 x rank)"),
              "dropout": OpenUnit,
              "target_modules": (lambda v: bool(v) and all(isinstance(x, str) and x for x in v),
                                 "must be a non-empty list of module names (e.g. \"q_proj\")")}

    @property
    def enabled(self) -> bool:
        return self.rank is not None

    def scale_alpha(self) -> float:
        return self.alpha if self.alpha is not None else 2.0 * self.rank


@dataclass
class DataSection:
    """The manifests, the prompt and how samples are loaded."""
    train_manifest: Optional[str] = None
    """Required: the training manifest (flat or LLaVA form, JSON or JSONL)."""
    audio_root: Optional[str] = None
    """Where relative audio paths of the manifests resolve; null: each manifest's own folder (the
    released InstructS2S-200K paths are relative to its download folder)."""
    val_manifest: Optional[str] = None
    """Validation manifest (loss, and unit edit distance in stage 2); null: no validation."""
    max_speech_seconds: Optional[float] = None
    """None: instructions over 30 s are cut to 30 s (the official behaviour); a number: longer
    instructions are bad records."""
    prompt_template: Literal["llama3", "tokenizer"] = "llama3"
    """"llama3" (REFERENCE.md's Llama-3 chat format) or "tokenizer" (the LLM tokenizer's own chat
    template, e.g. ChatML for Qwen2.5 / SmolLM2)."""
    system_prompt: Optional[str] = None
    """None: LLaMA-Omni's system prompt (omni_ds.constants.SYSTEM_PROMPT)."""
    instruction: Optional[str] = None
    """Text after <speech> in the user turn; None: omni_ds.constants.DEFAULT_INSTRUCTION."""
    model_max_length: int = 2048
    """Longest LLM sequence (tokens, the speech placeholder counted once); longer records are bad."""
    supervise_turns: Literal["all", "last"] = "all"
    """Dialogues in stage 1: labels on every answer and its end-of-turn token, or on the last kept
    answer only. Stage 2 trains the decoder on every answer (one CTC sequence per turn)."""
    unit_source: Literal["km1000", "dataset"] = "km1000"
    """Stage 2 targets: "km1000" (the `units` tools/extract_units.py writes, LLaMA-Omni's decoder) or
    "dataset" (the record's own `unit` strings, e.g. InstructS2S's CosyVoice2 tokens: set
    model.omni.unit_vocab_size to their vocabulary, 6561)."""
    on_bad: Literal["skip", "error"] = "skip"
    """Bad records: "skip" (report each, count them, train on the rest) or "error" (refuse to
    train). The same policy and words as tools/validate_data.py --on-bad."""
    num_workers: int = 0
    """DataLoader worker processes per rank (audio decoding and log-mel)."""
    cache_in_memory: bool = False
    """Keep loaded samples (log-mel, ids) in RAM after the first epoch: small data sets only."""
    cache_hidden_states: bool = False
    """Stage 2 only: compute the frozen LLM's response states of the train (and val) manifest once
    before training (rank-sharded, omni_ds.train.hidden_cache), then train the decoder on them
    alone; reruns with the same model, manifest and settings reuse the cache. Built in batches of
    eval.batch_size. After the build the frozen encoder, projector and LLM move to CPU memory
    (ZeRO-0/1/2) or stay partitioned (ZeRO-3); training steps never run them."""
    cache_dir: Optional[str] = None
    """Where the hidden-state cache lives; None: output_dir/hidden_cache. Share it between runs."""
    cache_dtype: Literal["bf16", "fp32"] = "bf16"
    """"bf16" (half the disk) or "fp32" (bit-exact with uncached fp32 training)."""

    RANGES = {"model_max_length": Positive, "num_workers": ZeroDisables,
              "max_speech_seconds": (lambda v: v > 0, "must be > 0 or null")}


@dataclass
class BatchSection:
    """How samples become micro-batches and optimizer steps."""
    per_device_train_batch_size: int = 1
    """Micro-batch size per rank."""
    global_batch_size: Optional[int] = None
    """When set, gradient_accumulation_steps = global / (per_device * world size)."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per optimizer step when global_batch_size is null."""
    batching: Literal["random", "length_grouped", "token_budget"] = "random"
    """"random", "length_grouped" (LLaVA-style megabatches sorted by length) or "token_budget"."""
    max_tokens_per_batch: Optional[int] = None
    """token_budget batching: micro-batch size x longest LLM length stays within this."""

    RANGES = {"per_device_train_batch_size": Positive, "gradient_accumulation_steps": Positive,
              "global_batch_size": (lambda v: v >= 1, "must be >= 1 or null"),
              "max_tokens_per_batch": (lambda v: v >= 1, "must be >= 1 or null")}


@dataclass
class OptimSection:
    """AdamW, its learning-rate schedule and how long it runs."""
    learning_rate: float = 2e-5
    """Peak learning rate of the trained LLM (and of the stage-2 decoder)."""
    speech_projector_lr: Optional[float] = None
    """Projector lr; falls back to learning_rate."""
    weight_decay: float = 0.0
    """AdamW weight decay; never on biases and norm weights."""
    adam_beta1: float = 0.9
    """AdamW beta1."""
    adam_beta2: float = 0.999
    """AdamW beta2."""
    adam_epsilon: float = 1e-8
    """AdamW epsilon."""
    lr_scheduler_type: Literal["cosine", "linear", "constant"] = "cosine"
    """The learning-rate curve after the warm-up."""
    warmup_ratio: float = 0.03
    """Linear warm-up over this fraction of the optimizer steps."""
    min_lr_ratio: float = 0.0
    """The schedule decays to learning_rate x this."""
    max_grad_norm: float = 1.0
    """0 disables clipping."""
    num_train_epochs: float = 3.0
    """Passes over the training manifest (fractions allowed)."""
    max_steps: Optional[int] = None
    """Optimizer steps; overrides num_train_epochs when set."""
    stop_on_nonfinite: bool = True
    """Stop (after a last checkpoint) when the loss or the gradient norm is not finite."""

    RANGES = {
        "learning_rate": (lambda v: v > 0, "must be > 0"),
        "speech_projector_lr": (lambda v: v > 0, "must be > 0 or null (falls back to learning_rate)"),
        "adam_beta1": OpenUnit, "adam_beta2": OpenUnit, "warmup_ratio": OpenUnit,
        "adam_epsilon": (lambda v: v > 0, "must be > 0"),
        "min_lr_ratio": (lambda v: 0.0 <= v <= 1.0, "must be in [0, 1]"),
        "weight_decay": (lambda v: v >= 0, "must be >= 0"),
        "max_grad_norm": (lambda v: v >= 0, "must be >= 0 (0 disables clipping)"),
        "max_steps": (lambda v: v >= 1, "must be >= 1 or null (then num_train_epochs decides)"),
    }

    def projector_lr(self) -> float:
        return self.speech_projector_lr if self.speech_projector_lr is not None else self.learning_rate


@dataclass
class CheckpointSection:
    """When DeepSpeed checkpoints are written, how many are kept, where a run resumes."""
    every_steps: int = 500
    """Save every N optimizer steps (0: only the final folder)."""
    keep_last: int = 2
    """Keep this many DeepSpeed checkpoints (oldest deleted after a newer one is complete)."""
    resume: str = "auto"
    """"auto" (from output_dir/checkpoints/latest if present), "never", or a checkpoint path."""
    save_final: bool = True
    """Write output_dir/final, a LLaMA-Omni-layout folder, at the end."""
    accept_changes: list = field(default_factory=list)
    """A resume is refused when it would change what decides the data order and the optimizer:
    "seed", "train_manifest" (its content), "train_samples" (usable records), "batching"
    (batch.batching), "global_batch", "model" (the init_from / whisper_path / llm_path /
    tokenizer_path folders' files). List the changed ones here to resume anyway (the run then no
    longer continues the checkpoint's data order exactly), or start fresh (--resume never, or a
    new output_dir)."""

    RANGES = {"every_steps": ZeroDisables, "keep_last": ZeroDisables,
              "resume": (lambda v: bool(v), 'allowed: "auto", "never" or a checkpoint path'),
              "accept_changes": (lambda v: all(x in RESUME_ITEMS for x in v),
                                 "entries allowed: " + ", ".join(f'"{x}"' for x in RESUME_ITEMS))}


@dataclass
class EvalSection:
    """Validation on data.val_manifest."""
    every_steps: int = 0
    """Evaluate every N optimizer steps (0: only at the end, if val_manifest)."""
    batch_size: int = 1
    """Per-rank batch size of validation (and of the hidden-state cache build)."""
    max_samples: Optional[int] = None
    """Validate on the first N records only; null: all."""
    sample_answers: int = 3
    """At each evaluation, greedy answers to the first N validation records (the batched generation
    of tools/evaluate.py, the training prompt) go to TensorBoard as text and to metrics.jsonl
    (`eval/sample_answers`: id, reference, answer, text WER; stage 2 also the units and their edit
    distance to the reference units); 0: none. Under ZeRO-3 every rank takes part."""
    sample_max_new_tokens: int = 256
    """Longest sample answer, in new tokens (tools/infer.py's default)."""
    vocoder: Optional[str] = None
    """Stage 2: a unit-vocoder folder (omni_ds/vocoder.py: fairseq's g_* checkpoint + config.json)
    whose unit vocabulary is the model's (model.omni.unit_vocab_size); the sample answers' units
    are vocoded to TensorBoard audio and output_dir/eval_audio/step<N>/<id>.wav. Checked (loaded)
    at start-up and by --dry-run."""

    RANGES = {"every_steps": ZeroDisables, "batch_size": Positive,
              "max_samples": (lambda v: v >= 1, "must be >= 1 or null (all)"),
              "sample_answers": ZeroDisables, "sample_max_new_tokens": Positive}


@dataclass
class LogSection:
    """What the run reports, and where."""
    every_steps: int = 1
    """Log loss, learning rate, gradient norm, throughput and MFU every N optimizer steps."""
    report_to: list = field(default_factory=lambda: ["tensorboard"])
    """Any of "tensorboard", "wandb"; [] for none."""
    run_name: Optional[str] = None
    """The run's name in Weights & Biases; null: its own generated name."""
    wandb_project: str = "omni_ds"
    """Weights & Biases project when report_to has "wandb"."""
    peak_tflops: Optional[float] = None
    """Per-device peak dense TFLOPS for MFU; guessed from the device name when None."""
    progress_bar: bool = True
    """A tqdm bar on rank 0."""

    RANGES = {"every_steps": Positive,
              "report_to": (lambda v: all(r in ("tensorboard", "wandb") for r in v),
                            'entries allowed: "tensorboard", "wandb"'),
              "peak_tflops": (lambda v: v > 0, "must be > 0 or null (guessed)")}


@dataclass
class DebugSection:
    """Test and audit hooks (omni_ds.train.debug); off in real runs."""
    trace_samples: bool = False
    """Write output_dir/trace/rank{r}.jsonl: per step, the loss and the sample indices this rank
    trained on (resume audits: no sample seen twice or skipped)."""
    crash_at_step: Optional[int] = None
    """Fault injection: the process kills itself (SIGKILL) at this step; on a save step it dies
    after the DeepSpeed files are written and before the checkpoint is committed."""

    RANGES = {"crash_at_step": (lambda v: v >= 1, "must be >= 1 or null")}


# section name -> class, in the order a config file lists them
SECTIONS = {"model": ModelSection, "lora": LoraSection, "data": DataSection, "batch": BatchSection, "optim": OptimSection,
            "checkpoint": CheckpointSection, "eval": EvalSection, "log": LogSection, "debug": DebugSection}
