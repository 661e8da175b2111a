"""The few places where transformers 4.57 and 5.x differ in an API omni_ds calls directly.

Everything else in omni_ds uses APIs common to both lines. Each helper here absorbs one named
transformers change, detected from the object at hand (never from a version number), so that a
later 5.x that changes again fails loudly in one place.
"""
from __future__ import annotations

import copy
import inspect
import json
from pathlib import Path

import torch
from torch import nn
from transformers import LlamaConfig, PretrainedConfig


def layer_hidden_states(output) -> torch.Tensor:
    """The hidden states a decoder/encoder layer returned.

    transformers 5 layers (and 4.57's Llama layers) return the tensor itself; 4.57's Whisper and
    HuBERT encoder layers return (hidden_states, attn_weights). Indexing [0] on a tensor would
    silently take the first batch row, so the tuple case is told apart by type.
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


# ---- RoPE settings -------------------------------------------------------------------------------
# transformers 5 keeps a config's RoPE settings in one `rope_parameters` dict (rope_type and
# rope_theta inside; `rope_scaling` is a deprecated alias of it and `rope_theta` is no attribute).
# 4.57 has the `rope_theta` float and the optional `rope_scaling` dict (None = plain RoPE).


def rope_parameters(config: PretrainedConfig) -> dict:
    """A config's RoPE settings as one dict with `rope_type` and `rope_theta` (a copy)."""
    params = getattr(config, "rope_parameters", None)
    if params is not None:
        return copy.deepcopy(dict(params))
    scaling = copy.deepcopy(getattr(config, "rope_scaling", None) or {"rope_type": "default"})
    return {**scaling, "rope_theta": config.rope_theta}


def llama_rope_kwargs(params: dict) -> dict:
    """LlamaConfig(...) keyword arguments giving the RoPE settings `params` (rope_parameters' form),
    spelled the way the installed LlamaConfig takes them."""
    if "rope_parameters" in inspect.signature(LlamaConfig.__init__).parameters:
        return {"rope_parameters": copy.deepcopy(params)}
    return legacy_rope_keys({"rope_parameters": params})


def legacy_rope_keys(config_dict: dict) -> dict:
    """A config dict with its RoPE settings spelled as `rope_theta` + `rope_scaling`.

    This is the spelling both lines read: transformers 5 converts it on load, while 4.x and the
    official LLaMA-Omni code (transformers 4.43) ignore a `rope_parameters` key and would silently
    fall back to theta 10000 without Llama-3 scaling. So folders we write use it.
    """
    out = dict(config_dict)
    params = out.pop("rope_parameters", None)
    if params is None:
        return out
    scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    out["rope_theta"] = params.get("rope_theta", out.get("rope_theta"))
    plain = scaling.get("rope_type", "default") == "default" and len(scaling) <= 1
    out["rope_scaling"] = None if plain else scaling        # 4.x spells plain RoPE as None
    return out


# ---- tokenizer files -------------------------------------------------------------------------------
# transformers 5 writes tokenizer_config.json for its own loader: tokenizer_class
# "TokenizersBackend" (a class 4.x and the official code's 4.43 do not have: they refuse the
# folder), the loader flags is_local / local_files_only, and (as 4.57 does) the chat template in
# chat_template.jinja only, which loaders before 4.4x do not read. PreTrainedTokenizerFast is the
# released Llama-3.1 tokenizer's class and loads as TokenizersBackend in 5.
_LOADER_FLAGS = ("is_local", "local_files_only")


def save_portable_tokenizer(tokenizer, folder: str | Path) -> None:
    """tokenizer.save_pretrained(folder), with tokenizer_config.json spelled so that transformers
    4.x, 5.x and the official LLaMA-Omni code all load the folder."""
    folder = Path(folder)
    tokenizer.save_pretrained(str(folder))
    cfg_path, jinja = folder / "tokenizer_config.json", folder / "chat_template.jinja"
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("tokenizer_class") == "TokenizersBackend":
        cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    for key in _LOADER_FLAGS:
        cfg.pop(key, None)
    if jinja.exists():
        cfg.setdefault("chat_template", jinja.read_text())
        jinja.unlink()
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
