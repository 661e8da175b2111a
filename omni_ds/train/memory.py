"""Per-GPU memory estimate for a stage, a ZeRO stage and a batch — before any GPU hour is spent.

Model states use DeepSpeed's own estimator formulas (deepspeed.runtime.zero.stage_1_and_2 /
stage3 `estimate_zero{2,3}_model_states_mem_needs`, without their CPU terms): with Ψ trainable
parameters on N GPUs, ZeRO-2 holds 2Ψ (16-bit params) + 18Ψ/N (16-bit + fp32 grads, fp32 master
params, Adam moments) per GPU, ZeRO-2 + optimizer offload 2Ψ, ZeRO-3 4·largest_layer + 18Ψ/N,
ZeRO-3 + optimizer offload 4·largest_layer + 2Ψ/N, ZeRO-3 + param offload 4·largest_layer.
Frozen parameters (the Whisper encoder; the LLM in stage 2) add 2 bytes each (16-bit),
partitioned under ZeRO-3. Activations come from sequence length, width and depth (flash/SDPA
attention, so no L² score matrix): ~34·s·h bytes per token·layer for a Llama layer without
recompute (SwiGLU width adds 3·I·s·2 bytes), 2·s·h per layer with full recompute plus one layer
live; fp32 logits for the loss; plus a fixed framework overhead (CUDA context, allocator slack,
communication buckets). Sizes are GiB (2^30 bytes), as nvidia-smi and torch report them.

LoRA (stage 1, config section `lora`): Ψ is then the projector plus the adapters (r·(in + out)
per adapted linear layer), and the whole LLM joins the frozen weights: 2 bytes per parameter in
16 bits, or with QLoRA's 4-bit NF4 base 4.127 bits per quantized parameter (NF4 + double-quantized
absmax) while the embeddings and the LM head (not quantized by bitsandbytes) keep 2 bytes.
The logits line counts the supervised positions only when their number is given (the model
sends only those through the LM head); otherwise every position, an upper bound.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

GIB = float(2 ** 30)

# Usable memory per device in GiB (what the driver reports, not the marketing GB).
GPU_MEMORY_GIB = {
    "L40": 44.99, "L40S": 44.99, "A6000": 47.99, "A100-40": 39.59, "A100-80": 79.15, "H100": 79.65,
    "H200": 139.8, "4090": 23.99, "3090": 23.69, "A10G": 22.49, "V100-32": 31.74,
}

# Shapes of the models users train; counts are computed from them (meta-device instantiation).
LLM_PRESETS = {
    "llama-3.1-8b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, intermediate_size=14336, vocab_size=128256,
                         tie_word_embeddings=False),
    "llama-3.2-3b": dict(hidden_size=3072, num_hidden_layers=28, num_attention_heads=24,
                         num_key_value_heads=8, intermediate_size=8192, vocab_size=128256,
                         tie_word_embeddings=True),
    "llama-3.2-1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, intermediate_size=8192, vocab_size=128256,
                         tie_word_embeddings=True),
    "qwen2.5-7b": dict(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28,
                       num_key_value_heads=4, intermediate_size=18944, vocab_size=152064,
                       tie_word_embeddings=False),
}
WHISPER_LARGE_V3 = dict(d_model=1280, encoder_layers=32, encoder_ffn_dim=5120, num_mel_bins=128,
                        max_source_positions=1500)


@dataclass
class ModelShape:
    """Parameter counts and the dimensions that drive activation memory."""
    llm_params: int
    llm_largest_layer: int          # the largest single tensor/module (the embedding for Llama-3)
    hidden_size: int
    intermediate_size: int
    num_layers: int
    vocab_size: int
    encoder_params: int
    projector_params: int
    decoder_params: int = 0
    decoder_hidden: int = 4096
    decoder_intermediate: int = 11008
    decoder_layers: int = 2
    lora_params: int = 0            # the LoRA adapters' parameters at the planned rank (0: no LoRA)
    lora_rank: Optional[int] = None


LLAMA_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def llama_linear_shapes(hidden_size, num_attention_heads, num_key_value_heads, intermediate_size,
                        **_) -> dict[str, tuple[int, int]]:
    """(in, out) features of each linear layer of one Llama decoder layer, by name."""
    h, kv = hidden_size, hidden_size // num_attention_heads * num_key_value_heads
    i = intermediate_size
    return {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
            "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}


def lora_param_count(linears: list[tuple[int, int]], rank: int) -> int:
    """Adapter parameters: A (r x in) and B (out x r) per adapted linear layer of the whole LLM."""
    return sum(rank * (n_in + n_out) for n_in, n_out in linears)


def with_lora(shape: "ModelShape", llm: dict, rank: int, targets=LLAMA_LINEARS) -> "ModelShape":
    """`shape` planned for LoRA of `rank` on the `targets` of every layer of a preset-shaped LLM."""
    per_layer = [dims for name, dims in llama_linear_shapes(**llm).items() if name in targets]
    shape.lora_params = lora_param_count(per_layer * llm["num_hidden_layers"], rank)
    shape.lora_rank = rank
    return shape


def llama_param_count(hidden_size, num_hidden_layers, num_attention_heads, num_key_value_heads,
                      intermediate_size, vocab_size, tie_word_embeddings=False, **_) -> tuple[int, int]:
    """(total params, largest tensor) of a Llama-architecture causal LM (no biases)."""
    h, kv = hidden_size, hidden_size // num_attention_heads * num_key_value_heads
    layer = 2 * h * h + 2 * h * kv + 3 * h * intermediate_size + 2 * h
    embed = vocab_size * h
    total = embed * (1 if tie_word_embeddings else 2) + num_hidden_layers * layer + h
    return total, max(embed, intermediate_size * h)


def whisper_encoder_param_count(d_model, encoder_layers, encoder_ffn_dim, num_mel_bins,
                                max_source_positions, **_) -> int:
    d = d_model
    conv = num_mel_bins * d * 3 + d + d * d * 3 + d
    layer = 4 * d * d + 3 * d + d + 2 * d * encoder_ffn_dim + encoder_ffn_dim + d + 4 * d
    return conv + max_source_positions * d + encoder_layers * layer + 2 * d


def projector_param_count(encoder_width: int, llm_width: int, k: int = 5, mid: int = 2048) -> int:
    return encoder_width * k * mid + mid + mid * llm_width + llm_width


def ctc_decoder_param_count(llm_width, layers=2, width=4096, heads=32, ffn=11008, units=1000) -> int:
    layer = 4 * width * width + 3 * width * ffn + 2 * width
    return llm_width * width + width + layers * layer + width * (units + 1) + units + 1


def shape_for(llm: dict, encoder: dict = WHISPER_LARGE_V3, with_decoder: bool = False) -> ModelShape:
    total, largest = llama_param_count(**llm)
    enc = whisper_encoder_param_count(**encoder)
    proj = projector_param_count(encoder["d_model"], llm["hidden_size"])
    dec = ctc_decoder_param_count(llm["hidden_size"]) if with_decoder else 0
    return ModelShape(total, largest, llm["hidden_size"], llm["intermediate_size"],
                      llm["num_hidden_layers"], llm["vocab_size"], enc, proj, dec)


@dataclass
class MemoryPlan:
    stage: int
    zero_stage: int
    offload_optimizer: bool
    offload_params: bool
    world_size: int
    micro_batch: int
    seq_len: int
    gradient_checkpointing: bool
    precision: str
    trainable_params: int
    frozen_params: int
    lines: dict = field(default_factory=dict)    # name -> GiB

    @property
    def total_gib(self) -> float:
        return sum(self.lines.values())

    def describe(self) -> str:
        off = "+".join(x for x, on in (("optimizer offload", self.offload_optimizer),
                                        ("param offload", self.offload_params)) if on)
        head = (f"ZeRO-{self.zero_stage}{' (' + off + ')' if off else ''}, {self.world_size} GPU(s), "
                f"micro batch {self.micro_batch} x {self.seq_len} positions, "
                f"recompute {'on' if self.gradient_checkpointing else 'off'}, {self.precision}")
        w = max(44, *(len(k) for k in self.lines))
        body = "\n".join(f"    {k:<{w}s} {v:8.2f} GiB" for k, v in self.lines.items())
        return f"{head}\n{body}\n    {'total per GPU':<{w}s} {self.total_gib:8.2f} GiB"


def model_states_gib(psi: int, zero_stage: int, n: int, largest: int, off_opt: bool, off_par: bool) -> float:
    """DeepSpeed's estimator formulas (GPU part), bytes -> GiB."""
    if zero_stage >= 3:
        big = 4 * largest
        if off_opt and off_par:
            b = big
        elif off_opt:
            b = big + 2 * psi / n
        else:
            b = big + 18 * psi / n
    elif zero_stage == 2:
        b = 2 * psi if off_opt else 2 * psi + 18 * psi / n
    elif zero_stage == 1:
        b = 4 * psi + 16 * psi / n
    else:
        b = 20 * psi
    return b / GIB


