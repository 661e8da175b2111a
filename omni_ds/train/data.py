"""The loop's view of the data: a stream of micro-batches organised in optimizer steps.

Batches come from `omni_ds.data.sampler.DistributedBatchSampler`: each epoch has a plan (a list of
batches, deterministic per (seed, epoch)) and plan batch j goes to rank j % world. An optimizer
step takes GAS consecutive batches of each rank, so step s of an epoch covers plan batches
[s*GAS*world, (s+1)*GAS*world): in "random" mode the samples of a step do not depend on how the
global batch is factored into ranks and accumulation steps — which is what lets a 2-rank run
reproduce a 1-rank run. The data position is (epoch, step within the epoch); resuming sets the
sampler to (epoch, step*GAS batches) and reads nothing it skips. The last `batches % GAS` batches
of a rank's epoch plan are not used in that epoch (the plan differs every epoch).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional

import torch


class StepStream:
    """Yields (epoch, step_in_epoch, [GAS micro-batches]) forever, crossing epochs."""

    def __init__(self, dataset, sampler, gas: int, collate, num_workers: int = 0,
                 epoch: int = 0, step_in_epoch: int = 0):
        self.dataset, self.sampler, self.gas = dataset, sampler, gas
        self.collate, self.num_workers = collate, num_workers
        self.epoch, self.step_in_epoch = epoch, step_in_epoch
        self._steps: dict[int, int] = {}
        self._it: Optional[Iterator] = None

    def steps_in_epoch(self, epoch: int) -> int:
        if epoch not in self._steps:
            rank, world = self.sampler.rank, self.sampler.world_size
            self._steps[epoch] = len(self.sampler.epoch_batches(epoch)[rank::world]) // self.gas
        return self._steps[epoch]

    @property
    def steps_per_epoch(self) -> int:
        return self.steps_in_epoch(self.epoch)

    def total_steps(self, epochs: float) -> int:
        """Optimizer steps in `epochs` epochs (fractional: a part of the last one)."""
        full = int(epochs)
        total = sum(self.steps_in_epoch(e) for e in range(full))
        return total + int((epochs - full) * self.steps_in_epoch(full)) if epochs > full else total

    def _open(self) -> None:
        self.sampler.set_epoch(self.epoch, self.step_in_epoch * self.gas)
        # The loader's own generator: iter(DataLoader) draws its workers' base seed from it, and
        # from the global torch RNG without one. A resumed run opens its iterator mid-epoch, where
        # the uninterrupted run did not, so that draw would shift every later dropout mask (LoRA's).
        seeded = torch.Generator().manual_seed(int(getattr(self.sampler, "seed", 0)) * 100_003 + self.epoch)
        loader = torch.utils.data.DataLoader(self.dataset, batch_sampler=self.sampler, generator=seeded,
                                             collate_fn=self.collate, num_workers=self.num_workers)
        self._it = iter(loader)

    def next_step(self) -> tuple[int, int, list[dict]]:
        if self.step_in_epoch >= self.steps_in_epoch(self.epoch):
            self.epoch, self.step_in_epoch, self._it = self.epoch + 1, 0, None
        if self._it is None:
            self._open()
        batches = [next(self._it) for _ in range(self.gas)]
        pos = (self.epoch, self.step_in_epoch)
        self.step_in_epoch += 1
        return pos[0], pos[1], batches

    def position(self) -> dict:
        """Where the NEXT step starts (saved in checkpoints)."""
        epoch, step = self.epoch, self.step_in_epoch
        if step >= self.steps_in_epoch(epoch):
            epoch, step = epoch + 1, 0
        return {"epoch": epoch, "step_in_epoch": step, "offset_batches": step * self.gas}


class InMemory(torch.utils.data.Dataset):
    """Keeps every loaded item (ids, labels, log-mel) in RAM after its first load: for small sets
    (the demo, tests) where feature extraction would dominate the step. Per process (each
    DataLoader worker holds its own copy)."""

    def __init__(self, dataset):
        self.dataset = dataset
        self.cache: dict[int, dict] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        if i not in self.cache:
            self.cache[i] = self.dataset[i]
        return self.cache[i]

    def __getattr__(self, name):
        if name in ("dataset", "cache"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


def validation_config(cfg, omni, on_bad: str = "skip"):
    """The validation settings of a run: its stage, the model's encoder mode, rate, unit
    vocabulary and CTC upsampling, and the data section's duration, dialogue and unit choices (dry run and run)."""
    from omni_ds.data.validate import ValidationConfig
    d = cfg.data
    return ValidationConfig(stage=cfg.stage, mel_mode=omni.encoder_mode, max_seconds=d.max_speech_seconds,
                            speech_ds_rate=omni.speech_encoder_ds_rate, on_bad=on_bad,
                            supervise=d.supervise_turns, unit_source=d.unit_source,
                            unit_vocab_size=omni.unit_vocab_size, ctc_upsample_factor=omni.ctc_upsample_factor)


