"""Collation into the batch contract of docs/ARCHITECTURE.md (plus `sample_index`).

input_ids right-padded with the tokenizer's pad id, labels with -100, attention_mask 1 on real
tokens (the speech placeholders included), speech_mel [S, n_mels, T] with one row per speech
segment (S = B for single-turn items, one per human turn for dialogues, row by row in order;
T = 3000 padded, the batch's longest clip in trimmed mode), speech_frames [S], units [N, U] padded
with -100 in stage 2 (one row per answer, in the same order), and sample_index [B] (manifest
indices; the trainer checks exact resume with it, the model ignores it). Items that failed to
load (a `load_failed` marker from the dataset under data.on_bad = "skip") are left out and their
reasons listed in `load_failures`; a micro-batch with no item left is a DataError.

An item holds one segment (`speech_mel` a tensor, `units` a tensor) or a dialogue's segments and
answers (lists of them).
"""
from __future__ import annotations

import torch

from omni_ds.constants import IGNORE_INDEX


def _pad_1d(rows: list[torch.Tensor], value: int) -> torch.Tensor:
    out = torch.full((len(rows), max(len(r) for r in rows)), value, dtype=torch.long)
    for b, r in enumerate(rows):
        out[b, :len(r)] = r
    return out


def spread(items: list[dict], key: str) -> list:
    """The items' values of `key`, a dialogue's list spread in order."""
    return [v for it in items for v in (it[key] if isinstance(it[key], list) else [it[key]])]


class OmniCollator:
    def __init__(self, pad_token_id: int):
        if pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; set one (Llama-3: <|finetune_right_pad_id|>)")
        self.pad_token_id = int(pad_token_id)

    def __call__(self, items: list[dict]) -> dict:
        failures = [it["load_failed"] for it in items if "load_failed" in it]
        items = [it for it in items if "load_failed" not in it]
        if not items:
            from omni_ds.data.validate import DataError
            raise DataError(f"every record of a micro-batch failed to load (has the data moved?): {'; '.join(failures)}")
        ids = _pad_1d([it["input_ids"] for it in items], self.pad_token_id)
        lengths = torch.tensor([len(it["input_ids"]) for it in items])
        batch = {
            "input_ids": ids,
            "labels": _pad_1d([it["labels"] for it in items], IGNORE_INDEX),
            "attention_mask": (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).long(),
            "speech_mel": self._mels(spread(items, "speech_mel")),
            "speech_frames": torch.tensor([int(f) for f in spread(items, "speech_frames")], dtype=torch.long),
        }
        if "units" in items[0]:
            batch["units"] = _pad_1d(spread(items, "units"), IGNORE_INDEX)
        batch["sample_index"] = torch.tensor([int(it["sample_index"]) for it in items], dtype=torch.long)
        if failures:
            batch["load_failures"] = failures
        return batch

    @staticmethod
    def _mels(mels: list[torch.Tensor]) -> torch.Tensor:
        t = max(m.shape[1] for m in mels)
        out = torch.empty(len(mels), mels[0].shape[0], t, dtype=torch.float32)
        for b, m in enumerate(mels):
            out[b, :, :m.shape[1]] = m
            # Trimmed rows are filled with the clip's own floor, the value padded-mode silence
            # takes after the max-8 clamp; the encoder reads speech_frames anyway.
            out[b, :, m.shape[1]:] = m.min() if m.numel() else 0.0
        return out