@dataclass(frozen=True)
class RunSettings:
    """What a run trains and on what batch: fixed by the recipe, whatever memory setup is chosen."""
    stage: int
    world_size: int
    micro_batch: int
    seq_len: int                    # LLM positions per sample (plan for the longest)
    precision: str = "bf16"
    freeze_backbone: bool = False   # stage 1: the LLM frozen too, only the projector trains
    lora: bool = False              # stage 1: LoRA adapters (shape.lora_params) train, the LLM is frozen
    quantized_base: bool = False    # QLoRA: the frozen LLM base in 4-bit NF4
    answer_len: Optional[int] = None  # supervised positions per sample (None: all seq_len, a bound)


@dataclass(frozen=True)
class MemorySetup:
    """The memory-saving choices a recipe can trade for speed: ZeRO stage, offloads, recompute."""
    zero_stage: int
    gradient_checkpointing: bool
    offload_opt: bool = False
    offload_par: bool = False


def _param_split(shape: ModelShape, run: RunSettings) -> tuple[int, int, int]:
    """(trainable, frozen, largest trainable layer) parameter counts of the run's stage."""
    if run.stage == 1 and run.lora:
        return shape.projector_params + shape.lora_params, shape.encoder_params + shape.llm_params, \
            shape.llm_largest_layer
    if run.stage == 1:
        trainable = shape.projector_params + (0 if run.freeze_backbone else shape.llm_params)
        frozen = shape.encoder_params + (shape.llm_params if run.freeze_backbone else 0)
        return trainable, frozen, shape.llm_largest_layer
    frozen = shape.encoder_params + shape.projector_params + shape.llm_params
    largest = max(shape.decoder_hidden * shape.decoder_intermediate, shape.decoder_hidden * 1001)
    return shape.decoder_params, frozen, largest


