"""The fairseq HuBERT config fields the mapping depends on, read from a checkpoint, and the
architectures it refuses."""
from __future__ import annotations

import ast
from dataclasses import dataclass

from omni_ds.units.fairseq_checkpoint import StandIn

# fairseq HubertConfig defaults (HuBERT Base), used for keys a checkpoint leaves out.
_DEFAULTS = {
    "_name": "hubert", "extractor_mode": "default", "encoder_layers": 12,
    "encoder_embed_dim": 768, "encoder_ffn_embed_dim": 3072, "encoder_attention_heads": 12,
    "activation_fn": "gelu", "layer_type": "transformer", "layer_norm_first": False,
    "conv_feature_layers": "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2",
    "conv_bias": False, "conv_pos": 128, "conv_pos_groups": 16, "conv_pos_batch_norm": False,
    "pos_conv_depth": 1, "pos_enc_type": "abs",
}

# Fields whose other values change the computation in ways the mapping does not reproduce.
_REQUIRED = {
    "_name": ("hubert",),
    "extractor_mode": ("default",),        # "layer_norm" = per-layer LN convs (HuBERT Large)
    "layer_norm_first": (False,),          # pre-LN encoder (HuBERT Large / X-Large)
    "layer_type": ("transformer",),        # conformer / adapter variants
    "activation_fn": ("gelu",),
    "conv_pos_batch_norm": (False,),
    "pos_conv_depth": (1,),
    "pos_enc_type": ("abs",),
}


def parse_conv_layers(spec: str) -> list[tuple[int, int, int]]:
    """fairseq stores the conv stack as a Python expression ("[(512,10,5)] + [(512,3,2)] * 4");
    evaluate only list/tuple/int literals with + and *, never arbitrary code."""
    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [ev(e) for e in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            a, b = ev(node.left), ev(node.right)
            return a + b if isinstance(node.op, ast.Add) else a * b
        raise ValueError(f"unsupported conv_feature_layers expression: {spec!r}")
    layers = ev(ast.parse(spec, mode="eval"))
    if not all(isinstance(t, tuple) and len(t) == 3 for t in layers):
        raise ValueError(f"conv_feature_layers must be a list of (dim, kernel, stride): {spec!r}")
    return [tuple(int(v) for v in t) for t in layers]


@dataclass(frozen=True)
class HubertSpec:
    conv_layers: tuple[tuple[int, int, int], ...]
    conv_bias: bool
    embed_dim: int
    ffn_dim: int
    heads: int
    layers: int
    conv_pos: int
    conv_pos_groups: int
    normalize: bool          # task.normalize: layer-norm the waveform first
    sample_rate: int


def _config_dicts(state: dict, source: str) -> tuple[dict, dict]:
    cfg = state.get("cfg")
    if isinstance(cfg, dict) and isinstance(cfg.get("model"), dict):
        return cfg["model"], cfg.get("task") or {}
    args = state.get("args")
    if isinstance(args, StandIn):          # pre-2021 checkpoints: an argparse Namespace
        fields = {k: v for k, v in vars(args).items() if not k.startswith("_")}
        return {"_name": fields.get("arch", "hubert"), **fields}, fields
    raise ValueError(f"{source}: no readable model config (cfg is {type(cfg).__name__}); "
                     "omegaconf-pickled configs from old fairseq versions are not supported")


def read_spec(state: dict, source: str) -> HubertSpec:
    """The architecture of a fairseq HuBERT checkpoint; ValueError naming the field when it is
    not the post-LN HuBERT Base family that omni_ds maps."""
    model, task = _config_dicts(state, source)
    get = lambda key: model.get(key, _DEFAULTS[key]) if model.get(key) is not None \
        else _DEFAULTS[key]
    name = get("_name")
    if name == "hubert_base" or name == "mhubert_base":      # legacy arch names
        name = "hubert"
    for key, allowed in _REQUIRED.items():
        value = name if key == "_name" else get(key)
        if value not in allowed:
            raise ValueError(f"{source}: unsupported HuBERT architecture: {key}={value!r} "
                             f"(omni_ds maps only {key} in {list(allowed)}, the post-LN "
                             "HuBERT Base family that mHuBERT belongs to)")
    if task.get("fine_tuning"):
        raise ValueError(f"{source}: fine-tuned HuBERT checkpoints are not supported")
    dim, heads = int(get("encoder_embed_dim")), int(get("encoder_attention_heads"))
    if dim % heads or dim % int(get("conv_pos_groups")):
        raise ValueError(f"{source}: encoder_embed_dim={dim} not divisible by heads/groups")
    return HubertSpec(
        conv_layers=tuple(parse_conv_layers(get("conv_feature_layers"))),
        conv_bias=bool(get("conv_bias")), embed_dim=dim,
        ffn_dim=int(get("encoder_ffn_embed_dim")), heads=heads,
        layers=int(get("encoder_layers")), conv_pos=int(get("conv_pos")),
        conv_pos_groups=int(get("conv_pos_groups")),
        normalize=bool(task.get("normalize", False)),
        sample_rate=int(task.get("sample_rate", 16000)))
