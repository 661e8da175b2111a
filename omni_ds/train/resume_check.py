"""What a resume must find unchanged: the settings that decide the data order and the optimizer.

Every checkpoint's omni_ds_state.json holds `resume_identity`:

    seed            the seed of the sampler and of the RNGs
    train_manifest  sha256 of the training manifest's bytes
    train_samples   its usable records after validation (the sampler's population)
    batching        batch.batching (with max_tokens_per_batch for "token_budget")
    global_batch    samples per optimizer step
    model           a digest of the folders the run starts from (init_from, or whisper_path +
                    llm_path + tokenizer_path): their config, tokenizer and weight files, by
                    hidden_cache.file_fingerprint (content of small files; name, size and mtime
                    of weights, so a copied folder reads as changed); with LoRA also its
                    settings (rank, alpha, dropout, target modules, 4-bit base): the adapters'
                    shapes and what trains

A resume that changes any of them is refused with one message naming each (old -> new) and the two
ways out: start fresh, or list them in checkpoint.accept_changes. A checkpoint saved before these
fields existed resumes with a notice; what its config and counts still tell (seed, batching,
global batch, samples) is checked all the same.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional

from omni_ds.train.config import ConfigError
from omni_ds.train.config.sections import RESUME_ITEMS

_MODEL_FOLDERS = ("init_from", "whisper_path", "llm_path", "tokenizer_path")


def _batching(batch: dict) -> str:
    mode = batch.get("batching", "random")
    return f"{mode} (max_tokens_per_batch {batch.get('max_tokens_per_batch')})" if mode == "token_budget" else mode


def model_digest(model: dict, lora: Optional[dict] = None) -> str:
    """Digest of the model folders a run starts from (init_from replaces the parts), and of the
    LoRA settings when LoRA is on (a run without it digests as before LoRA existed)."""
    from omni_ds.train.hidden_cache import folder_fingerprint
    names = ("init_from", "tokenizer_path") if model.get("init_from") else _MODEL_FOLDERS[1:]
    h = hashlib.sha256()
    for name in names:
        if model.get(name):
            h.update(f"{name}|{folder_fingerprint(Path(model[name]))}|".encode())
    if lora and lora.get("rank") is not None:
        h.update(f"lora|{json.dumps(lora, sort_keys=True)}|".encode())
    return h.hexdigest()[:16]


def run_identity(cfg, global_batch: int, train_samples: int, manifest_digest: str) -> dict:
    """This run's values of RESUME_ITEMS (saved with every checkpoint)."""
    c = cfg.to_dict()
    return {"seed": cfg.seed, "train_manifest": manifest_digest, "train_samples": int(train_samples),
            "batching": _batching(c["batch"]), "global_batch": int(global_batch),
            "model": model_digest(c["model"], c.get("lora"))}


def saved_identity(saved: dict) -> tuple[dict, list[str]]:
    """A checkpoint state's RESUME_ITEMS, and the items an older checkpoint cannot tell."""
    if "resume_identity" in saved:
        return saved["resume_identity"], []
    cfg = saved.get("config") or {}
    known = {"seed": cfg.get("seed"), "train_samples": saved.get("num_samples"),
             "batching": _batching(cfg["batch"]) if "batch" in cfg else None, "global_batch": saved.get("global_batch")}
    known = {k: v for k, v in known.items() if v is not None}
    return known, [k for k in RESUME_ITEMS if k not in known]


def _shown(item: str, value, config: dict) -> str:
    """A value as the message shows it: digests with the path they were taken of."""
    if item == "train_manifest":
        return f"{str(value)[:12]} ({config.get('data', {}).get('train_manifest')})"
    if item == "model":
        where = ", ".join(f"{k} {v}" for k, v in config.get("model", {}).items() if k in _MODEL_FOLDERS and v)
        lora = config.get("lora") or {}
        if lora.get("rank") is not None:
            where += f", lora rank {lora['rank']} alpha {lora.get('alpha')} on {lora.get('target_modules')}"
        return f"{value} ({where})"
    return json.dumps(value)


def check_resume(saved: dict, current: dict, cfg, source) -> list[str]:
    """Raise ConfigError naming each changed item not in checkpoint.accept_changes; else the
    notices to log (accepted changes, items an older checkpoint could not tell)."""
    old, unknown = saved_identity(saved)
    changed = [k for k in RESUME_ITEMS if k in old and old[k] != current[k]]
    old_cfg, new_cfg = saved.get("config") or {}, cfg.to_dict()
    detail = "; ".join(f"{k} {_shown(k, old[k], old_cfg)} -> {_shown(k, current[k], new_cfg)}" for k in changed)
    if any(k not in cfg.checkpoint.accept_changes for k in changed):
        raise ConfigError(
            f"{source}: resuming would change what decides the data order and the optimizer: {detail}. Start "
            "fresh (--resume never, or a new output_dir), or accept the change explicitly: --set "
            f"'checkpoint.accept_changes={json.dumps(changed)}'")
    notes = [f"resuming with accepted change(s) (checkpoint.accept_changes): {detail}; the data order no "
             "longer continues the checkpoint's exactly"] if changed else []
    if unknown:
        notes.append(f"{source} predates the resume checks of {', '.join(unknown)}: those are not checked")
    return notes