def _activation_lines(shape: ModelShape, run: RunSettings, gradient_checkpointing: bool) -> dict:
    """Activation terms (name -> GiB): the LLM's in stage 1, the CTC decoder's in stage 2."""
    act_bytes = 4 if run.precision == "fp32" else 2
    s, h, L, I = run.micro_batch * run.seq_len, shape.hidden_size, shape.num_layers, shape.intermediate_size
    if run.stage == 1:
        per_layer = s * (34 * h + 3 * I * act_bytes) * act_bytes / 2   # bytes, 16-bit activations
        if gradient_checkpointing:
            acts = L * s * h * act_bytes + per_layer
        else:
            acts = L * per_layer
        if run.answer_len is None:
            return {"LLM activations": acts / GIB,
                    "logits + loss (fp32, upper bound)": 2 * s * shape.vocab_size * 4 / GIB}
        supervised = run.micro_batch * min(run.answer_len, run.seq_len)
        return {"LLM activations": acts / GIB,
                f"logits + loss (fp32, {supervised} supervised positions)": 2 * supervised * shape.vocab_size * 4 / GIB}
    dec_s = run.micro_batch * 25 * 60
    per_layer = dec_s * (34 * shape.decoder_hidden + 3 * shape.decoder_intermediate * 2)
    acts = shape.decoder_layers * per_layer + dec_s * 1001 * 4 * 2
    return {"decoder activations + CTC": acts / GIB,
            "frozen LLM forward (one layer live)": s * (34 * h) / GIB}


