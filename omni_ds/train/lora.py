"""LoRA on the LLM for stage 1 (config section `lora`), through peft.

peft injects its layers into `model.llm` in place, so the model keeps its structure and the
parameter names gain `.base_layer.` (the frozen weight) and `.lora_A.default.` /
`.lora_B.default.` (the adapter). Everything that reads a state dict then sees one form:
DeepSpeed checkpoints hold it as is (resume is exact), and `final_state` turns it back into a
plain model's state dict (W = W0 + alpha/r * B A in fp32, rounded once to W0's dtype, as peft
merges), so the final folder is an ordinary LLaMA-Omni folder. `save_adapter` writes the adapter in peft's own format
(adapter_config.json + adapter_model.safetensors) for `PeftModel.from_pretrained(base_llm, dir)`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from omni_ds.train.config import ConfigError, TrainConfig

ADAPTER = "default"          # peft's adapter name; it appears in the parameter names
ADAPTER_DIR = "lora_adapter"
_BASE = ".base_layer."


def _peft():
    try:
        import peft
    except ImportError:
        raise ConfigError("config key 'lora.rank' is set, but peft is not installed: "
                          "pip install 'omni_ds[lora]' (or pip install peft)") from None
    return peft


def lora_config(cfg: TrainConfig):
    """The peft LoraConfig of the run."""
    lo = cfg.lora
    return _peft().LoraConfig(r=lo.rank, lora_alpha=lo.scale_alpha(), lora_dropout=lo.dropout,
                              target_modules=list(lo.target_modules), bias="none", task_type="CAUSAL_LM",
                              base_model_name_or_path=str(cfg.model.llm_path or cfg.model.init_from))


def apply_lora(model, cfg: TrainConfig, dtype: torch.dtype) -> int:
    """Adapters into model.llm (its base weights frozen; the projector keeps training), each in the
    training dtype (the engine requires one dtype). Returns how many layers got adapters."""
    peft = _peft()
    model.llm.requires_grad_(False)
    try:
        peft.inject_adapter_in_model(lora_config(cfg), model.llm, adapter_name=ADAPTER)
    except ValueError as e:                 # e.g. no module of the LLM matches target_modules
        raise ConfigError(f"config key 'lora.target_modules' = {cfg.lora.target_modules!r}: {e}") from None
    n = 0
    for name, p in model.llm.named_parameters():
        if ".lora_" in name:
            p.requires_grad_(True)
            p.data = p.data.to(dtype)
            n += "lora_A" in name
    return n


def has_lora(model) -> bool:
    return any(".lora_A." in n for n, _ in model.named_parameters())


def scalings(model) -> dict[str, float]:
    """{internal module name (e.g. llm.model.layers.0.self_attn.q_proj): alpha / r}, from peft's layers."""
    from peft.tuners.lora import LoraLayer
    return {name: m.scaling[ADAPTER] for name, m in model.named_modules() if isinstance(m, LoraLayer)}


def final_state(model, state: dict[str, torch.Tensor], base: Optional[dict] = None) -> dict[str, torch.Tensor]:
    """A LoRA model's state dict (internal names) as the merged plain model's: no LoRA tensors.
    `base` (internal names) replaces the frozen base weights, e.g. the 16-bit ones of a 4-bit run.
    Without LoRA in the model the state is returned as is."""
    if not has_lora(model):
        return state
    out = {}
    for key, tensor in state.items():
        if ".lora_" not in key:
            out[key.replace(_BASE, ".")] = tensor
    if base is not None:               # a 4-bit base also leaves its quantization state: all replaced
        out = {k: v for k, v in out.items() if not k.startswith("llm.")}
        out.update(base)
    for module, scale in scalings(model).items():
        a, b = state[f"{module}.lora_A.{ADAPTER}.weight"], state[f"{module}.lora_B.{ADAPTER}.weight"]
        w = out[f"{module}.weight"]
        # as peft merges an adapter it loaded (upcast to fp32) into a 16-bit base: one rounding
        out[f"{module}.weight"] = (w.float() + (b.float() @ a.float()) * scale).to(w.dtype)
    left = [k for k in out if "lora_" in k or _BASE in k]
    if left:
        raise RuntimeError(f"LoRA merge left adapter tensors in the final state: {left[:3]}")
    return out


