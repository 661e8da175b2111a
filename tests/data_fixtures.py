"""Shared builders for the data-pipeline tests (not a conftest: plain helpers, imported)."""
import json
import shutil
from pathlib import Path

import numpy as np
import soundfile as sf

REAL_CLIPS = sorted(Path(__file__).resolve().parents[2].glob("shared/data/spoken_instructions/*.wav")) or \
    sorted(Path("/work/shared/data/spoken_instructions").glob("*.wav"))


def write_tone(path: Path, seconds: float, sr: int = 16000, channels: int = 1) -> Path:
    """A deterministic chirp-like test signal (not silence, so the mel has structure)."""
    t = np.arange(int(seconds * sr)) / sr
    x = 0.3 * np.sin(2 * np.pi * (200 + 300 * t) * t).astype(np.float32)
    if channels > 1:
        x = np.stack([x] * channels, axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), x, sr, subtype="PCM_16")
    return path


def copy_real(dst: Path, n: int = 2) -> list[Path]:
    dst.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy(c, dst / c.name)) for c in REAL_CLIPS[:n]]


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def flat(speech: str, response: str = "The capital is Paris.", instruction: str = "What is the capital?",
         **extra) -> dict:
    rec = {"speech_instruction_path": speech, "text_instruction": instruction, "text_response": response}
    rec.update(extra)
    return rec
