"""Precision names and the one rule for parameter dtypes.

Configs say "bf16" / "fp16" / "fp32"; tools also accept torch's names ("bfloat16", ...).

The rule: a model is built in the dtype its DeepSpeed engine computes in, every parameter of it,
trainable or frozen. DeepSpeed casts the module itself only when no parameter is ZeRO-3
partitioned yet; once the LLM has been partitioned while loading (HfDeepSpeedConfig), the engine
casts nothing, and parts built outside zero.Init (encoder, projector, decoder) would keep the dtype
they were built in. Mixed trainable dtypes break ZeRO-3's flat parameter buffer, so we never leave
it to the engine.
"""
from __future__ import annotations

import torch
from torch import nn

_BY_NAME = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
            "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
            "fp32": torch.float32, "float32": torch.float32, "float": torch.float32}


def torch_dtype(name: str) -> torch.dtype:
    """"bf16" | "fp16" | "fp32" (or torch's spellings) -> torch dtype."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"precision {name!r}: allowed \"bf16\", \"fp16\", \"fp32\"") from None


def is_partitioned(p: torch.Tensor) -> bool:
    """A ZeRO-3 partitioned parameter (its dtype was fixed by zero.Init)."""
    return hasattr(p, "ds_id")


def cast_parameters(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Cast every floating, not yet partitioned parameter of `module` to `dtype` in place.

    Buffers keep their dtype (rotary inverse frequencies stay fp32, as DeepSpeed keeps them), and
    ZeRO-3 partitions are left alone: zero.Init created them in the engine's dtype already."""
    for p in module.parameters():
        if p.is_floating_point() and p.dtype != dtype and not is_partitioned(p):
            p.data = p.data.to(dtype)
    return module


def parameter_dtypes(module: nn.Module, trainable_only: bool = False) -> dict[str, set]:
    """{top-level submodule: {dtype names}}: what a test or a check reads to see the rule hold.
    Partitioned parameters report their partition's dtype."""
    out: dict[str, set] = {}
    for name, p in module.named_parameters():
        if trainable_only and not p.requires_grad:
            continue
        t = getattr(p, "ds_tensor", None)
        dtype = (t if t is not None else p).dtype
        out.setdefault(name.split(".", 1)[0], set()).add(str(dtype).replace("torch.", ""))
    return out