def adapter_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The adapter tensors of a state dict (internal names), named as PeftModel.save_pretrained
    names them (base_model.model.<LLM name>.lora_A.weight)."""
    out = {}
    for key, tensor in state.items():
        if key.startswith("llm.") and ".lora_" in key:
            name = key[len("llm."):].replace(f".{ADAPTER}.", ".")
            out[f"base_model.model.{name}"] = tensor.detach().cpu().contiguous()
    return out


def save_adapter(cfg: TrainConfig, state: dict[str, torch.Tensor], out_dir: str | Path) -> Path:
    """output_dir/lora_adapter: peft's adapter_config.json + adapter_model.safetensors."""
    from safetensors.torch import save_file
    out = Path(out_dir) / ADAPTER_DIR
    out.mkdir(parents=True, exist_ok=True)
    config = lora_config(cfg)
    config.inference_mode = True
    config.save_pretrained(str(out))
    save_file(adapter_state(state), str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    (out / "README.md").write_text(
        "LoRA adapter of the LLM, trained by omni_ds (stage 1). The speech projector and the merged model are in "
        "../final.\n\n    from peft import PeftModel\n    llm = PeftModel.from_pretrained(base_llm, this_folder)\n")
    return out


def base_weights_16bit(cfg: TrainConfig, dtype: torch.dtype) -> Optional[dict[str, torch.Tensor]]:
    """QLoRA: the LLM folder's own 16-bit weights (internal names), the base of the merge; None
    for a 16-bit run (the state dict's base weights are already the originals)."""
    if not cfg.lora.load_in_4bit:
        return None
    from omni_ds.model.checkpoint import read_tensors
    llm = read_tensors(Path(cfg.model.llm_path), lambda n: True)
    return {f"llm.{k}": v.to(dtype) for k, v in llm.items()}


def check_quantization(cfg: TrainConfig, zero: int) -> None:
    """QLoRA's requirements, each a one-line error: a CUDA GPU, bitsandbytes, not ZeRO-3."""
    if not cfg.lora.load_in_4bit:
        return
    if not torch.cuda.is_available():
        raise ConfigError("config key 'lora.load_in_4bit' = True: QLoRA's 4-bit base needs a CUDA GPU "
                          "(bitsandbytes kernels) and this machine has none; set lora.load_in_4bit false "
                          "(LoRA on the 16-bit base)")
    if zero == 3:
        raise ConfigError("config key 'lora.load_in_4bit' = True: a 4-bit base cannot be partitioned by ZeRO-3; "
                          "use ds_configs/zero2.json (the base is frozen: ZeRO-2 partitions what trains)")
    if cfg.model.init_from:
        raise ConfigError("config key 'lora.load_in_4bit' = True: QLoRA starts from model.llm_path "
                          "(a Hugging Face LLM folder), not model.init_from")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ConfigError("config key 'lora.load_in_4bit' = True: bitsandbytes is not installed "
                          "(pip install bitsandbytes)") from None


def quantization_config(cfg: TrainConfig, dtype: torch.dtype):
    """transformers' BitsAndBytesConfig for QLoRA (NF4, double quantization, compute in `dtype`)."""
    if not cfg.lora.load_in_4bit:
        return None
    from transformers import BitsAndBytesConfig
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=dtype)


def describe(cfg: TrainConfig) -> dict:
    """The LoRA facts of summary.json."""
    lo = cfg.lora
    return {"rank": lo.rank, "alpha": lo.scale_alpha(), "dropout": lo.dropout,
            "target_modules": list(lo.target_modules), "load_in_4bit": lo.load_in_4bit,
            "adapter_dir": str(Path(cfg.output_dir) / ADAPTER_DIR)}
