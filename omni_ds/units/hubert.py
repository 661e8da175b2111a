"""fairseq HuBERT (mHuBERT Base family) mapped onto transformers' HubertModel, with a padded
batch forward whose per-utterance output equals fairseq's unbatched
`extract_features(source, padding_mask=None, mask=False, output_layer=layer)`."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import HubertConfig, HubertModel

from omni_ds.hf_compat import layer_hidden_states
from omni_ds.units.fairseq_checkpoint import load_fairseq_checkpoint
from omni_ds.units.hubert_config import HubertSpec, read_spec

# Pre-training heads and the mask embedding play no part in extract_features.
_IGNORED_PREFIXES = ("final_proj.", "label_embs_concat", "mask_emb")


def _hf_config(spec: HubertSpec, layer: int) -> HubertConfig:
    cfg = HubertConfig(
        hidden_size=spec.embed_dim, num_hidden_layers=layer,   # blocks after `layer` never run
        num_attention_heads=spec.heads, intermediate_size=spec.ffn_dim, hidden_act="gelu",
        conv_dim=[c[0] for c in spec.conv_layers], conv_kernel=[c[1] for c in spec.conv_layers],
        conv_stride=[c[2] for c in spec.conv_layers], conv_bias=spec.conv_bias,
        feat_extract_norm="group", feat_extract_activation="gelu",
        num_conv_pos_embeddings=spec.conv_pos, num_conv_pos_embedding_groups=spec.conv_pos_groups,
        do_stable_layer_norm=False, feat_proj_layer_norm=True, layer_norm_eps=1e-5,
        hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
        layerdrop=0.0, apply_spec_augment=False)
    cfg._attn_implementation = "sdpa"
    return cfg


def _fairseq_to_hf_names(spec: HubertSpec, layer: int) -> dict[str, str]:
    """fairseq parameter name -> HubertModel parameter name, for the blocks that run."""
    m = {"layer_norm.weight": "feature_projection.layer_norm.weight",
         "layer_norm.bias": "feature_projection.layer_norm.bias",
         "post_extract_proj.weight": "feature_projection.projection.weight",
         "post_extract_proj.bias": "feature_projection.projection.bias",
         "encoder.pos_conv.0.bias": "encoder.pos_conv_embed.conv.bias",
         "encoder.pos_conv.0.weight_g": "encoder.pos_conv_embed.conv.parametrizations.weight.original0",
         "encoder.pos_conv.0.weight_v": "encoder.pos_conv_embed.conv.parametrizations.weight.original1",
         "encoder.layer_norm.weight": "encoder.layer_norm.weight",
         "encoder.layer_norm.bias": "encoder.layer_norm.bias"}
    for i in range(len(spec.conv_layers)):
        m[f"feature_extractor.conv_layers.{i}.0.weight"] = f"feature_extractor.conv_layers.{i}.conv.weight"
        if spec.conv_bias:
            m[f"feature_extractor.conv_layers.{i}.0.bias"] = f"feature_extractor.conv_layers.{i}.conv.bias"
    for p in ("weight", "bias"):      # the GroupNorm exists in conv layer 0 only ("default" mode)
        m[f"feature_extractor.conv_layers.0.2.{p}"] = f"feature_extractor.conv_layers.0.layer_norm.{p}"
    block = {"self_attn.k_proj": "attention.k_proj", "self_attn.v_proj": "attention.v_proj",
             "self_attn.q_proj": "attention.q_proj", "self_attn.out_proj": "attention.out_proj",
             "self_attn_layer_norm": "layer_norm", "fc1": "feed_forward.intermediate_dense",
             "fc2": "feed_forward.output_dense", "final_layer_norm": "final_layer_norm"}
    for i in range(layer):
        for src, dst in block.items():
            for p in ("weight", "bias"):
                m[f"encoder.layers.{i}.{src}.{p}"] = f"encoder.layers.{i}.{dst}.{p}"
    return m


def conv_output_lengths(lengths: torch.Tensor, conv_layers) -> list[torch.Tensor]:
    """Valid output frames after each conv layer (fairseq/HF formula, no padding)."""
    out = []
    for _, k, s in conv_layers:
        lengths = torch.div(lengths - k, s, rounding_mode="floor") + 1
        out.append(lengths)
    return out


def _masked_group_norm(x: torch.Tensor, lengths: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
    """GroupNorm (conv layer 0) of each row over its valid frames only: unbatched fairseq
    normalizes over the utterance, so padding must not enter the statistics. Each row's valid
    slice goes through the same F.group_norm as fairseq's Fp32GroupNorm (fp32); padded frames
    are set to 0 (they only ever feed padded output frames)."""
    x = x.float()
    lens = lengths.tolist()
    if all(n == x.shape[-1] for n in lens):
        return F.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps)
    out = torch.zeros_like(x)
    for b, n in enumerate(lens):
        out[b:b + 1, :, :n] = F.group_norm(x[b:b + 1, :, :n], norm.num_groups, norm.weight,
                                           norm.bias, norm.eps)
    return out


class HubertFeatureModel(nn.Module):
    """HubertModel weights + the padded batch forward up to block `layer` (1-based)."""

    def __init__(self, spec: HubertSpec, layer: int):
        super().__init__()
        if not 1 <= layer <= spec.layers:
            raise ValueError(f"layer {layer} out of range 1..{spec.layers}")
        self.spec, self.layer = spec, layer
        self.hf = HubertModel(_hf_config(spec, layer)).eval()

    @property
    def frame_rate(self) -> float:
        stride = 1
        for _, _, s in self.spec.conv_layers:
            stride *= s
        return self.spec.sample_rate / stride

    def min_samples(self) -> int:
        """Shortest input that yields one frame (400 samples for HuBERT Base)."""
        n = 1
        for _, k, s in reversed(self.spec.conv_layers):
            n = (n - 1) * s + k
        return n

    def frames(self, samples: torch.Tensor) -> torch.Tensor:
        return conv_output_lengths(samples, self.spec.conv_layers)[-1]

    @torch.inference_mode()
    def forward(self, waves: torch.Tensor, lengths: torch.Tensor):
        """waves [B, N] right-padded (any pad value), lengths [B] samples ->
        (features [B, T, D] of block `layer`, frames [B]); frames past a row's length are junk."""
        hf = self.hf
        lens = conv_output_lengths(lengths.to(waves.device), self.spec.conv_layers)
        x = waves[:, None, :]
        for i, conv in enumerate(hf.feature_extractor.conv_layers):
            x = conv.conv(x)
            if i == 0:
                x = _masked_group_norm(x, lens[0], conv.layer_norm)
            x = conv.activation(x)
        frames = lens[-1]
        x = hf.feature_projection(x.transpose(1, 2))
        valid = torch.arange(x.shape[1], device=x.device)[None, :] < frames[:, None]
        # Zero padded frames: the positional conv must see what unbatched input sees (zeros).
        x = x.masked_fill(~valid[..., None], 0.0)
        x = x + hf.encoder.pos_conv_embed(x)
        x = hf.encoder.layer_norm(x)
        # Boolean key mask (True = attend; dtype-independent, so autocast on GPU is fine);
        # every query keeps its own row's valid keys, so no softmax row is empty.
        mask = None if bool(valid.all()) else valid[:, None, None, :]
        for block in hf.encoder.layers:
            x = layer_hidden_states(block(x, attention_mask=mask))
        return x, frames


