"""Audio decoding and resampling to the 16 kHz mono waveform every model here consumes."""
from __future__ import annotations

import numpy as np
import soundfile as sf
import soxr

from omni_ds.constants import SAMPLE_RATE


def load_audio(path: str, target_sr: int = SAMPLE_RATE) -> np.ndarray:
    """Decode `path`, mix down to mono, resample to `target_sr`; float32 in [-1, 1]."""
    wave, sr = sf.read(str(path), dtype="float32", always_2d=True)
    wave = wave.mean(axis=1)
    if sr != target_sr:
        # soxr's high-quality mode: a real band-limited resampler, deterministic.
        wave = soxr.resample(wave, sr, target_sr, quality="HQ")
    return np.ascontiguousarray(wave, dtype=np.float32)
