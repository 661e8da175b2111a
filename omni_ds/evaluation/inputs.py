"""Loading what an evaluation is given, each failure as one EvaluationInputError naming the
argument: the model folder, the manifest, the vocoder (its unit vocabulary must be the model's)."""
from __future__ import annotations

from pathlib import Path

import torch

from omni_ds.evaluation.errors import EvaluationInputError


def load_model(folder: str | Path, device: str = "cpu"):
    from omni_ds.model.checkpoint import load_omni_folder
    if not (Path(folder) / "config.json").is_file():
        raise EvaluationInputError(f"--model {folder}: no config.json (expected a LLaMA-Omni-layout folder)")
    try:
        model, tokenizer = load_omni_folder(folder, dtype=torch.float32)
    except Exception as e:        # many loader errors; the one line must say which folder and why
        raise EvaluationInputError(f"--model {folder}: cannot load ({type(e).__name__}: "
                                   f"{str(e).splitlines()[0] if str(e) else ''})") from None
    return model.to(device).eval(), tokenizer


def load_records(manifest: str | Path, limit: int | None) -> list[dict]:
    from omni_ds.data.manifest import ManifestError, load_manifest
    try:
        m = load_manifest(manifest)
    except (ManifestError, FileNotFoundError) as e:
        raise EvaluationInputError(f"--manifest {manifest}: {e}") from None
    n = len(m) if limit is None else min(limit, len(m))
    return [m[i] for i in range(n)]


def load_checked_vocoder(folder: str | Path, unit_vocab_size: int, given_as: str | None = None):
    """The vocoder, refused when its unit embedding does not cover exactly the model's
    `unit_vocab_size` units. `given_as` names where the folder came from in the message
    (default "--vocoder FOLDER"; training: its config key)."""
    from omni_ds.vocoder import load_vocoder
    given_as = given_as or f"--vocoder {folder}"
    try:
        vocoder = load_vocoder(folder)
    except Exception as e:        # missing files, bad JSON, unpicklable or mismatched weights: say which folder
        raise EvaluationInputError(f"{given_as}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    have = vocoder.cfg["num_embeddings"]
    if have != unit_vocab_size:
        raise EvaluationInputError(f"{given_as}: unit vocabulary {have} (config.json num_embeddings) "
                                   f"does not match the model's {unit_vocab_size} units (unit_vocab_size)")
    return vocoder
