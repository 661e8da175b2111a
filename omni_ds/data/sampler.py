"""Distributed batch sampler: deterministic per (seed, epoch), resumable mid-epoch.

Every rank computes the same epoch plan, a list of batches (lists of dataset indices), from a
generator seeded with (seed, epoch) and the per-sample lengths; batch j goes to rank
j % world_size. Modes:
- "random": a permutation cut into batches of `batch_size`.
- "length_grouped": the permutation cut into megabatches of world_size * batch_size *
  grad_accum * megabatch_mult samples; each megabatch is sorted by length and cut into batches,
  so a batch holds similar lengths (little padding). The world_size batches of one step come
  from the same stretch of the sorted order (ranks wait for each other less), and the steps are
  shuffled, so the order of lengths over the epoch stays random (LLaVA's modality-length grouping
  with a larger megabatch).
- "token_budget": as length_grouped, but batches are filled while batch size x longest length
  stays within `max_tokens` (a sample longer than the budget gets a batch of its own).

Coverage: each sample appears once per epoch across all ranks. When the number of batches is not
a multiple of world_size, `drop_last=False` (default) repeats batches from the start of the plan
so that every rank runs the same number of steps (the repeats are the only duplicates; their
count is `padding_batches`); `drop_last=True` drops the trailing batches instead (no duplicates;
those samples are skipped this epoch and, as the plan changes each epoch, seen in others).

Resume: the consumer counts the batches it has taken this epoch and calls
`set_epoch(epoch, offset)`; iteration then starts at that batch of the same plan, so a resumed
run sees exactly the batches it had not yet seen. (The sampler cannot count consumption itself:
a DataLoader prefetches ahead of the training step.)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MODES = ("random", "length_grouped", "token_budget")


@dataclass(frozen=True)
class Batching:
    """How an epoch's samples are cut into batches (the modes are described above)."""
    mode: str = "random"
    grad_accum: int = 1               # a megabatch spans world_size x batch_size x grad_accum x megabatch_mult
    megabatch_mult: int = 50
    max_tokens: int | None = None     # token_budget: batch size x longest length stays within this
    drop_last: bool = False           # a plan not a multiple of world_size: drop its tail (else repeat)


class DistributedBatchSampler:
    def __init__(self, lengths, batch_size: int, world_size: int = 1, rank: int = 0, seed: int = 0,
                 batching: Batching = Batching()):
        if batching.mode not in MODES:
            raise ValueError(f"sampler mode {batching.mode!r}: allowed {MODES}")
        if batching.mode == "token_budget" and not batching.max_tokens:
            raise ValueError("sampler mode 'token_budget' needs max_tokens > 0")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        if batch_size < 1 or batching.grad_accum < 1 or batching.megabatch_mult < 1:
            raise ValueError("batch_size, grad_accum and megabatch_mult must be >= 1")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        if len(self.lengths) == 0:
            raise ValueError("sampler needs at least one sample")
        self.batch_size, self.world_size, self.rank = batch_size, world_size, rank
        self.seed, self.batching = seed, batching
        self.epoch, self.offset = 0, 0
        self.padding_batches = 0
        self._batches_epoch = None
        self._batches: list[list[int]] = []

    # -- plan -----------------------------------------------------------------------------------
    def _rng(self, epoch: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch])

    def _grouped_batches(self, perm: np.ndarray, rng: np.random.Generator) -> list[list[int]]:
        mega = self.world_size * self.batch_size * self.batching.grad_accum * self.batching.megabatch_mult
        batches: list[list[int]] = []
        for start in range(0, len(perm), mega):
            chunk = perm[start:start + mega]
            # Longest first, stable, so equal lengths keep the random order of the permutation.
            chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
            if self.batching.mode == "length_grouped":
                batches += [chunk[i:i + self.batch_size].tolist() for i in range(0, len(chunk), self.batch_size)]
            else:
                batches += self._budget_batches(chunk)
        # Shuffle whole steps (world_size consecutive batches), keeping each step's ranks similar.
        w = self.world_size
        steps = [batches[i:i + w] for i in range(0, len(batches), w)]
        order = rng.permutation(len(steps))
        return [b for k in order for b in steps[k]]

    def _budget_batches(self, chunk: np.ndarray) -> list[list[int]]:
        batches, cur, longest = [], [], 0
        for idx in chunk.tolist():
            n = int(self.lengths[idx])
            if cur and max(longest, n) * (len(cur) + 1) > self.batching.max_tokens:
                batches.append(cur)
                cur, longest = [], 0
            cur.append(idx)
            longest = max(longest, n)
        if cur:
            batches.append(cur)
        return batches

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """All batches of the epoch, over all ranks, in order (batch j -> rank j % world_size)."""
        rng = self._rng(epoch)
        perm = rng.permutation(len(self.lengths))
        if self.batching.mode == "random":
            batches = [perm[i:i + self.batch_size].tolist() for i in range(0, len(perm), self.batch_size)]
        else:
            batches = self._grouped_batches(perm, rng)
        extra = (-len(batches)) % self.world_size
        surplus = len(batches) % self.world_size
        self.padding_batches = 0
        if surplus and self.batching.drop_last and len(batches) > surplus:
            batches = batches[:len(batches) - surplus]
        elif extra:
            # Repeat from the start (cycling if the plan is tiny) so every rank gets a batch.
            batches = batches + [batches[k % len(batches)] for k in range(extra)]
            self.padding_batches = extra
        return batches

    def _rank_batches(self) -> list[list[int]]:
        key = (self.epoch,)
        if self._batches_epoch != key:
            self._batches = self.epoch_batches(self.epoch)[self.rank::self.world_size]
            self._batches_epoch = key
        return self._batches

    # -- iteration and resume --------------------------------------------------------------------
    def set_epoch(self, epoch: int, offset: int = 0) -> None:
        """Select the epoch's plan and skip its first `offset` batches of this rank."""
        if offset < 0:
            raise ValueError(f"offset {offset} < 0")
        self.epoch, self.offset = int(epoch), int(offset)

    def _order_setup(self) -> dict:
        """What decides the data order beyond the epoch: a saved position is only valid under the same."""
        return {"seed": self.seed, "mode": self.batching.mode, "world_size": self.world_size}

    def state_dict(self, batches_consumed: int | None = None) -> dict:
        return {"epoch": self.epoch,
                "offset": self.offset if batches_consumed is None else int(batches_consumed),
                **self._order_setup()}

    def load_state_dict(self, state: dict) -> None:
        for key, now in self._order_setup().items():
            if key in state and state[key] != now:
                raise ValueError(f"sampler state was saved with {key}={state[key]!r}, now "
                                 f"{now!r}: the data order would not resume exactly")
        self.set_epoch(state["epoch"], state["offset"])

    def __iter__(self):
        for batch in self._rank_batches()[self.offset:]:
            yield list(batch)

    def __len__(self) -> int:
        """Batches this rank yields from the current offset to the end of the epoch."""
        return max(0, len(self._rank_batches()) - self.offset)

    def batches_per_epoch(self) -> int:
        return len(self._rank_batches())


def padding_efficiency(batches: list[list[int]], lengths) -> float:
    """Real positions / padded positions (batch size x longest) over a list of batches."""
    lengths = np.asarray(lengths)
    real = sum(int(lengths[b].sum()) for b in batches)
    padded = sum(len(b) * int(lengths[b].max()) for b in batches)
    return real / padded
