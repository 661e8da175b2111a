"""Batched HuBERT features and k-means units whose per-utterance result does not depend on the
batch: the model masks padding (see hubert.py), so batching only changes speed."""
from __future__ import annotations

from contextlib import nullcontext
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from omni_ds.units.kmeans import NearestCentroid

if TYPE_CHECKING:      # not imported at run time: the fairseq backend needs no transformers
    from omni_ds.units.hubert import HubertFeatureModel

# fairseq's feature readers cut the waveform into independent 100 s pieces (max_chunk 1.6 M
# samples) and concatenate their features; reproduced so that long files get the same units.
CHUNK_SECONDS = 100


def merge_repeats(units: list[int]) -> list[int]:
    """Keep the first unit of every run of equal units (the "reduced" S2UT units)."""
    return [u for i, u in enumerate(units) if i == 0 or u != units[i - 1]]


class FeatureExtractor:
    """Runs a HubertFeatureModel over many utterances in padded batches of at most
    `batch_seconds` of audio (padding counted), chunked like the reference."""

    def __init__(self, model: "HubertFeatureModel", device: str | torch.device = "cpu",
                 batch_seconds: float = 80.0, dtype: torch.dtype = torch.float32):
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.rate = model.spec.sample_rate
        self.batch_samples = int(batch_seconds * self.rate)
        self.chunk = CHUNK_SECONDS * self.rate
        self.dtype = dtype
        if dtype != torch.float32 and self.device.type == "cpu":
            raise ValueError("reduced precision is for GPUs only; use float32 on CPU")

    def too_short(self, n_samples: int) -> str | None:
        """Why an utterance of n_samples cannot be encoded, or None."""
        need = self.model.min_samples()
        if n_samples < need:
            return f"audio too short: {n_samples} samples < {need} (one frame) at {self.rate} Hz"
        return None

    def _segments(self, waves: list[np.ndarray]) -> list[tuple[int, int, torch.Tensor]]:
        segs = []
        for u, w in enumerate(waves):
            x = torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))
            if reason := self.too_short(len(x)):
                raise ValueError(f"utterance {u}: {reason}")
            if self.model.spec.normalize:     # task.normalize: over the whole waveform, as fairseq
                x = F.layer_norm(x, x.shape)
            for c, start in enumerate(range(0, len(x), self.chunk)):
                piece = x[start:start + self.chunk]
                # A tail shorter than one receptive field gives no frame (fairseq would fail on
                # it; textlesslib skips it): drop it.
                if c == 0 or len(piece) >= self.model.min_samples():
                    segs.append((u, c, piece))
        return segs

    def _groups(self, segs):
        """Longest first, packed while rows * longest <= batch_samples (at least one row)."""
        order = sorted(range(len(segs)), key=lambda i: -len(segs[i][2]))
        group: list[int] = []
        for i in order:
            if group and (len(group) + 1) * len(segs[group[0]][2]) > self.batch_samples:
                yield group
                group = []
            group.append(i)
        if group:
            yield group

    def _autocast(self):
        if self.dtype == torch.float32:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def run(self, waves: list[np.ndarray], per_segment):
        """Call per_segment(seg_index, features [T, D]) for every chunk; returns the segments."""
        segs = self._segments(waves)
        for group in self._groups(segs):
            lengths = torch.tensor([len(segs[i][2]) for i in group])
            batch = torch.zeros(len(group), int(lengths.max()))
            for row, i in enumerate(group):
                batch[row, :len(segs[i][2])] = segs[i][2]
            with self._autocast():
                feats, frames = self.model(batch.to(self.device, non_blocking=True),
                                           lengths.to(self.device))
            for row, i in enumerate(group):
                per_segment(i, feats[row, :int(frames[row])])
        return segs

    def features(self, waves: list[np.ndarray]) -> list[torch.Tensor]:
        """Layer features [T, D] (float32, CPU) per utterance."""
        out: dict[int, torch.Tensor] = {}
        segs = self.run(waves, lambda i, f: out.__setitem__(i, f.float().cpu()))
        return _concat_per_utt(segs, out, len(waves))


def _concat_per_utt(segs, per_seg: dict, n: int) -> list:
    parts: list[list] = [[] for _ in range(n)]
    for i, (u, c, _) in enumerate(segs):
        parts[u].append((c, per_seg[i]))
    return [torch.cat([p for _, p in sorted(ps, key=lambda t: t[0])]) for ps in parts]


class UnitExtractor:
    """Waveforms -> unit ids: features, nearest centroid on the same device, repeats merged."""

    def __init__(self, features: FeatureExtractor, centers: np.ndarray, dedup: bool = True):
        self.fx = features
        self.quantizer = NearestCentroid(centers).to(features.device)
        if self.quantizer.centers_t.shape[0] != features.model.spec.embed_dim:
            raise ValueError(f"k-means dimension {self.quantizer.centers_t.shape[0]} != "
                             f"HuBERT width {features.model.spec.embed_dim}")
        self.dedup = dedup

    # ---- the backend interface (omni_ds.units.job), shared with fairseq_backend -----------------
    @property
    def sample_rate(self) -> int:
        return self.fx.rate

    def too_short(self, n_samples: int) -> str | None:
        return self.fx.too_short(n_samples)

    def try_precision(self, name: str, check_waves: list[np.ndarray]) -> str | None:
        """Switch to bf16/fp16 only when it gives the fp32 units on `check_waves`; a note if not."""
        want = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(name)
        if want is None:
            return None
        if self.fx.device.type == "cpu":
            return "--dtype is GPU-only; using fp32 on CPU"
        ref = self.units(check_waves)
        self.fx.dtype = want
        if self.units(check_waves) != ref:
            self.fx.dtype = torch.float32
            return f"{name} changed units on the check set; using fp32"
        return None

    def frame_units(self, waves: list[np.ndarray]) -> list[torch.Tensor]:
        """Per-frame unit ids (no merging), one LongTensor per utterance."""
        out: dict[int, torch.Tensor] = {}
        segs = self.fx.run(waves, lambda i, f: out.__setitem__(i, self.quantizer(f).cpu()))
        return _concat_per_utt(segs, out, len(waves))

    def units(self, waves: list[np.ndarray]) -> list[list[int]]:
        seqs = [u.tolist() for u in self.frame_units(waves)]
        return [merge_repeats(s) for s in seqs] if self.dedup else seqs