def build_dataset(path: str, tokenizer, cfg, omni, log=print, n_mels: int = 128):
    """Validated OmniSpeechDataset of a manifest; bad records reported by id and reason, then
    skipped (data.on_bad = "skip") or fatal ("error")."""
    from omni_ds.data.dataset import OmniSpeechDataset
    from omni_ds.data.manifest import load_manifest
    from omni_ds.data.validate import DataError, validate_manifest
    builder = cfg.prompt_builder(tokenizer)
    vcfg = validation_config(cfg, omni)
    manifest = load_manifest(path, cfg.data.audio_root)
    report = validate_manifest(manifest, vcfg, builder)
    for b in report.bad:
        log(f"bad record {b.id} ({path}, index {b.index}): {b.reason}")
    if report.bad and cfg.data.on_bad == "error":
        raise DataError(f"{path}: {len(report.bad)} bad record(s) (listed above) and data.on_bad = \"error\"")
    log(f"{path}: {report.summary()}" + (" (bad records skipped)" if report.bad else ""))
    return OmniSpeechDataset(manifest, builder, vcfg, n_mels=n_mels, report=report)


def count_targets(batch: dict, stage: int) -> int:
    """Supervised targets in a batch: next-token labels (stage 1), target units (stage 2; the
    loop leaves out those of infeasible_answers, as the model's `n_targets` does, and checks
    the two agree on the first steps)."""
    from omni_ds.constants import IGNORE_INDEX
    if stage == 2:
        return int(batch["units"].ne(IGNORE_INDEX).sum())
    return int(batch["labels"][:, 1:].ne(IGNORE_INDEX).sum())


@dataclass(frozen=True)
class InfeasibleAnswer:
    """A stage-2 answer of a batch that no CTC alignment exists for (omni_ds.model.ctc_lengths)."""
    row: int              # the batch item it belongs to
    answer: int           # 1-based among that item's answers (a dialogue's kept turns, in order)
    n_states: int
    n_units: int
    repeats: int


def infeasible_answers(batch: dict, factor: int, source: str) -> list[InfeasibleAnswer]:
    """The batch's answers whose CTC loss will be infinite, found from lengths on the CPU before
    the step runs (so every rank can agree on the step's target count and the policy before any
    forward), by the rule the decoder's loss applies. `source`: the model's ctc_hidden_source."""
    from omni_ds.constants import IGNORE_INDEX
    from omni_ds.model.ctc_lengths import ctc_infeasible, padded_repeats
    units = batch["units"]
    if "response_lengths" in batch:          # cached states
        n_states, rows = batch["response_lengths"], batch["response_rows"].tolist()
    else:
        from omni_ds.model.omni_model import response_spans
        spans = response_spans(batch["labels"], source)
        n_states, rows = torch.tensor([end - start for _, start, end in spans]), [r for r, _, _ in spans]
    n_units, repeats = units.ne(IGNORE_INDEX).sum(-1), padded_repeats(units)
    answer = [rows[:j + 1].count(rows[j]) for j in range(len(rows))]
    return [InfeasibleAnswer(rows[j], answer[j], int(n_states[j]), int(n_units[j]), int(repeats[j]))
            for j in torch.nonzero(ctc_infeasible(n_states, n_units, repeats, factor)).flatten().tolist()]
