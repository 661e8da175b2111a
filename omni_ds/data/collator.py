"""Collation into the batch contract of docs/ARCHITECTURE.md (plus `sample_index`).

input_ids right-padded with the tokenizer's pad id, labels with -100, attention_mask 1 on real
tokens (the speech placeholder included), speech_mel [B, n_mels, T] (T = 3000 padded; the batch's
longest clip in trimmed mode), speech_frames [B], units [B, U] padded with -100 in stage 2, and
sample_index [B] (manifest indices; the trainer checks exact resume with it, the model ignores it).
"""
from __future__ import annotations

import torch

from omni_ds.constants import IGNORE_INDEX


def _pad_1d(rows: list[torch.Tensor], value: int) -> torch.Tensor:
    out = torch.full((len(rows), max(len(r) for r in rows)), value, dtype=torch.long)
    for b, r in enumerate(rows):
        out[b, :len(r)] = r
    return out


class OmniCollator:
    def __init__(self, pad_token_id: int):
        if pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; set one (Llama-3: <|finetune_right_pad_id|>)")
        self.pad_token_id = int(pad_token_id)

    def __call__(self, items: list[dict]) -> dict:
        ids = _pad_1d([it["input_ids"] for it in items], self.pad_token_id)
        lengths = torch.tensor([len(it["input_ids"]) for it in items])
        batch = {
            "input_ids": ids,
            "labels": _pad_1d([it["labels"] for it in items], IGNORE_INDEX),
            "attention_mask": (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).long(),
            "speech_mel": self._mels([it["speech_mel"] for it in items]),
            "speech_frames": torch.tensor([int(it["speech_frames"]) for it in items], dtype=torch.long),
        }
        if "units" in items[0]:
            batch["units"] = _pad_1d([it["units"] for it in items], IGNORE_INDEX)
        batch["sample_index"] = torch.tensor([int(it["sample_index"]) for it in items], dtype=torch.long)
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
