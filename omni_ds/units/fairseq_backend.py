"""`--backend fairseq`: the reference code path (fairseq's own HubertModel, one utterance at a
time, 100 s chunks) for users who want it; needs the `fairseq` extra. Quantization uses the same
nearest-centroid GEMM as the default backend."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from omni_ds.units.extract import CHUNK_SECONDS, merge_repeats
from omni_ds.units.hubert_config import parse_conv_layers
from omni_ds.units.kmeans import NearestCentroid


class FairseqUnitExtractor:
    def __init__(self, checkpoint: str, centers: np.ndarray, layer: int = 11,
                 device: str = "cpu", dedup: bool = True):
        try:
            from fairseq import checkpoint_utils
            from fairseq.data.dictionary import Dictionary
        except ImportError as err:
            raise ImportError("--backend fairseq needs fairseq: pip install 'omni_ds[fairseq]' "
                              "(fairseq-fixed on Python >= 3.11)") from err
        # torch >= 2.6 loads weights-only by default and fairseq 0.12 does not opt out; allow the
        # one fairseq class a HuBERT checkpoint pickles (the label Dictionary), nothing more.
        with torch.serialization.safe_globals([Dictionary]):
            models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([checkpoint])
        self.model = models[0].eval().to(device)
        self.device, self.layer, self.dedup = torch.device(device), layer, dedup
        self.normalize = bool(task.cfg.normalize)
        self.sample_rate = int(task.cfg.sample_rate)
        self.quantizer = NearestCentroid(centers).to(device)
        n = 1
        for _, k, s in reversed(parse_conv_layers(cfg.model.conv_feature_layers)):
            n = (n - 1) * s + k
        self._min = n

    def too_short(self, n_samples: int) -> str | None:
        if n_samples < self._min:
            return f"audio too short: {n_samples} samples < {self._min} (one frame)"
        return None

    def try_precision(self, name: str, check_waves) -> str | None:
        """The reference path runs in fp32 only."""
        return None if name == "fp32" else f"--backend fairseq runs in fp32; --dtype {name} ignored"

    @torch.inference_mode()
    def _frame_units(self, wave: np.ndarray) -> list[int]:
        x = torch.from_numpy(np.asarray(wave, dtype=np.float32)).to(self.device)
        if self.normalize:
            x = F.layer_norm(x, x.shape)
        x = x.view(1, -1)
        chunk, units = CHUNK_SECONDS * self.sample_rate, []
        for start in range(0, x.shape[1], chunk):
            piece = x[:, start:start + chunk]
            if start and piece.shape[1] < self._min:
                break                      # a tail shorter than one frame gives no feature
            feats, _ = self.model.extract_features(source=piece, padding_mask=None, mask=False,
                                                   output_layer=self.layer)
            units += self.quantizer(feats[0]).tolist()
        return units

    def units(self, waves: list[np.ndarray]) -> list[list[int]]:
        seqs = [self._frame_units(w) for w in waves]
        return [merge_repeats(s) for s in seqs] if self.dedup else seqs
