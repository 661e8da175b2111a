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


# ---------------------------------------------------------------------------------------------
# Whisper's log-mel front end, in torch.
#
# Long-clip policy: the encoder sees at most 30 s, so `log_mel` keeps the first 30 s of a longer
# clip (what Whisper and the official LLaMA-Omni code do). To reject such clips instead, give the
# validation pass a `max_seconds` limit: they then become bad records ("too long").
# ---------------------------------------------------------------------------------------------
import functools
import math

import torch

from omni_ds.constants import HOP_LENGTH, N_FFT, N_FRAMES, N_SAMPLES

MEL_MODES = ("padded", "trimmed")


def _hz_to_mel_slaney(hz: np.ndarray) -> np.ndarray:
    # Slaney's scale: linear (3 mels per 200 Hz) below 1 kHz, logarithmic above it.
    hz = np.asarray(hz, dtype=np.float64)
    lin = hz * 3.0 / 200.0
    log_step = 27.0 / np.log(6.4)
    log = 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) * log_step
    return np.where(hz >= 1000.0, log, lin)


def _mel_to_hz_slaney(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    lin = mel * 200.0 / 3.0
    log = 1000.0 * np.exp((mel - 15.0) * np.log(6.4) / 27.0)
    return np.where(mel >= 15.0, log, lin)


@functools.lru_cache(maxsize=8)
def mel_filterbank(n_mels: int = 128, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE,
                   f_min: float = 0.0, f_max: float | None = None) -> torch.Tensor:
    """Triangular slaney-normalised mel filters, [n_fft // 2 + 1, n_mels] float32."""
    f_max = sample_rate / 2 if f_max is None else f_max
    fft_hz = np.linspace(0.0, sample_rate // 2, n_fft // 2 + 1)
    # n_mels + 2 edges equally spaced on the mel scale; filter m spans edges m .. m+2.
    edges = _mel_to_hz_slaney(np.linspace(_hz_to_mel_slaney(f_min), _hz_to_mel_slaney(f_max), n_mels + 2))
    lo, mid, hi = edges[:-2], edges[1:-1], edges[2:]
    rising = (fft_hz[:, None] - lo[None, :]) / (mid - lo)[None, :]
    falling = (hi[None, :] - fft_hz[:, None]) / (hi - mid)[None, :]
    bank = np.maximum(0.0, np.minimum(rising, falling))
    bank *= (2.0 / (hi - lo))[None, :]          # slaney norm: each filter has unit area
    return torch.from_numpy(bank.astype(np.float32))


def num_frames(n_samples: int) -> int:
    """Mel frames that carry real audio: ceil(n / hop), at most 3000 (30 s)."""
    return min(N_FRAMES, math.ceil(n_samples / HOP_LENGTH))


def pad_or_trim(wave: torch.Tensor, length: int = N_SAMPLES) -> torch.Tensor:
    """Zero-pad or cut the last dimension to `length` samples."""
    n = wave.shape[-1]
    if n >= length:
        return wave[..., :length]
    return torch.nn.functional.pad(wave, (0, length - n))


def log_mel(wave, n_mels: int = 128, mode: str = "padded") -> tuple[torch.Tensor, int]:
    """Whisper log-mel of a 16 kHz mono clip -> (mel [n_mels, T] float32, real frames).

    padded: T = 3000 and real frames = 3000 (the model sees 30 s, as the official code does).
    trimmed: T = real frames = min(3000, ceil(len / 160)); the columns are exactly the first T
    columns of the padded mel: both come from the same 30 s padded computation (the max-8
    dynamic-range clamp is taken over that whole signal).

    Shortcut, same result: frames whose 400-sample window lies wholly in the zero padding have
    zero power, so only the frames that can touch audio go through the STFT; the rest take the
    zero-power value. A 3 s clip costs about a tenth of a full 30 s spectrogram.
    """
    if mode not in MEL_MODES:
        raise ValueError(f"mel mode {mode!r}: allowed {MEL_MODES}")
    wave = torch.as_tensor(np.asarray(wave, dtype=np.float32)) if not torch.is_tensor(wave) else wave.float()
    if wave.dim() != 1:
        raise ValueError(f"log_mel expects a mono 1-D waveform, got shape {tuple(wave.shape)}")
    n = min(wave.shape[0], N_SAMPLES)
    # Centred frame t reads samples [160 t - 200, 160 t + 200): it sees audio iff 160 t - 200 < n.
    live = min(N_FRAMES, -(-(n + N_FFT // 2) // HOP_LENGTH))
    # Enough zeros after the audio that the right-edge reflect padding mirrors zeros only.
    short = min(N_SAMPLES, (live + 3) * HOP_LENGTH + N_FFT)
    log = _log_spec(pad_or_trim(wave[:n], short)[None], n_mels)[0, :, :live]   # [n_mels, live]
    if live < N_FRAMES:
        silent = _log_spec(torch.zeros(1, N_FFT), n_mels)[0, :, :1]               # zero-power value
        log = torch.cat([log, silent.expand(n_mels, N_FRAMES - live)], dim=1)
    mel = _normalise(log[None])[0]
    if mode == "padded":
        return mel, N_FRAMES
    frames = num_frames(wave.shape[0])
    return mel[:, :frames].contiguous(), frames


def _log_spec(x: torch.Tensor, n_mels: int) -> torch.Tensor:
    """[B, samples] -> log10 mel power [B, n_mels, frames] (frames = samples // 160)."""
    window = torch.hann_window(N_FFT, dtype=x.dtype, device=x.device)   # periodic Hann
    spec = torch.stft(x, N_FFT, HOP_LENGTH, window=window, center=True, pad_mode="reflect",
                      return_complex=True)
    ri = torch.view_as_real(spec[..., :-1])      # centred frames; Whisper drops the last one
    power = ri[..., 0].square() + ri[..., 1].square()        # |z|^2 without the sqrt of abs()
    mel = mel_filterbank(n_mels).T.to(x.device) @ power
    return torch.clamp_min_(mel, 1e-10).log10_()


def _normalise(log: torch.Tensor) -> torch.Tensor:
    """Whisper's dynamic-range clamp (per clip: max - 8) and scaling (x + 4) / 4."""
    peak = log.amax(dim=(1, 2), keepdim=True)
    return torch.maximum(log, peak - 8.0).add_(4.0).div_(4.0)


def log_mel_batch(waves: torch.Tensor, n_mels: int = 128) -> torch.Tensor:
    """[B, samples] -> [B, n_mels, 3000]: each row padded/cut to 30 s, then Whisper's log-mel,
    computed over the full 30 s (for GPUs; on a CPU `log_mel` per clip is much faster)."""
    return _normalise(_log_spec(pad_or_trim(waves.float(), N_SAMPLES), n_mels))


def speech_positions(n_frames: int, ds_rate: int = 5) -> int:
    """LLM positions the speech of `n_frames` mel frames occupies: Whisper's stride-2 conv halves
    the frames (rounding up), the projector concatenates `ds_rate` of them and drops the rest.
    3000 frames (padded mode) -> 300 positions. Used to plan lengths and budgets."""
    return ((n_frames + 1) // 2) // ds_rate
