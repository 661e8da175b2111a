"""Shared inputs of the tests/test_units_*.py files: the real clips, generated clips, a tiny
mHuBERT-architecture checkpoint and a k-means fitted on its features."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from omni_ds.data.audio import load_audio

REPO = Path(__file__).resolve().parents[1]
CLIPS = sorted((REPO.parent / "shared" / "data" / "spoken_instructions").glob("*.wav"))
SR = 16000


def generated_waves() -> dict[str, np.ndarray]:
    """Deterministic clips that exercise the edges: chunking (> 100 s), one frame, odd lengths,
    noise, a tone sweep, silence with a click."""
    rng = np.random.default_rng(1234)
    real = [load_audio(p, SR) for p in CLIPS]
    t = np.arange(int(2.3 * SR)) / SR
    sweep = 0.3 * np.sin(2 * np.pi * (200 + 900 * t) * t) + 0.01 * rng.standard_normal(t.size)
    silence = np.zeros(SR, np.float32)
    silence[8000] = 0.9
    long = np.concatenate([np.concatenate([w, np.zeros(SR // 3, np.float32)]) for w in real] * 4)
    long = long[: int(123.4 * SR)]                       # 100 s chunk + a 23.4 s chunk
    return {
        "gen_long_123s": long,
        "gen_one_frame": (0.1 * rng.standard_normal(400)),
        "gen_odd_len": real[0][: SR + 123],
        "gen_noise": 0.05 * rng.standard_normal(int(1.7 * SR)),
        "gen_sweep": sweep,
        "gen_click": silence,
    }


def write_clips(folder: Path, with_generated: bool = True) -> list[Path]:
    """16 kHz float WAVs (so the reference reader, which never resamples, reads the very same
    samples as ours); the real clips are resampled once with omni_ds's resampler."""
    folder.mkdir(parents=True, exist_ok=True)
    waves = {p.stem: load_audio(p, SR) for p in CLIPS}
    if with_generated:
        waves.update(generated_waves())
    out = []
    for name, w in waves.items():
        path = folder / f"{name}.wav"
        sf.write(path, np.asarray(w, np.float32), SR, subtype="FLOAT")
        out.append(path)
    return out


def write_manifest(path: Path, wavs: list[Path], extra: list[dict] = ()) -> Path:
    with open(path, "w") as f:
        for w in wavs:
            f.write(json.dumps({"id": w.stem, "speech_instruction_path": str(w),
                                "text_response": "an answer", "speech_response_path": str(w)}) + "\n")
        for rec in extra:
            f.write(json.dumps(rec) + "\n")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread for a units test module (autouse where imported): on a shared 2-core
    machine OpenMP's spinning threads cost more than they give, and timings stay comparable."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
