"""Splice projected speech features into the token embeddings at the <speech> placeholders."""
from __future__ import annotations

import torch

from omni_ds.constants import IGNORE_INDEX, SPEECH_TOKEN_INDEX


def splice_speech(token_embeds: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  labels: torch.Tensor | None, speech: torch.Tensor, speech_lengths: torch.Tensor):
    """Replace each SPEECH_TOKEN_INDEX by its speech segment's `speech_lengths[j]` vectors.

    Segments are consumed in order, row by row and left to right within a row: a single-turn batch
    has one per row (segment j is row j's), a dialogue one per human turn. Rows are right padded
    (attention_mask 1 then 0). Returns right-padded (embeds, attention_mask, labels) with labels
    IGNORE_INDEX on the speech spans; labels is None when none were given.
    """
    rows, row_labels, segment = [], [], 0
    for b in range(input_ids.shape[0]):
        n = int(attention_mask[b].sum())
        where = (input_ids[b, :n] == SPEECH_TOKEN_INDEX).nonzero().flatten().tolist()
        if not where:
            raise ValueError(f"batch row {b}: no speech placeholder ({SPEECH_TOKEN_INDEX}) among its {n} tokens")
        if segment + len(where) > speech.shape[0]:
            raise ValueError(f"batch row {b}: {len(where)} speech placeholder(s) but only "
                             f"{speech.shape[0] - segment} speech segment(s) left of {speech.shape[0]}")
        pieces, label_pieces, start = [], [], 0
        for p in where:
            s = int(speech_lengths[segment])
            pieces += [token_embeds[b, start:p], speech[segment, :s].to(token_embeds.dtype)]
            if labels is not None:
                label_pieces += [labels[b, start:p], labels.new_full((s,), IGNORE_INDEX)]
            start, segment = p + 1, segment + 1
        rows.append(torch.cat(pieces + [token_embeds[b, start:n]]))
        if labels is not None:
            row_labels.append(torch.cat(label_pieces + [labels[b, start:n]]))
    if segment != speech.shape[0]:
        raise ValueError(f"{speech.shape[0]} speech segments for {segment} placeholders in the batch")
    return _pad_rows(token_embeds, attention_mask, labels, rows, row_labels)


def _pad_rows(token_embeds, attention_mask, labels, rows, row_labels):
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
