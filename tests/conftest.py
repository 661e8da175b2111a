"""Shared fixtures: tiny models written once per session, the real clips of shared/."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
CLIPS_DIR = Path(os.environ.get("OMNI_DS_CLIPS", REPO.parent / "shared" / "data" / "spoken_instructions"))


@pytest.fixture(scope="session")
def real_clips() -> list[Path]:
    clips = sorted(CLIPS_DIR.glob("*.wav"))
    assert len(clips) == 10, f"expected the 10 real clips in {CLIPS_DIR}"
    return clips


@pytest.fixture(scope="session")
def tiny_parts(tmp_path_factory):
    """(tokenizer_dir, whisper_dir, llm_dir) of the tiny factory, written once."""
    from omni_ds.tiny.models import write_tiny_llm, write_tiny_whisper
    from omni_ds.tiny.tokenizer import write_tiny_tokenizer
    root = tmp_path_factory.mktemp("tiny")
    tok = write_tiny_tokenizer(root / "tokenizer")
    whisper = write_tiny_whisper(root / "whisper")
    llm = write_tiny_llm(root / "llm", tok)
    return tok, whisper, llm
