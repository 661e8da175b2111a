"""The loop's view of the data: a stream of micro-batches organised in optimizer steps.

Step `s` of an epoch consumes samples perm[s*G : (s+1)*G] of that epoch's permutation
(G = global batch = micro x world x GAS), split into micro-batches dealt round-robin to the ranks.
So the samples of a step do not depend on how G is factored into ranks and accumulation steps —
which is what lets a 2-rank run reproduce a 1-rank run — and the data position is just
(epoch, step within the epoch): resuming skips whole steps by index arithmetic, without reading
data. The `n % G` samples left over by the permutation are not seen in that epoch (a different
subset each epoch).

The order itself comes from an "order" function (epoch -> permutation of dataset indices);
the default is a seeded shuffle, deterministic per (seed, epoch).
"""
from __future__ import annotations

from typing import Callable, Iterator, Optional

import torch


def shuffled_order(n: int, seed: int) -> Callable[[int], list[int]]:
    def order(epoch: int) -> list[int]:
        g = torch.Generator()
        g.manual_seed(seed * 1_000_003 + epoch)
        return torch.randperm(n, generator=g).tolist()
    return order


class StepSampler:
    """Per-rank micro-batch index lists for each step of an epoch (a DataLoader batch_sampler)."""

    def __init__(self, num_samples: int, micro: int, gas: int, world: int, rank: int,
                 order: Callable[[int], list[int]]):
        self.n, self.micro, self.gas, self.world, self.rank = num_samples, micro, gas, world, rank
        self.global_batch = micro * gas * world
        self.order = order
        self.epoch = 0
        self.start_step = 0
        if self.steps_per_epoch < 1:
            raise ValueError(f"{num_samples} training samples are fewer than one global batch "
                             f"({self.global_batch} = micro {micro} x GAS {gas} x world {world})")

    @property
    def steps_per_epoch(self) -> int:
        return self.n // self.global_batch

    def set_position(self, epoch: int, step_in_epoch: int) -> None:
        self.epoch, self.start_step = epoch, step_in_epoch

    def step_indices(self, perm: list[int], step: int) -> list[list[int]]:
        """This rank's GAS micro-batches of `step`."""
        chunk = perm[step * self.global_batch:(step + 1) * self.global_batch]
        micro_batches = [chunk[i:i + self.micro] for i in range(0, len(chunk), self.micro)]
        return micro_batches[self.rank::self.world]

    def __iter__(self) -> Iterator[list[int]]:
        perm = self.order(self.epoch)
        for step in range(self.start_step, self.steps_per_epoch):
            yield from self.step_indices(perm, step)

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start_step) * self.gas


class StepStream:
    """Yields (epoch, step_in_epoch, [GAS micro-batches]) forever, crossing epochs."""

    def __init__(self, dataset, sampler: StepSampler, collate, num_workers: int = 0,
                 epoch: int = 0, step_in_epoch: int = 0):
        self.dataset, self.sampler, self.collate, self.num_workers = dataset, sampler, collate, num_workers
        self.epoch, self.step_in_epoch = epoch, step_in_epoch
        self._it: Optional[Iterator] = None

    def _open(self) -> None:
        self.sampler.set_position(self.epoch, self.step_in_epoch)
        loader = torch.utils.data.DataLoader(self.dataset, batch_sampler=self.sampler,
                                             collate_fn=self.collate, num_workers=self.num_workers,
                                             persistent_workers=False)
        self._it = iter(loader)

    def next_step(self) -> tuple[int, int, list[dict]]:
        if self.step_in_epoch >= self.sampler.steps_per_epoch:
            self.epoch, self.step_in_epoch, self._it = self.epoch + 1, 0, None
        if self._it is None:
            self._open()
        batches = [next(self._it) for _ in range(self.sampler.gas)]
        pos = (self.epoch, self.step_in_epoch)
        self.step_in_epoch += 1
        return pos[0], pos[1], batches

    def position(self) -> dict:
        """Where the NEXT step starts (saved in checkpoints)."""
        epoch, step = self.epoch, self.step_in_epoch
        if step >= self.sampler.steps_per_epoch:
            epoch, step = epoch + 1, 0
        return {"epoch": epoch, "step_in_epoch": step, "offset": step * self.sampler.global_batch}


