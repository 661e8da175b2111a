"""Validation, rank-sharded, and when it is due: loss (stage 1); CTC loss and unit edit distance
(stage 2, from full batches or from cached response states).

Every rank runs the same number of forwards (ZeRO-3 needs the same module calls on all ranks); a
rank with fewer real batches repeats one and discards its result.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from omni_ds.precision import torch_dtype
from omni_ds.train.loop import all_sum, to_device


class Evaluator:
    """`due(step, total)` says when (every `eval.every_steps`, never on the last step: the run ends with
    a final evaluation); calling it evaluates the whole validation set."""

    def __init__(self, engine, val, collate, cfg, rank: int, world: int):
        self.engine, self.val, self.collate, self.cfg = engine, val, collate, cfg
        bs = cfg.eval.batch_size
        self.chunks = [list(range(i, min(i + bs, len(val)))) for i in range(0, len(val), bs)]
        self.mine = self.chunks[rank::world]
        self.n_batches = math.ceil(len(self.chunks) / world)

    def due(self, step: int, total_steps: int) -> bool:
        return bool(self.cfg.eval.every_steps) and step % self.cfg.eval.every_steps == 0 and step < total_steps

    def __call__(self) -> dict:
        batches = [self.collate([self.val[i] for i in c]) for c in self.mine]
        fallback = batches[0] if batches else self.collate([self.val[i] for i in self.chunks[0]])
        evaluate = evaluate_units if self.cfg.stage == 2 else evaluate_loss
        return evaluate(self.engine, batches, self.n_batches, fallback, self.cfg)


def make_evaluator(engine, val, collate, cfg, rank: int, world: int) -> Optional[Evaluator]:
    """None without a validation set."""
    if val is None or len(val) == 0:
        return None
    return Evaluator(engine, val, collate, cfg, rank, world)


@torch.no_grad()
def evaluate_loss(engine, batches_per_rank: list[dict], n_batches: int, fallback: dict, cfg) -> dict:
    """Mean loss over a validation set sharded across ranks."""
    engine.eval()
    device = engine.device
    float_dtype = torch_dtype(cfg.precision)
    total, count = 0.0, 0.0
    for i in range(n_batches):
        real = i < len(batches_per_rank)
        batch = batches_per_rank[i] if real else fallback
        out = engine(**to_device(batch, device, float_dtype))
        if real:
            total += float(out["loss_sum"])
            count += float(out["n_targets"])
    total, count = all_sum([total, count], device)
    return {"loss": total / max(count, 1.0), "targets": count}


@torch.no_grad()
def evaluate_units(engine, batches_per_rank: list[dict], n_batches: int, fallback: dict, cfg) -> dict:
    """Stage-2 validation: the mean CTC loss per target unit and the unit edit distance
    (Levenshtein distance of the decoder's greedy units to the targets, summed over the set,
    divided by the total number of target units). Batches are either full batches (the frozen
    LLM computes the response states) or cached states (`response_states`)."""
    engine.eval()
    module = engine.module
    device = engine.device
    float_dtype = torch_dtype(cfg.precision)
    total, count, edits, n_samples = 0.0, 0.0, 0.0, 0.0
    for i in range(n_batches):
        real = i < len(batches_per_rank)
        batch = to_device(batches_per_rank[i] if real else fallback, device, float_dtype)
        states, lengths = _response_states(module, batch)
        out = engine(response_states=states, response_lengths=lengths, units=batch["units"])
        # on every rank, real batch or not: under ZeRO-3 the decoder's forward is a collective
        logits, n_out = module.speech_generator(states, lengths)        # inference length (25 n)
        if not real:
            continue
        total += float(out["loss_sum"])
        count += float(out["n_targets"])
        batch_edits, batch_samples = _unit_edits(logits, n_out, module.speech_generator.blank, batch["units"])
        edits += batch_edits
        n_samples += batch_samples
    total, count, edits, n_samples = all_sum([total, count, edits, n_samples], device)
    return {"loss": total / max(count, 1.0), "targets": count,
            "unit_edit_distance": edits / max(count, 1.0), "samples": n_samples}


def _response_states(module, batch: dict):
    if "response_states" in batch:
        return batch["response_states"], batch["response_lengths"]
    return module.response_hidden_states(batch["input_ids"], batch["attention_mask"], batch["labels"],
                                         batch["speech_mel"], batch["speech_frames"])


def _unit_edits(logits, n_out, blank: int, units) -> tuple[float, int]:
    """Summed edit distance of the greedy units to the targets, and the number of samples."""
    from omni_ds.constants import IGNORE_INDEX
    from omni_ds.model.ctc_decoder import ctc_collapse
    from omni_ds.train.edit_distance import levenshtein
    paths = logits.argmax(-1).cpu()
    edits = 0.0
    for b in range(paths.shape[0]):
        pred = ctc_collapse(paths[b, : int(n_out[b])].tolist(), blank)
        target = units[b]
        edits += levenshtein(pred, target[target.ne(IGNORE_INDEX)].tolist())
    return edits, paths.shape[0]