def load_hubert(path: str | Path, layer: int = 11) -> HubertFeatureModel:
    """Build the feature model from a fairseq HuBERT `.pt` (no fairseq needed)."""
    state = load_fairseq_checkpoint(path)
    spec = read_spec(state, str(path))
    model = HubertFeatureModel(spec, layer)
    names = _fairseq_to_hf_names(spec, layer)
    src = state["model"]
    block_re = [f"encoder.layers.{i}." for i in range(layer, spec.layers)]
    unknown = [k for k in src if k not in names and not k.startswith(_IGNORED_PREFIXES)
               and not k.startswith(tuple(block_re))]
    if unknown:
        raise ValueError(f"{path}: checkpoint has parameters the HuBERT mapping does not know "
                         f"(different architecture?): {unknown[:8]}")
    target = dict(model.hf.named_parameters())
    missing = [f for f, h in names.items() if f not in src]
    if missing:
        raise ValueError(f"{path}: checkpoint lacks parameters {missing[:8]}")
    with torch.no_grad():
        for f, h in names.items():
            if target[h].shape != src[f].shape:
                raise ValueError(f"{path}: {f} has shape {tuple(src[f].shape)}, "
                                 f"expected {tuple(target[h].shape)}")
            target[h].copy_(src[f].float())
    unfilled = set(target) - set(names.values()) - {"masked_spec_embed"}
    if unfilled:
        raise ValueError(f"{path}: no checkpoint weights for {sorted(unfilled)[:8]}")
    # Fold the weight norm once (same torch._weight_norm as fairseq, computed a single time).
    torch.nn.utils.parametrize.remove_parametrizations(
        model.hf.encoder.pos_conv_embed.conv, "weight", leave_parametrized=True)
    return model.eval()
