"""Stage-2 hidden-state cache: the frozen LLM's response states, computed once, reused.

In stage 2 the encoder, projector and LLM are frozen and run without dropout, so the states that
feed the CTC decoder are the same every epoch. The cache computes them once (each rank a strided
share of the records), stores them on disk (bf16 by default) with an index, and serves them to
later epochs and reruns; the decoder is then the only model that runs.

Layout: CACHE_DIR/<key>/part-RRRRR-of-WWWWW.{bin,json} + meta.json (written last: its presence
marks the cache complete). The key hashes everything the states depend on: the model folder's
weights and config, the manifest content, the prompt settings and the omni settings. Changing any
of them gives a new key, so a stale cache is never read.

Disk cost per sample: response states x LLM width x bytes per value. For Llama-3.1-8B (4096 wide)
with InstructS2S responses (~55 tokens incl. <|eot_id|>): 55 x 4096 x 2 B = 0.45 MB in bf16, about
90 GB for 200 K samples (fp32: twice that).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import numpy as np
import torch
import torch.distributed as dist

from omni_ds.constants import IGNORE_INDEX

DTYPES = {"bf16": (torch.bfloat16, np.uint16), "fp32": (torch.float32, np.float32)}


def file_fingerprint(path: Path) -> str:
    """Content hash for small files; (name, size, mtime) for weight files, which are large."""
    st = path.stat()
    if st.st_size < 16 * 1024 * 1024:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    return f"{path.name}:{st.st_size}:{st.st_mtime_ns}"


def folder_fingerprint(model_dir: Path) -> str:
    """What identifies a model folder: its config, weight and tokenizer files (file_fingerprint each)."""
    return "".join(f"{f.name}={file_fingerprint(f)};" for f in sorted(Path(model_dir).glob("*"))
                   if f.suffix in (".json", ".safetensors", ".pt", ".bin") and f.is_file())


def cache_key(model_dir: Path, manifest_path: Path, settings: dict) -> str:
    h = hashlib.sha256()
    h.update(folder_fingerprint(model_dir).encode())
    h.update(f"manifest={file_fingerprint(Path(manifest_path))};".encode())
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return h.hexdigest()[:24]


@dataclass(frozen=True)
class StateSource:
    """Where the cached states come from: the frozen model run over `dataset`, `batch_size` items
    at a time batched by `collate`, inputs moved to `device` and floating ones cast to `float_dtype`."""
    model: Any
    dataset: Any
    collate: Callable[[list], dict]
    batch_size: int
    device: Any
    float_dtype: torch.dtype

    def response_states(self, items: list[int]) -> tuple[dict, torch.Tensor, torch.Tensor, list[int]]:
        """(the collated batch, [N, T, D] response states, [N] their lengths, [N] the batch row of
        each) of these dataset items: one state sequence per answer (a dialogue has several)."""
        from omni_ds.model.omni_model import response_spans
        batch = self.collate([self.dataset[i] for i in items])
        inputs = {k: (v.to(self.device).to(self.float_dtype) if v.is_floating_point() else v.to(self.device))
                  for k, v in batch.items() if torch.is_tensor(v)}
        states, lengths = self.model.response_hidden_states(
            inputs["input_ids"], inputs["attention_mask"], inputs["labels"],
            inputs["speech_mel"], inputs["speech_frames"])
        rows = [row for row, _, _ in response_spans(batch["labels"], self.model.omni_config.ctc_hidden_source)]
        return batch, states, lengths, rows


class HiddenStateCache:
    def __init__(self, root: Path, key: str, dtype: str = "bf16"):
        if dtype not in DTYPES:
            raise ValueError(f"cache dtype {dtype!r}: allowed {sorted(DTYPES)}")
        self.dir = Path(root) / key
        self.dtype = dtype
        self._parts: dict[int, np.memmap] = {}
        self._index: Optional[dict[int, tuple[int, int, int]]] = None
        self._meta: Optional[dict] = None

    @property
    def complete(self) -> bool:
        return (self.dir / "meta.json").exists()

    # ---- building ----------------------------------------------------------------------------
    @torch.no_grad()
    def build(self, source: StateSource, rank: int = 0, world: int = 1, progress=None) -> bool:
        """Every rank writes the states of dataset items rank, rank + world, ...; meta.json is
        written once all parts exist. Parts already complete (from a killed build) are kept.
        A complete cache (meta.json present) is not touched: returns False; True when it was built.
        Every rank runs the same number of forwards (ZeRO-3 gathers parameters collectively): a
        rank with fewer items repeats a batch and discards it."""
        if self.complete:
            return False
        self.dir.mkdir(parents=True, exist_ok=True)
        name = f"part-{rank:05d}-of-{world:05d}"
        n_records = len(source.dataset)
        if not (self.dir / f"{name}.json").exists():
            n_batches = -(-(-(-n_records // world)) // source.batch_size)     # ceil(ceil(N / world) / bs)
            self._build_part(source, range(rank, n_records, world), name, progress, n_batches)
        if dist.is_initialized():
            dist.barrier()
        self._write_meta_once_complete(world, n_records, rank)
        if dist.is_initialized():
            dist.barrier()
        return True

    def _write_meta_once_complete(self, world: int, n_records: int, rank: int) -> None:
        """meta.json (which marks the cache complete), written by whichever rank sees every part."""
        parts = sorted(self.dir.glob(f"part-*-of-{world:05d}.json"))
        if len(parts) == world and not self.complete:
            width = None
            for part in parts:
                width = width or json.loads(part.read_text())["width"]
            meta = {"world": world, "dtype": self.dtype, "width": width, "records": n_records}
            tmp = self.dir / f"meta.json.tmp{rank}"
            tmp.write_text(json.dumps(meta))
            os.replace(tmp, self.dir / "meta.json")

    def _build_part(self, source: StateSource, items: Iterable[int], name: str, progress,
                    n_batches: Optional[int] = None) -> None:
        torch_dtype, np_dtype = DTYPES[self.dtype]
        index: dict[int, list[int]] = {}
        offset, width = 0, None
        items = list(items)
        batch_size = source.batch_size
        starts = list(range(0, len(items), batch_size))
        n_batches = max(n_batches or 0, len(starts))
        tmp_bin = self.dir / f"{name}.bin.tmp"
        with open(tmp_bin, "wb") as out:
            for b in range(n_batches):
                real = b < len(starts)
                chosen = items[starts[b]:starts[b] + batch_size] if real else (items[:1] or [0])
                batch, states, lengths, rows = source.response_states(chosen)
                if not real:                  # a filler forward for ZeRO-3's collectives
                    continue
                width = states.shape[-1]
                for row, sample in enumerate(batch["sample_index"].tolist()):
                    # a sample's answers back to back; the index keeps each answer's length
                    turns = [j for j, r in enumerate(rows) if r == row]
                    values = torch.cat([states[j, : int(lengths[j])] for j in turns]).to(torch_dtype).cpu()
                    raw = values.view(torch.uint16).numpy() if self.dtype == "bf16" else values.numpy()
                    out.write(np.ascontiguousarray(raw, dtype=np_dtype).tobytes())
                    index[sample] = [offset, values.shape[0], [int(lengths[j]) for j in turns]]
                    offset += values.shape[0] * width
                if progress is not None:
                    progress(len(batch["sample_index"]))
        os.replace(tmp_bin, self.dir / f"{name}.bin")
        tmp = self.dir / f"{name}.json.tmp"
        tmp.write_text(json.dumps({"width": width, "index": index}))
        os.replace(tmp, self.dir / f"{name}.json")      # the part counts only once this exists

    # ---- reading -------------------------------------------------------------------------------
    def _load(self) -> None:
        if not self.complete:
            raise FileNotFoundError(f"hidden-state cache {self.dir} is incomplete (no meta.json)")
        self._meta = json.loads((self.dir / "meta.json").read_text())
        _, np_dtype = DTYPES[self._meta["dtype"]]
        self._index = {}
        world = self._meta.get("world")
        pattern = f"part-*-of-{world:05d}.json" if world else "part-*.json"
        for p, part in enumerate(sorted(self.dir.glob(pattern))):
            info = json.loads(part.read_text())
            binary = part.with_suffix(".bin")
            self._parts[p] = (np.memmap(binary, dtype=np_dtype, mode="r") if binary.stat().st_size
                              else np.zeros(0, dtype=np_dtype))
            for sample, (offset, n, *turns) in info["index"].items():
                self._index[int(sample)] = (p, offset, n, turns[0] if turns else [n])

    def get(self, sample_index: int) -> torch.Tensor:
        """[n_states, width] float32 states of the record at this manifest index (its answers
        back to back: `turn_lengths` splits them)."""
        if self._index is None:
            self._load()
        if sample_index not in self._index:
            raise KeyError(f"hidden-state cache {self.dir} has no record with manifest index {sample_index}")
        p, offset, n, _ = self._index[sample_index]
        width = self._meta["width"]
        raw = torch.from_numpy(np.array(self._parts[p][offset: offset + n * width])).view(n, width)
        if self._meta["dtype"] == "bf16":
            raw = raw.view(torch.bfloat16)
        return raw.float()

    def turn_lengths(self, sample_index: int) -> list[int]:
        """States per answer of the record (one entry for a single-turn record)."""
        if self._index is None:
            self._load()
        return list(self._index[sample_index][3])

    def disk_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.dir.glob("*") if p.is_file())


class CachedStatesDataset(torch.utils.data.Dataset):
    """Stage-2 items from the cache: same indices as the base dataset, no audio or LLM needed."""

    def __init__(self, base, cache: HiddenStateCache):
        self.base = base
        self.cache = cache
        self.indices = base.indices
        self.lengths = base.lengths
        self.n_skipped = getattr(base, "n_skipped", 0)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        from omni_ds.data.validate import turn_units
        index = int(self.indices[i])
        states, lengths = self.cache.get(index), self.cache.turn_lengths(index)
        turns = self.base.manifest.turns(index)[: len(lengths)]       # the answers the model kept
        units = [torch.tensor(turn_units(t, self.base.cfg.unit_source), dtype=torch.long) for t in turns]
        single = len(lengths) == 1
        return {"response_states": states if single else list(torch.split(states, lengths)),
                "units": units[0] if single else units, "sample_index": index}


def collate_cached(items: list[dict]) -> dict:
    """[N, T, D] states (one row per answer: per item, or per turn of a dialogue) right padded
    with zeros, their lengths, units padded with -100, sample_index per item, and response_rows
    [N] (the item of each answer: the loop names an answer's record with it; the model ignores it)."""
    from omni_ds.data.collator import spread
    seqs, targets = spread(items, "response_states"), spread(items, "units")
    n = max(x.shape[0] for x in seqs)
    u = max(len(x) for x in targets)
    states = torch.zeros(len(seqs), n, seqs[0].shape[1])
    units = torch.full((len(seqs), u), IGNORE_INDEX, dtype=torch.long)
    for b, (x, y) in enumerate(zip(seqs, targets)):
        states[b, : x.shape[0]] = x
        units[b, : len(y)] = y
    rows = [b for b, it in enumerate(items) for _ in (it["units"] if isinstance(it["units"], list) else [0])]
    return {"response_states": states, "response_lengths": torch.tensor([x.shape[0] for x in seqs]),
            "units": units, "sample_index": torch.tensor([it["sample_index"] for it in items]),
            "response_rows": torch.tensor(rows, dtype=torch.long)}
