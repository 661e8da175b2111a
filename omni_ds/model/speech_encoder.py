"""The frozen Whisper speech encoder, in padded (official) or trimmed mode.

Padded: every clip is 30 s = 3000 mel frames -> 1500 encoder frames, as the released model was
trained. Trimmed: only the clip's real frames are encoded; position embeddings are sliced to the
shortened length, so cost and output length grow with the clip instead of always being 30 s.
In trimmed mode padding inside a batch is masked out (mel zeroed, conv output zeroed, attention
masked) so a clip's features do not depend on what else is in its batch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from omni_ds.constants import N_FRAMES
from omni_ds.hf_compat import layer_hidden_states, whisper_encoder_layer_kwargs


def encoder_output_frames(mel_frames: torch.Tensor | int):
    """Frames after conv2 (kernel 3, stride 2, padding 1): floor((T + 1) / 2)."""
    return (mel_frames + 1) // 2


class WhisperSpeechEncoder(nn.Module):
    """Wraps transformers' WhisperEncoder; always eval, never trained."""

    def __init__(self, config: WhisperConfig, mode: str = "padded"):
        super().__init__()
        self.config = config
        self.mode = mode
        self.encoder = WhisperEncoder(config)
        self.requires_grad_(False)
        self.eval()

    @property
    def hidden_size(self) -> int:
        return self.config.d_model

    def train(self, mode: bool = True) -> "WhisperSpeechEncoder":
        # Frozen: dropout/layerdrop must never switch on, whatever the caller's mode.
        return super().train(False)

    @torch.no_grad()
    def forward(self, mel: torch.Tensor, mel_frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """mel [B, n_mels, T], mel_frames [B] -> (states [B, T', D], lengths [B])."""
        enc = self.encoder
        dtype = enc.conv1.weight.dtype
        mel = mel.to(dtype)
        if self.mode == "padded":
            if mel.shape[-1] != N_FRAMES:
                raise ValueError(f"padded encoder mode expects {N_FRAMES} mel frames, got {mel.shape[-1]}")
            lengths = torch.full_like(mel_frames, enc.config.max_source_positions)
            return enc(mel).last_hidden_state, lengths

        max_positions = enc.config.max_source_positions
        if mel.shape[-1] > 2 * max_positions:
            raise ValueError(f"trimmed encoder mode: {mel.shape[-1]} mel frames exceed the encoder's "
                             f"{2 * max_positions}")
        frames = torch.arange(mel.shape[-1], device=mel.device)
        mel = mel * (frames[None, :] < mel_frames[:, None]).to(dtype)[:, None, :]
        x = F.gelu(enc.conv1(mel))
        x = x * (frames[None, :] < mel_frames[:, None]).to(dtype)[:, None, :]
        x = F.gelu(enc.conv2(x)).transpose(1, 2)                       # [B, T', D]
        lengths = encoder_output_frames(mel_frames)
        x = x + enc.embed_positions.weight[: x.shape[1]].to(dtype)
        valid = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]
        mask = torch.zeros(valid.shape, dtype=dtype, device=x.device)
        mask = mask.masked_fill(~valid, torch.finfo(dtype).min)[:, None, None, :]
        for layer in enc.layers:
            x = layer_hidden_states(layer(x, attention_mask=mask, **whisper_encoder_layer_kwargs(layer)))
        return enc.layer_norm(x), lengths


# ---- openai-whisper <-> transformers parameter names -----------------------------------------
# transformers' encoder-relative names -> openai-whisper's; per block, then top level.
_BLOCK_NAMES = {
    "self_attn.q_proj": "attn.query", "self_attn.k_proj": "attn.key",
    "self_attn.v_proj": "attn.value", "self_attn.out_proj": "attn.out",
    "self_attn_layer_norm": "attn_ln", "fc1": "mlp.0", "fc2": "mlp.2", "final_layer_norm": "mlp_ln",
}
_TOP_NAMES = {"conv1": "conv1", "conv2": "conv2", "layer_norm": "ln_post"}
_TO_OPENAI = ("layers", "blocks", _BLOCK_NAMES, _TOP_NAMES)
_TO_HF = ("blocks", "layers", {v: k for k, v in _BLOCK_NAMES.items()}, {v: k for k, v in _TOP_NAMES.items()})


def _rename(name: str, table, positions: tuple[str, str]) -> str:
    src_blocks, dst_blocks, block_names, top_names = table
    if name == positions[0]:
        return positions[1]
    parts = name.split(".")
    inner = ".".join(parts[2:-1])
    if parts[0] == src_blocks and inner in block_names:
        return f"{dst_blocks}.{parts[1]}.{block_names[inner]}.{parts[-1]}"
    if len(parts) == 2 and parts[0] in top_names:
        return f"{top_names[parts[0]]}.{parts[-1]}"
    raise KeyError(f"Whisper encoder parameter {name!r} has no counterpart name")


def hf_to_openai_name(name: str) -> str:
    """'layers.3.self_attn.q_proj.weight' -> 'blocks.3.attn.query.weight' (encoder-relative names)."""
    return _rename(name, _TO_OPENAI, ("embed_positions.weight", "positional_embedding"))


def openai_to_hf_name(name: str) -> str:
    return _rename(name, _TO_HF, ("positional_embedding", "embed_positions.weight"))
