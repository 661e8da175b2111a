"""Which parameters train, and in which optimizer group (LLaVA-style, by parameter NAME).

Groups, by internal prefix (docs/ARCHITECTURE.md): `speech_projector.*` at `speech_projector_lr`
(falls back to `learning_rate`), `llm.*` and `speech_generator.*` at `learning_rate`; with LoRA
(config section `lora`) the LLM's adapter tensors (`llm.*.lora_A.*` / `.lora_B.*`) are the group
"lora" at `learning_rate`, and the LLM's own weights are frozen. Inside each,
biases and normalisation weights get no weight decay. Frozen parameters (`requires_grad=False`: the
Whisper encoder always; the LLM under `freeze_backbone`; everything but the decoder in stage 2)
are left out, so they hold no optimizer state and receive no gradient.
"""
from __future__ import annotations

import re

import torch

from omni_ds.train.config import TrainConfig

# A parameter is "norm-like" when one of its dotted name parts is a normalisation module:
# Llama `input_layernorm`, `post_attention_layernorm`, `model.norm`; Whisper `layer_norm`,
# `self_attn_layer_norm`, `final_layer_norm`; openai-whisper `attn_ln`, `mlp_ln`, `ln_post`.
_NORM_PART = re.compile(r"(^|_)(norm|layernorm|layer_norm|ln|rmsnorm)(_|$)|norm$")

PREFIX_GROUPS = (("speech_projector.", "projector"), ("speech_generator.", "speech_generator"),
                 ("llm.", "llm"), ("speech_encoder.", "speech_encoder"))


def no_weight_decay(name: str) -> bool:
    parts = name.split(".")
    if parts[-1] == "bias":
        return True
    return any(_NORM_PART.search(p) for p in parts[:-1])


def module_of(name: str) -> str:
    if name.startswith("llm.") and ".lora_" in name:      # peft's adapter tensors in the LLM
        return "lora"
    for prefix, group in PREFIX_GROUPS:
        if name.startswith(prefix):
            return group
    return "other"


def build_param_groups(model: torch.nn.Module, cfg: TrainConfig) -> list[dict]:
    """Optimizer parameter groups; each carries a `name` ("llm", "llm_no_decay", "projector", ...)
    so lrs can be logged and read back per group. Empty groups are dropped."""
    lr_of = {"projector": cfg.optim.projector_lr()}
    groups: dict[str, dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        mod = module_of(name)
        nd = no_weight_decay(name)
        key = mod + ("_no_decay" if nd else "")
        if key not in groups:
            groups[key] = {"name": key, "params": [], "param_names": [],
                           "lr": lr_of.get(mod, cfg.optim.learning_rate),
                           "weight_decay": 0.0 if nd else cfg.optim.weight_decay}
        groups[key]["params"].append(p)
        groups[key]["param_names"].append(name)
    if not groups:
        raise RuntimeError(f"stage {cfg.stage}: no trainable parameters (freeze_backbone="
                           f"{cfg.model.freeze_backbone}); nothing to optimise")
    order = ["projector", "projector_no_decay", "lora", "lora_no_decay", "llm", "llm_no_decay", "speech_generator",
             "speech_generator_no_decay", "other", "other_no_decay"]
    return [groups[k] for k in order if k in groups]


def for_optimizer(groups: list[dict]) -> list[dict]:
    """Groups as handed to the optimizer: the name list stays out (ZeRO copies group dicts)."""
    return [{k: v for k, v in g.items() if k != "param_names"} for g in groups]


def count_params(model: torch.nn.Module) -> dict:
    """Parameter counts per module and trainable/frozen; uses `ds_numel` under ZeRO-3 (numel is 0)."""
    out = {"total": 0, "trainable": 0, "frozen": 0}
    seen = set()
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        n = getattr(p, "ds_numel", None) or p.numel()
        out["total"] += n
        out["trainable" if p.requires_grad else "frozen"] += n
        mod = module_of(name)
        out[mod] = out.get(mod, 0) + n
        if p.requires_grad:
            out[f"{mod}_trainable"] = out.get(f"{mod}_trainable", 0) + n
    return out


def optimizer_parameter_names(engine) -> list[str]:
    """Names of the parameters the engine's optimizer holds state for, read back from it:
    ZeRO-1/2 `bit16_groups`, the bf16 optimizer's `bf16_groups`, ZeRO-3 `fp16_groups`, else the
    torch optimizer's param groups."""
    opt = engine.optimizer
    groups = None
    for attr in ("bit16_groups", "bf16_groups", "fp16_groups"):
        if getattr(opt, attr, None):
            groups = getattr(opt, attr)
            break
    if groups is None:
        inner = getattr(opt, "optimizer", opt)
        groups = [g["params"] for g in inner.param_groups]
    names = {id(p): n for n, p in engine.module.named_parameters()}
    out = []
    for g in groups:
        for p in g:
            if id(p) not in names:
                raise RuntimeError("the optimizer holds a tensor that is not a parameter of the model")
            out.append(names[id(p)])
    return out
