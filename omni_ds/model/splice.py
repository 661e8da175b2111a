"""Splice projected speech features into the token embeddings at the <speech> placeholder."""
from __future__ import annotations

import torch

from omni_ds.constants import IGNORE_INDEX, SPEECH_TOKEN_INDEX


def splice_speech(token_embeds: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  labels: torch.Tensor | None, speech: torch.Tensor, speech_lengths: torch.Tensor):
    """Replace each row's single SPEECH_TOKEN_INDEX by its `speech_lengths[b]` speech vectors.

    Rows are right padded (attention_mask 1 then 0). Returns right-padded (embeds, attention_mask,
    labels) with labels IGNORE_INDEX on the speech span; labels is None when none were given.
    """
    rows, row_labels = [], []
    for b in range(input_ids.shape[0]):
        n = int(attention_mask[b].sum())
        ids = input_ids[b, :n]
        where = (ids == SPEECH_TOKEN_INDEX).nonzero().flatten()
        if where.numel() != 1:
            raise ValueError(f"batch row {b}: expected exactly one speech placeholder "
                             f"({SPEECH_TOKEN_INDEX}) among its {n} tokens, found {where.numel()}")
        p, s = int(where[0]), int(speech_lengths[b])
        rows.append(torch.cat([token_embeds[b, :p], speech[b, :s].to(token_embeds.dtype),
                               token_embeds[b, p + 1:n]]))
        if labels is not None:
            ignore = labels.new_full((s,), IGNORE_INDEX)
            row_labels.append(torch.cat([labels[b, :p], ignore, labels[b, p + 1:n]]))
    length = max(r.shape[0] for r in rows)
    out = token_embeds.new_zeros(len(rows), length, token_embeds.shape[-1])
    mask = attention_mask.new_zeros(len(rows), length)
    out_labels = None if labels is None else labels.new_full((len(rows), length), IGNORE_INDEX)
    for b, r in enumerate(rows):
        out[b, : r.shape[0]] = r
        mask[b, : r.shape[0]] = 1
        if out_labels is not None:
            out_labels[b, : r.shape[0]] = row_labels[b]
    return out, mask, out_labels
