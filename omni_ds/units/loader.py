"""Audio loading for unit extraction: decode + resample in DataLoader workers, batches planned
by total audio length, every failure kept with its item index (the job's turn) and reason."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import soundfile as sf
import torch

from omni_ds.data.audio import load_audio


@dataclass
class Item:
    index: int
    wave: np.ndarray | None
    error: str | None


def audio_seconds(path: str | None) -> float:
    """Duration from the file header (0 when unreadable: the worker then reports why)."""
    try:
        info = sf.info(path)
        return info.frames / info.samplerate
    except Exception:
        return 0.0


class AudioItems(torch.utils.data.Dataset):
    """items[k] = (item index, audio path or None); returns Item with wave or error."""

    def __init__(self, items: list[tuple[int, str | None]], sample_rate: int):
        self.items, self.rate = dict(items), sample_rate

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Item:
        path = self.items[index]
        if not path:
            return Item(index, None, "no response speech (speech_response_path, or the gpt turn's speech)")
        try:
            wave = load_audio(path, self.rate)
        except Exception as err:
            return Item(index, None, f"cannot read audio {path}: {type(err).__name__}: {err}")
        if wave.size == 0 or not np.isfinite(wave).all():
            return Item(index, None, f"audio {path} is empty or has non-finite samples")
        return Item(index, wave, None)


def plan_batches(indices: list[int], seconds: dict[int, float], batch_seconds: float):
    """Sort by length (less padding) and pack while rows * longest <= batch_seconds."""
    batch: list[int] = []
    for i in sorted(indices, key=lambda i: -seconds[i]):
        if batch and (len(batch) + 1) * seconds[batch[0]] > batch_seconds:
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


def make_loader(dataset: AudioItems, batches: list[list[int]], workers: int):
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=batches, num_workers=workers, collate_fn=list,
        prefetch_factor=4 if workers else None, persistent_workers=False)
