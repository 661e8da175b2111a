"""Batched HuBERT features and k-means units whose per-utterance result does not depend on the
batch: the model masks padding (see hubert.py), so batching only changes speed."""
from __future__ import annotations

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

# --dtype bf16/fp16 is kept only when this share of the check frames get the fp32 units (the
# full-size benchmark measures more; the check guards against a checkpoint or device where
# reduced precision goes wrong, on a few hundred frames, so it leaves a margin for noise).
MIN_AGREEMENT = 0.995


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
        self._cpu_bf16 = None
        self.dtype = torch.float32
        self.set_dtype(dtype)

    def set_dtype(self, dtype: torch.dtype) -> None:
        """fp32; bf16/fp16 by autocast on a GPU; bf16 on a CPU by the prepared forward of
        cpu_bf16 (autocast there is slower than needed: see that module)."""
        if dtype != torch.float32 and self.device.type == "cpu":
            from omni_ds.units.cpu_bf16 import CpuBf16Forward, cpu_supports_bf16
            if dtype != torch.bfloat16:
                raise ValueError("on CPU only fp32 and bf16 are supported (fp16 is for GPUs)")
            if not cpu_supports_bf16():
                raise ValueError("this CPU has no native bf16 (AVX512-BF16/AMX): bf16 would be "
                                 "slower than fp32; use fp32")
            self._cpu_bf16 = self._cpu_bf16 or CpuBf16Forward(self.model)
        self.dtype = dtype

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

    def _forward(self, batch: torch.Tensor, lengths: torch.Tensor):
        if self.dtype == torch.float32:
            return self.model(batch, lengths)
        if self.device.type == "cpu":
            return self._cpu_bf16(batch, lengths)
        with torch.autocast(self.device.type, dtype=self.dtype):
            return self.model(batch, lengths)

    def run(self, waves: list[np.ndarray], per_segment):
        """Call per_segment(seg_index, features [T, D]) for every chunk; returns the segments."""
        segs = self._segments(waves)
        for group in self._groups(segs):
            lengths = torch.tensor([len(segs[i][2]) for i in group])
            batch = torch.zeros(len(group), int(lengths.max()))
            for row, i in enumerate(group):
                batch[row, :len(segs[i][2])] = segs[i][2]
            feats, frames = self._forward(batch.to(self.device, non_blocking=True),
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
        """Switch to bf16/fp16 when, on `check_waves`, at least MIN_AGREEMENT of the frames get
        the fp32 units; else stay in fp32. The note says which and the agreement measured."""
        want = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(name)
        if want is None:
            return None
        ref = self.frame_units(check_waves)
        try:
            self.fx.set_dtype(want)
        except ValueError as err:
            return f"{err}; using fp32"
        got = self.frame_units(check_waves)
        frames = sum(len(r) for r in ref)
        same = sum(int((a == b).sum()) for a, b in zip(ref, got))
        share = same / max(frames, 1)
        where = f"{name} on {self.fx.device.type}: {same}/{frames} frames ({100 * share:.3f} %) " \
                f"of the first batch get the fp32 units"
        if share < MIN_AGREEMENT:
            self.fx.set_dtype(torch.float32)
            return f"{where}, below {100 * MIN_AGREEMENT:g} %; using fp32"
        return f"{where}; using {name} (its units may differ from fp32's in a few frames per thousand)"

    def frame_units(self, waves: list[np.ndarray]) -> list[torch.Tensor]:
        """Per-frame unit ids (no merging), one LongTensor per utterance."""
        out: dict[int, torch.Tensor] = {}
        segs = self.fx.run(waves, lambda i, f: out.__setitem__(i, self.quantizer(f).cpu()))
        return _concat_per_utt(segs, out, len(waves))

    def units(self, waves: list[np.ndarray]) -> list[list[int]]:
        seqs = [u.tolist() for u in self.frame_units(waves)]
        return [merge_repeats(s) for s in seqs] if self.dedup else seqs