# ---- datasets -------------------------------------------------------------------------------------
def speech_positions(frames: int, ds_rate: int = 5) -> int:
    """LLM positions the projector makes from `frames` mel frames (conv stride 2, then k frames)."""
    return ((frames + 1) // 2) // ds_rate


class InstructionSet(torch.utils.data.Dataset):
    """Manifest records -> contract samples (ids, labels, log-mel). Records that cannot be used
    are found up front (`check()`), reported with id and reason, and skipped or fatal by policy."""

    def __init__(self, manifest_path: str, tokenizer, encoder_mode: str, model_max_length: int,
                 max_speech_seconds: float = 30.0, need_units: bool = False, ds_rate: int = 5):
        from omni_ds.data.manifest import load_manifest
        from omni_ds.data.prompt import PromptBuilder
        self.manifest = load_manifest(manifest_path)
        self.path = manifest_path
        self.prompt = PromptBuilder(tokenizer, model_max_length=model_max_length)
        self.mode, self.ds_rate = encoder_mode, ds_rate
        self.max_seconds, self.need_units = max_speech_seconds, need_units
        self.keep = list(range(len(self.manifest)))
        self.bad: list[tuple[str, str]] = []

    def check(self) -> list[tuple[str, str]]:
        """Find unusable records (missing/unreadable audio, empty text, too long, bad units)."""
        import soundfile as sf
        from omni_ds.data.prompt import PromptError
        keep, bad, lengths = [], [], []
        for i in range(len(self.manifest)):
            rec = self.manifest[i]
            try:
                info = sf.info(rec["speech_path"])
                if info.duration > self.max_seconds:
                    raise ValueError(f"instruction audio {info.duration:.1f} s > max_speech_seconds "
                                     f"{self.max_seconds}")
                if not (rec.get("response_text") or "").strip():
                    raise ValueError("empty response text")
                if self.need_units:
                    u = rec.get("units")
                    if not u or min(u) < 0 or max(u) > 999:
                        raise ValueError("units missing or outside 0..999")
                n_speech = self._positions(int(info.duration * 16000))
                built = self.prompt.build(rec["response_text"], speech_positions=n_speech)
                keep.append(i)
                lengths.append(len(built["input_ids"]) - 1 + n_speech)
            except (OSError, RuntimeError, ValueError, PromptError) as e:
                bad.append((rec["id"], str(e)))
        self.keep, self.bad, self.lengths = keep, bad, lengths
        return bad

    def _positions(self, n_samples: int) -> int:
        from omni_ds.data.audio import num_frames
        frames = 3000 if self.mode == "padded" else num_frames(n_samples)
        return speech_positions(frames, self.ds_rate)

    def __len__(self) -> int:
        return len(self.keep)

    def __getitem__(self, i: int) -> dict:
        from omni_ds.data.audio import load_audio, log_mel
        rec = self.manifest[self.keep[i]]
        mel, frames = log_mel(load_audio(rec["speech_path"]), mode=self.mode)
        built = self.prompt.build(rec["response_text"], speech_positions=speech_positions(frames, self.ds_rate))
        out = {"input_ids": built["input_ids"], "labels": built["labels"], "speech_mel": mel,
               "speech_frames": frames, "sample_index": self.keep[i], "id": rec["id"]}
        if self.need_units:
            out["units"] = rec["units"]
        return out


class Collator:
    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, items: list[dict]) -> dict:
        from omni_ds.constants import IGNORE_INDEX
        L = max(len(x["input_ids"]) for x in items)
        T = max(x["speech_mel"].shape[-1] for x in items)
        B = len(items)
        ids = torch.full((B, L), self.pad_id, dtype=torch.long)
        labels = torch.full((B, L), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((B, L), dtype=torch.long)
        mel = torch.zeros((B, items[0]["speech_mel"].shape[0], T))
        for b, x in enumerate(items):
            n = len(x["input_ids"])
            ids[b, :n] = torch.tensor(x["input_ids"])
            labels[b, :n] = torch.tensor(x["labels"])
            mask[b, :n] = 1
            mel[b, :, : x["speech_mel"].shape[-1]] = x["speech_mel"]
        batch = {"input_ids": ids, "labels": labels, "attention_mask": mask, "speech_mel": mel,
                 "speech_frames": torch.tensor([x["speech_frames"] for x in items]),
                 "sample_index": torch.tensor([x["sample_index"] for x in items])}
        if "units" in items[0]:
            U = max(len(x["units"]) for x in items)
            units = torch.full((B, U), IGNORE_INDEX, dtype=torch.long)
            for b, x in enumerate(items):
                units[b, : len(x["units"])] = torch.tensor(x["units"])
            batch["units"] = units
        return batch


def count_targets(batch: dict, stage: int) -> int:
    """Supervised targets in a batch, as the model counts them: next-token labels (stage 1),
    target units (stage 2). Checked against the model's own `n_targets` every micro-step."""
    from omni_ds.constants import IGNORE_INDEX
    if stage == 2:
        return int(batch["units"].ne(IGNORE_INDEX).sum())
    return int(batch["labels"][:, 1:].ne(IGNORE_INDEX).sum())