def _frozen_lines(shape: ModelShape, run: RunSettings, setup: MemorySetup, frozen: int) -> dict:
    """The frozen weights' line(s): 16-bit (fp32 in an fp32 run), / N under ZeRO-3 unless offloaded;
    QLoRA's LLM base apart, in 4-bit NF4 with 16-bit embeddings and LM head."""
    n = run.world_size if setup.zero_stage >= 3 and not setup.offload_par else 1
    per = 4 if run.precision == "fp32" else 2
    lines = {}
    if run.quantized_base:
        unquantized = min(2 * shape.vocab_size * shape.hidden_size, shape.llm_params)
        lines[f"frozen LLM base in 4-bit NF4, {shape.llm_params / 1e9:.2f} B"] = \
            ((shape.llm_params - unquantized) * 4.127 / 8 + unquantized * 2) / GIB
        frozen -= shape.llm_params
    lines[f"frozen weights, {frozen / 1e9:.2f} B" + (" / N" if n > 1 else "")] = frozen * per / n / GIB
    return lines


def estimate(shape: ModelShape, run: RunSettings, setup: MemorySetup, overhead_gib: float = 2.0) -> MemoryPlan:
    trainable, frozen, largest = _param_split(shape, run)
    plan = MemoryPlan(run.stage, setup.zero_stage, setup.offload_opt, setup.offload_par, run.world_size,
                      run.micro_batch, run.seq_len, setup.gradient_checkpointing, run.precision,
                      trainable, frozen)
    what = f"LoRA r={shape.lora_rank} + projector, " if run.lora and run.stage == 1 else ""
    plan.lines[f"model states, {what}{trainable / 1e9:.2f} B trainable"] = model_states_gib(
        trainable, setup.zero_stage, run.world_size, largest, setup.offload_opt, setup.offload_par)
    # under ZeRO-3 the frozen weights are partitioned too, unless they are offloaded to the CPU
    plan.lines.update(_frozen_lines(shape, run, setup, frozen))
    plan.lines.update(_activation_lines(shape, run, setup.gradient_checkpointing))
    plan.lines["framework overhead (context, buckets, slack)"] = overhead_gib
    return plan


def alternatives(shape: ModelShape, run: RunSettings, gpu_gib: float) -> list[MemoryPlan]:
    """Setups that fit in gpu_gib, cheapest in communication and host memory first."""
    options = [(2, False, False, False), (2, False, False, True), (3, False, False, False),
               (3, False, False, True), (2, True, False, True), (3, True, False, True),
               (3, True, True, True)]
    out = []
    for z, oo, op, gc in options:
        if run.quantized_base and z == 3:           # a 4-bit base is not partitioned by ZeRO-3
            continue
        p = estimate(shape, run, MemorySetup(z, gc, oo, op))
        if p.total_gib <= gpu_gib:
            out.append(p)
    return out


def verdict(plan: MemoryPlan, gpu_gib: Optional[float], gpu_name: str = "GPU") -> str:
    if gpu_gib is None:
        return f"estimate {plan.total_gib:.1f} GiB per GPU (no device memory known to compare)"
    states = next(v for k, v in plan.lines.items() if k.startswith("model states"))
    if plan.total_gib <= gpu_gib:
        return f"FITS: {plan.total_gib:.1f} GiB of {gpu_gib:.1f} GiB per {gpu_name}"
    why = (f"model states alone need {states:.1f} GiB per GPU" if states > gpu_gib
           else f"total {plan.total_gib:.1f} GiB")
    return f"DOES NOT FIT: {why}, more than the {gpu_gib:.1f} GiB of a {gpu_name}"
