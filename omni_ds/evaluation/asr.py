"""ASR of the spoken answers: a local Whisper folder (Hugging Face layout) transcribes WAV files.

Used twice: ASR-WER of the vocoded answer against the generated text (the paper's ASR-WER, with
Whisper-large-v3 there), and a calibration row, the same ASR on the manifest's reference response
audio against the reference text: the error the ASR itself brings, to read the other number by.
"""
from __future__ import annotations

import json
from pathlib import Path

from omni_ds.evaluation.errors import EvaluationInputError


def check_whisper_folder(folder: str | Path) -> Path:
    """`folder` if it holds a Whisper speech-to-text model with its tokenizer, else a clear error."""
    path = Path(folder)
    config = path / "config.json"
    if not config.is_file():
        raise EvaluationInputError(f"--asr {path}: no config.json (expected a Hugging Face Whisper folder)")
    try:
        cfg = json.loads(config.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise EvaluationInputError(f"--asr {path}: config.json unreadable ({e})") from None
    if cfg.get("model_type") != "whisper":
        raise EvaluationInputError(f"--asr {path}: model_type {cfg.get('model_type')!r}, not a Whisper model")
    if not any((path / f).is_file() for f in ("tokenizer.json", "vocab.json")):
        raise EvaluationInputError(f"--asr {path}: Whisper folder without a tokenizer (tokenizer.json)")
    return path


class WhisperASR:
    """Greedy transcripts with transformers' Whisper front end, model and decoding."""

    def __init__(self, folder: str | Path):
        from omni_ds.realsmall.ct2_whisper import Transcriber
        self.folder = check_whisper_folder(folder)
        try:
            self._transcribe = Transcriber(self.folder)
        except Exception as e:     # a broken folder surfaces as many types; the message matters
            raise EvaluationInputError(f"--asr {self.folder}: cannot load ({type(e).__name__}: {e})") from None

    def __call__(self, wav: str | Path) -> str:
        return self._transcribe(wav)
