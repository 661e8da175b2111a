"""The few places where transformers 4.57 and 5.x differ in an API omni_ds calls directly.

Everything else in omni_ds uses APIs common to both lines. Each helper here absorbs one named
transformers change, detected from the object at hand (never from a version number), so that a
later 5.x that changes again fails loudly in one place.
"""
from __future__ import annotations

import inspect

import torch
from torch import nn


def layer_hidden_states(output) -> torch.Tensor:
    """The hidden states a decoder/encoder layer returned.

    transformers 5 layers (and 4.57's Llama layers) return the tensor itself; 4.57's Whisper
    encoder layer returns (hidden_states, attn_weights). Indexing [0] on a tensor would silently
    take the first batch row, so the tuple case is told apart by type.
    """
    return output[0] if isinstance(output, tuple) else output


def whisper_encoder_layer_kwargs(layer: nn.Module) -> dict:
    """Extra keyword arguments a WhisperEncoderLayer call needs besides hidden states and mask.

    transformers 5 removed head masking (the `layer_head_mask` argument is gone); 4.57's
    WhisperEncoderLayer.forward still requires it positionally (None = no head mask).
    """
    if "layer_head_mask" in inspect.signature(layer.forward).parameters:
        return {"layer_head_mask": None}
    return {}


def cache_kwargs(model: nn.Module, cache) -> dict:
    """The keyword that hands a KV cache to a transformers model's forward.

    transformers 5.x renamed `past_key_values` to `cache` (the old name warns and is to be
    removed in 5.40); 4.57 knows only `past_key_values`. The caller owns the cache object
    (a DynamicCache, filled in place), so no output attribute name is needed either.
    """
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    return {name: cache}


def enable_activation_checkpointing(model: nn.Module, checkpoint_kwargs: dict) -> None:
    """Turn on activation (gradient) checkpointing of a transformers model.

    transformers 5.x renamed gradient_checkpointing_enable to activation_checkpointing_enable
    (the old name warns, to be removed in v6); 4.57 has only the old one. Both take the
    torch.utils.checkpoint kwargs as their first argument.
    """
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable(checkpoint_kwargs)
