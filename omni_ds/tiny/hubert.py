"""Tiny random-weight mHuBERT-architecture checkpoint in fairseq's `.pt` layout (fairseq not
needed), and a scikit-learn k-means fitted on its features, saved like the released `.bin`.

The architecture is mHuBERT Base scaled down in width only: the same conv stack shape (stride 320,
50 frames/s), GroupNorm in conv 0, weight-normed positional conv (kernel 128, 16 groups), 12
post-LN blocks so that layer 11 exists. Every parameter, biases and norms included, is random so
that a wrong name mapping shows up as different features.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from omni_ds.units.fairseq_checkpoint import save_fairseq_checkpoint, stand_in_class

TINY_CONV_DIM = 64
TINY_WIDTH = 96
TINY_HEADS = 4
TINY_FFN = 384
TINY_LAYERS = 12


def tiny_model_config(conv_dim: int = TINY_CONV_DIM, width: int = TINY_WIDTH,
                      heads: int = TINY_HEADS, ffn: int = TINY_FFN,
                      layers: int = TINY_LAYERS) -> dict:
    """fairseq HubertConfig fields (as `OmegaConf.to_container` writes them)."""
    return {
        "_name": "hubert", "label_rate": 50.0, "extractor_mode": "default",
        "encoder_layers": layers, "encoder_embed_dim": width, "encoder_ffn_embed_dim": ffn,
        "encoder_attention_heads": heads, "activation_fn": "gelu", "layer_type": "transformer",
        "dropout": 0.1, "attention_dropout": 0.1, "activation_dropout": 0.0,
        "encoder_layerdrop": 0.05, "dropout_input": 0.1, "dropout_features": 0.1,
        "final_dim": 32, "untie_final_proj": True, "layer_norm_first": False,
        "conv_feature_layers": f"[({conv_dim},10,5)] + [({conv_dim},3,2)] * 4 + [({conv_dim},2,2)] * 2",
        "conv_bias": False, "logit_temp": 0.1, "target_glu": False, "feature_grad_mult": 0.1,
        "mask_length": 10, "mask_prob": 0.8, "mask_selection": "static", "mask_other": 0.0,
        "no_mask_overlap": False, "mask_min_space": 1, "mask_channel_length": 10,
        "mask_channel_prob": 0.0, "mask_channel_selection": "static", "mask_channel_other": 0.0,
        "no_mask_channel_overlap": False, "mask_channel_min_space": 1, "conv_pos": 128,
        "conv_pos_groups": 16, "conv_pos_batch_norm": False, "latent_temp": [2.0, 0.5, 0.999995],
        "skip_masked": False, "skip_nomask": False, "checkpoint_activations": False,
        "required_seq_len_multiple": 2, "depthwise_conv_kernel_size": 31, "attn_type": "",
        "pos_enc_type": "abs", "fp16": False,
    }


def _task_config(normalize: bool, n_labels: int) -> dict:
    return {"_name": "hubert_pretraining", "data": "/tiny/data", "fine_tuning": False,
            "labels": ["km"], "label_dir": "/tiny/labels", "label_rate": 50.0,
            "sample_rate": 16000, "normalize": normalize, "enable_padding": False,
            "max_keep_size": None, "max_sample_size": 250000, "min_sample_size": 32000,
            "single_target": False, "random_crop": True, "pad_audio": False}


def _dictionary(n_labels: int):
    """A fairseq Dictionary's pickled state (the km label vocabulary), written under fairseq's
    class name so that the file has the same globals as a real fairseq checkpoint."""
    symbols = ["<s>", "<pad>", "</s>", "<unk>"] + [str(i) for i in range(n_labels)]
    d = stand_in_class("fairseq.data.dictionary", "Dictionary")()
    d.__setstate__({"bos_word": "<s>", "unk_word": "<unk>", "pad_word": "<pad>",
                    "eos_word": "</s>", "symbols": symbols, "count": [1] * len(symbols),
                    "indices": {s: i for i, s in enumerate(symbols)}, "bos_index": 0,
                    "pad_index": 1, "eos_index": 2, "unk_index": 3, "nspecial": 4})
    return d


def _random_weights(mc: dict, n_labels: int, seed: int) -> dict[str, torch.Tensor]:
    from omni_ds.units.hubert_config import parse_conv_layers
    g = torch.Generator().manual_seed(seed)
    randn = lambda *shape, std=1.0: torch.randn(*shape, generator=g) * std
    norm_w = lambda n: 1.0 + randn(n, std=0.1)                   # not 1: catches LN swaps
    sd: dict[str, torch.Tensor] = {}
    c_in = 1
    for i, (dim, k, _) in enumerate(parse_conv_layers(mc["conv_feature_layers"])):
        sd[f"feature_extractor.conv_layers.{i}.0.weight"] = randn(dim, c_in, k,
                                                                   std=math.sqrt(2 / (c_in * k)))
        if i == 0:
            sd["feature_extractor.conv_layers.0.2.weight"] = norm_w(dim)
            sd["feature_extractor.conv_layers.0.2.bias"] = randn(dim, std=0.1)
        c_in = dim
    D, F, K, G = (mc["encoder_embed_dim"], mc["encoder_ffn_embed_dim"], mc["conv_pos"],
                  mc["conv_pos_groups"])
    sd["layer_norm.weight"], sd["layer_norm.bias"] = norm_w(c_in), randn(c_in, std=0.1)
    sd["post_extract_proj.weight"] = randn(D, c_in, std=1 / math.sqrt(c_in))
    sd["post_extract_proj.bias"] = randn(D, std=0.1)
    sd["mask_emb"] = torch.rand(D, generator=g)
    # Weight norm over dim 2 (fairseq's pos_conv): g has shape (1, 1, K).
    v = randn(D, D // G, K, std=math.sqrt(4 / (K * D)))
    sd["encoder.pos_conv.0.bias"] = randn(D, std=0.1)
    sd["encoder.pos_conv.0.weight_g"] = v.norm(dim=(0, 1), keepdim=True) * (1 + randn(1, 1, K, std=0.1))
    sd["encoder.pos_conv.0.weight_v"] = v
    for i in range(mc["encoder_layers"]):
        p = f"encoder.layers.{i}."
        # 0.3 / sqrt(fan_in): each block changes the features, yet frames stay distinct. At full
        # scale near-uniform random attention averages the frames together over 11 blocks and
        # every frame ends up almost equidistant from the k-means centroids (fragile units).
        for name in ("k_proj", "v_proj", "q_proj", "out_proj"):
            sd[p + f"self_attn.{name}.weight"] = randn(D, D, std=0.3 / math.sqrt(D))
            sd[p + f"self_attn.{name}.bias"] = randn(D, std=0.1)
        sd[p + "self_attn_layer_norm.weight"] = norm_w(D)
        sd[p + "self_attn_layer_norm.bias"] = randn(D, std=0.1)
        sd[p + "fc1.weight"], sd[p + "fc1.bias"] = randn(F, D, std=0.3 / math.sqrt(D)), randn(F, std=0.1)
        sd[p + "fc2.weight"], sd[p + "fc2.bias"] = randn(D, F, std=0.3 / math.sqrt(F)), randn(D, std=0.1)
        sd[p + "final_layer_norm.weight"] = norm_w(D)
        sd[p + "final_layer_norm.bias"] = randn(D, std=0.1)
    sd["encoder.layer_norm.weight"] = norm_w(D)
    sd["encoder.layer_norm.bias"] = randn(D, std=0.1)
    fd = mc["final_dim"]
    sd["label_embs_concat"] = randn(n_labels + 4, fd)
    sd["final_proj.weight"], sd["final_proj.bias"] = randn(fd, D, std=0.1), randn(fd, std=0.1)
    return sd


def write_tiny_hubert(out_path: str | Path, *, seed: int = 0, normalize: bool = False,
                      n_labels: int = 100, **arch) -> Path:
    """Write a random-weight mHuBERT-architecture checkpoint; `arch` overrides
    tiny_model_config's arguments (conv_dim, width, heads, ffn, layers). Deterministic."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    mc = tiny_model_config(**arch)
    state = {
        "args": None,
        "cfg": {"_name": None, "common": {"_name": None, "seed": 1, "fp16": False},
                "checkpoint": {"_name": None, "save_dir": "checkpoints"},
                "model": mc, "task": _task_config(normalize, n_labels),
                "criterion": {"_name": "hubert", "pred_masked_weight": 1.0,
                              "pred_nomask_weight": 0.0, "loss_weights": [10.0]}},
        "model": _random_weights(mc, n_labels, seed),
        "criterion": None,
        "optimizer_history": [{"criterion_name": "HubertCriterion", "optimizer_name": "FairseqAdam",
                               "lr_scheduler_state": {"best": None}, "num_updates": 0}],
        "task_state": {"dictionaries": [_dictionary(n_labels)]},
        "extra_state": {"previous_training_time": 0.0},
    }
    save_fairseq_checkpoint(state, out_path)
    return out_path


def write_tiny_kmeans(hubert_path: str | Path, wav_paths, out_path: str | Path,
                      n_clusters: int = 50, *, layer: int = 11, seed: int = 0) -> Path:
    """Fit scikit-learn KMeans on the checkpoint's layer features of `wav_paths` and joblib-dump
    it like the released km1000 `.bin` (needs the `units` extra). Deterministic."""
    import joblib
    import numpy as np
    from sklearn.cluster import KMeans

    from omni_ds.data.audio import load_audio
    from omni_ds.units.extract import FeatureExtractor
    from omni_ds.units.hubert import load_hubert

    extractor = FeatureExtractor(load_hubert(hubert_path, layer=layer))
    waves = [load_audio(p, 16000) for p in wav_paths]
    feats = np.concatenate([f.numpy() for f in extractor.features(waves)])
    if len(feats) < n_clusters:
        raise ValueError(f"{len(feats)} frames from {len(waves)} files < {n_clusters} clusters")
    km = KMeans(n_clusters=n_clusters, n_init=4, random_state=seed).fit(feats.astype(np.float32))
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(km, out_path)
    return out_path
