"""Whisper encoder dimensions: read from where the checkpoint states them, checked against the weights.

Sources, each authoritative for its format:
  - an openai-whisper `.pt` carries `dims` (n_mels, n_audio_ctx, n_audio_state, n_audio_head,
    n_audio_layer): the official LLaMA-Omni code builds its encoder from them;
  - a Hugging Face Whisper folder has its `config.json`;
  - a folder saved by omni_ds has `config.json["omni_ds"]["speech_encoder_config"]`.
The head count cannot be read off the weights (q/k/v are [D, D] whatever the split), so it is
never guessed: a source without one is an error. Every dimension the weights do show is compared
with the stated one; a mismatch is an error that names both values.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from transformers import WhisperConfig

# WhisperConfig key -> openai-whisper `dims` key
_FROM_DIMS = {"num_mel_bins": "n_mels", "max_source_positions": "n_audio_ctx", "d_model": "n_audio_state",
              "encoder_attention_heads": "n_audio_head", "encoder_layers": "n_audio_layer"}
SAVED_KEYS = ("num_mel_bins", "d_model", "encoder_layers", "encoder_attention_heads", "encoder_ffn_dim",
              "max_source_positions", "activation_function")


class WhisperDimsError(ValueError):
    """The stated encoder dimensions are missing or disagree with the weights."""


def dims_from_weights(state: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """What openai-whisper-named encoder weights show: everything but the head count."""
    blocks = [int(k.split(".")[1]) for k in state if k.startswith("blocks.")]
    return {"d_model": state["conv1.weight"].shape[0], "num_mel_bins": state["conv1.weight"].shape[1],
            "encoder_layers": 1 + max(blocks) if blocks else 0,
            "encoder_ffn_dim": state["blocks.0.mlp.0.weight"].shape[0] if blocks else 0,
            "max_source_positions": state["positional_embedding"].shape[0]}


def check_against_weights(config: WhisperConfig, state: Mapping[str, torch.Tensor], source: str) -> WhisperConfig:
    """`config` unchanged when every dimension the weights show agrees with it, else an error."""
    seen = dims_from_weights(state)
    wrong = [f"{k} = {getattr(config, k)} (stated) but {v} (weights)" for k, v in seen.items()
             if getattr(config, k) != v]
    heads = config.encoder_attention_heads
    if not isinstance(heads, int) or heads < 1 or config.d_model % heads:
        wrong.append(f"encoder_attention_heads = {heads!r} does not divide d_model = {config.d_model}")
    if wrong:
        raise WhisperDimsError(f"{source}: Whisper encoder dimensions disagree: " + "; ".join(wrong))
    return config


def _config(values: dict[str, Any]) -> WhisperConfig:
    heads = values["encoder_attention_heads"]
    return WhisperConfig(decoder_layers=1, decoder_attention_heads=heads, decoder_ffn_dim=4 * values["d_model"],
                         **values)


def config_from_openai_checkpoint(dims: Any, state: Mapping[str, torch.Tensor], source: str) -> WhisperConfig:
    """The encoder config of an openai-whisper checkpoint: its `dims`, checked against its weights."""
    if not isinstance(dims, Mapping):
        raise WhisperDimsError(f"{source}: no 'dims' in this openai-whisper checkpoint; its encoder's "
                               "head count cannot be read off the weights")
    missing = [v for v in _FROM_DIMS.values() if v not in dims]
    if missing:
        raise WhisperDimsError(f"{source}: 'dims' lacks {missing} (has {sorted(dims)})")
    values = {k: int(dims[v]) for k, v in _FROM_DIMS.items()}
    values["encoder_ffn_dim"] = dims_from_weights(state)["encoder_ffn_dim"]   # openai-whisper: 4 x width
    return check_against_weights(_config(values), state, source)


def config_from_saved(saved: Mapping[str, Any], state: Mapping[str, torch.Tensor], source: str) -> WhisperConfig:
    """The encoder config omni_ds wrote into a folder's config.json, checked against its weights."""
    missing = [k for k in SAVED_KEYS[:-1] if k not in saved]
    if missing:
        raise WhisperDimsError(f"{source}: omni_ds.speech_encoder_config lacks {missing}")
    return check_against_weights(_config({k: saved[k] for k in SAVED_KEYS if k in saved}), state, source)


# The published openai-whisper encoders: (width, layers) -> heads (dims of their .pt files).
PUBLISHED_HEADS = {(384, 4): 6, (512, 6): 8, (768, 12): 12, (1024, 24): 16, (1280, 32): 20}


def config_from_published_size(state: Mapping[str, torch.Tensor], source: str) -> WhisperConfig:
    """Weights with no stated dimensions: accepted only when they are one of the published
    Whisper sizes (tiny ... large-v3), whose head counts are known; anything else is refused."""
    seen = dims_from_weights(state)
    heads = PUBLISHED_HEADS.get((seen["d_model"], seen["encoder_layers"]))
    if heads is None:
        raise WhisperDimsError(
            f"{source}: the speech encoder ({seen['d_model']} wide, {seen['encoder_layers']} layers) states no "
            "head count and is no published Whisper size; put the openai-whisper .pt that config.json's "
            "'speech_encoder' names beside the folder, or add omni_ds.speech_encoder_config")
    return _config(dict(seen, encoder_attention_heads=heads))


def saved_dims(config: WhisperConfig) -> dict[str, Any]:
    """What config_from_saved reads back."""
    return {k: getattr(config, k) for k in SAVED_KEYS}
