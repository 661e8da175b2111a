"""A tiny random unit HiFi-GAN folder (fairseq's layout: g_00500000 + config.json) for tests and
the demo: the same architecture as the released mHuBERT km1000 vocoder, 32 channels wide."""
from __future__ import annotations

import json
from pathlib import Path

import torch

TINY_VOCODER_CONFIG = {
    "resblock": "1", "upsample_rates": [5, 4, 4, 2, 2], "upsample_kernel_sizes": [11, 8, 8, 4, 4],
    "upsample_initial_channel": 32, "resblock_kernel_sizes": [3, 7, 11],
    "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]], "num_embeddings": 1000,
    "embedding_dim": 16, "model_in_dim": 16, "code_hop_size": 320, "sampling_rate": 16000,
    "dur_predictor_params": {"encoder_embed_dim": 16, "var_pred_hidden_dim": 16,
                             "var_pred_kernel_size": 3, "var_pred_dropout": 0.5},
}


def write_tiny_vocoder(out_dir, seed: int = 0, **config) -> Path:
    """`config` overrides TINY_VOCODER_CONFIG keys (e.g. num_embeddings)."""
    from omni_ds.vocoder import UnitVocoder
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = {**TINY_VOCODER_CONFIG, **config}
    (out / "config.json").write_text(json.dumps(cfg, indent=1))
    torch.manual_seed(seed)
    torch.save({"generator": UnitVocoder(cfg).state_dict()}, out / "g_00500000")
    return out
