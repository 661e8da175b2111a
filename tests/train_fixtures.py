"""Shared builders for the training tests (plain helpers, imported)."""
import json
from pathlib import Path

import torch

from omni_ds.train.demo import write_tiny_setup


def write_stage2_inputs(root: Path) -> Path:
    from omni_ds.model.checkpoint import build_from_parts, save_omni_folder
    from omni_ds.tiny.models import tiny_omni_config
    d = write_tiny_setup(root, n_clips=8, val_clips=2)
    g = torch.Generator().manual_seed(0)
    rows = [json.loads(line) for line in open(d / "train.jsonl")]
    for r in rows:
        r["speech_response_path"] = r["speech_instruction_path"]
        r["units"] = torch.randint(0, 1000, (int(torch.randint(20, 40, (1,), generator=g)),), generator=g).tolist()
    (d / "train_units.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "val_units.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))
    torch.manual_seed(0)
    model, tok = build_from_parts(d / "models" / "whisper", d / "models" / "llm",
                                  tiny_omni_config(encoder_mode="trimmed", with_speech_generator=False))
    save_omni_folder(d / "runs" / "stage1" / "final", model, tok)
    return d
