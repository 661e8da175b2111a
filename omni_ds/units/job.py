"""A unit-extraction job: manifest in, `units` added per answer out, resumable by parts.

    job = ExtractionJob(manifest="train.jsonl", hubert="mhubert.pt", kmeans="km1000.bin",
                        out="train_units.jsonl")
    exit_code = run_job(job)          # 0 all records, 1 some failed (listed), 2 bad inputs

The audio items are turns: every answer of every record (one for a single-turn record, one per
gpt turn of a dialogue) is extracted on its own, and a record is written, its units put where the
manifest reader reads them back (record_forms.put_units), only when all of its turns got units;
otherwise each failed turn is listed and the record left out (a record with a structure problem
is listed with that problem). Records are grouped in parts of `part_size` records, whatever their
turns; each shard (i/n, or RANK/WORLD_SIZE) extracts its parts and writes each one atomically when
its last turn is done (omni_ds.units.parts), so a killed job rerun skips finished parts; the last
shard to finish merges them into `out`. The plan (what the parts depend on) is pinned in the
parts folder: resuming with other inputs is refused. A backend is anything with `sample_rate`, `too_short(n)`, `units(waves)` and
`try_precision(name, waves)`: UnitExtractor (batched, no fairseq) or FairseqUnitExtractor.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from omni_ds.data.manifest import file_digest
from omni_ds.data.record_forms import put_units, unit_holders
from omni_ds.units import parts as P


@dataclass
class ExtractionJob:
    manifest: str
    hubert: str
    kmeans: str
    out: str
    layer: int = 11
    dedup: bool = True
    shard: Optional[tuple[int, int]] = None      # None: RANK / WORLD_SIZE of the launcher
    batch_seconds: Optional[float] = None        # None: 16 on CPU, 200 on GPU
    device: Optional[str] = None                 # None: cuda:LOCAL_RANK when available, else cpu
    dtype: str = "fp32"
    workers: int = 1
    part_size: int = 256
    backend: str = "omni_ds"
    quiet: bool = False

    def resolved_shard(self) -> tuple[int, int]:
        if self.shard:
            return self.shard
        world = int(os.environ.get("WORLD_SIZE", "1"))
        return (int(os.environ.get("RANK", "0")), world) if world > 1 else (0, 1)

    def resolved_device(self) -> str:
        import torch
        if self.device:
            return self.device
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else "cpu"

    def plan(self, manifest) -> dict:
        """What finished parts depend on: another value here means they cannot be reused."""
        plan = {"manifest": manifest.fingerprint, "records": len(manifest), "part_size": self.part_size,
                "layer": self.layer, "dedup": self.dedup, "backend": self.backend,
                "hubert_sha256": file_digest(Path(self.hubert)), "kmeans_sha256": file_digest(Path(self.kmeans))}
        # Only where units go on turns: parts written before per-turn units (the first answer's
        # units on the record) are refused, while a single-turn job's plan, hence its parts, stay.
        # bf16/fp16 units may differ from fp32 ones in a few frames: parts of one precision are
        # not mixed with another's. Pinned only when asked for, so fp32 jobs keep their plan.
        if self.dtype != "fp32":
            plan["dtype"] = self.dtype
        on_turns = _records_with_units_on_turns(manifest)
        if on_turns:
            plan["records_with_units_on_turns"] = on_turns
        return plan


def _records_with_units_on_turns(manifest) -> int:
    import json
    return sum(not any(h is rec for h in unit_holders(rec)) for chunk in manifest.arrow_column("raw").chunks
               for rec in map(json.loads, chunk.to_pylist()))


class TurnItems:
    """The job's audio items: the manifest's turns flattened (omni_ds.data.validate.Turns), those
    of records with a structure `problem` left out (such a record is listed failed as a whole)."""

    def __init__(self, manifest):
        from omni_ds.data.validate import Turns
        self.turns, self.ids, self.problems = Turns(manifest), manifest.ids, manifest.column("problem")
        self.paths = self.turns.column("response_path")

    def of_record(self, r: int) -> range:
        if self.problems[r]:        # its turns before the problem are not worth extracting
            return range(0)
        return range(int(self.turns.offsets[r]), int(self.turns.offsets[r + 1]))

    def of_records(self, records: range) -> list[int]:
        return [t for r in records for t in self.of_record(r)]

    def failure(self, t: int, reason: str) -> dict:
        """The failed-turn row; `turn` (1-based answer number, as validation names it) only for a
        dialogue, so a single-turn record's row is what it always was."""
        r = int(self.turns.record[t])
        turn = {} if self.turns.single[t] else {"turn": int(self.turns.number[t])}
        return {"id": self.ids[r], "index": r, **turn, "path": self.paths[t], "reason": reason}

    def problem_failures(self, records: range) -> list[dict]:
        return [{"id": self.ids[r], "index": r, "path": None, "reason": f"bad dialogue: {self.problems[r]}"}
                for r in records if self.problems[r]]


def build_backend(job: ExtractionJob, centers, device: str, batch_seconds: float):
    if job.backend == "fairseq":
        from omni_ds.units.fairseq_backend import FairseqUnitExtractor
        return FairseqUnitExtractor(job.hubert, centers, job.layer, device, job.dedup)
    from omni_ds.units.extract import FeatureExtractor, UnitExtractor
    from omni_ds.units.hubert import load_hubert
    return UnitExtractor(FeatureExtractor(load_hubert(job.hubert, job.layer), device, batch_seconds),
                         centers, job.dedup)


def extract_batch(backend, items) -> tuple[dict, dict]:
    """Units for the good items and the reason for each other one, both by item index."""
    done, failed, good = {}, {}, []
    for it in items:
        why = it.error or backend.too_short(len(it.wave))
        if why:
            failed[it.index] = why
        else:
            good.append(it)
    try:
        for it, u in zip(good, backend.units([it.wave for it in good])):
            done[it.index] = u
    except Exception:
        for it in good:             # isolate the item that breaks the batch
            try:
                done[it.index] = backend.units([it.wave])[0]
            except Exception as err:
                failed[it.index] = f"extraction failed: {type(err).__name__}: {err}"
    return done, failed


class PartWriter:
    """Collects a shard's results per part; writes a part the moment its last turn is in."""

    def __init__(self, root: Path, manifest, items: TurnItems, todo: list[int], part_size: int):
        self.root, self.manifest, self.items = root, manifest, items
        self.ranges = {j: P.part_range(j, len(manifest), part_size) for j in todo}
        self.part_of = {t: j for j in todo for t in items.of_records(self.ranges[j])}
        self.pending = {j: len(items.of_records(self.ranges[j])) for j in todo}
        self.results = {j: {"units": {}, "seconds": {}, "failed": items.problem_failures(self.ranges[j])}
                        for j in todo}
        self.audio_seconds = 0.0
        self.failed = sum(len(r["failed"]) for r in self.results.values())

    def write_ready(self) -> None:
        """Write the parts with no audio left to wait for (all their records have a problem)."""
        for j in [j for j, left in self.pending.items() if left == 0 and j in self.results]:
            self._write(j, self.results.pop(j))

    def add(self, items, done: dict, failed: dict, sample_rate: int) -> None:
        for it in items:
            r = self.results[self.part_of[it.index]]
            if it.index in done:
                r["units"][it.index] = done[it.index]
                r["seconds"][it.index] = len(it.wave) / sample_rate
                self.audio_seconds += len(it.wave) / sample_rate
            else:
                r["failed"].append(self.items.failure(it.index, failed[it.index]))
                self.failed += 1
            self.pending[self.part_of[it.index]] -= 1
        self.write_ready()

    def _write(self, j: int, r: dict) -> None:
        """The part's records whose every turn has units (in manifest order), its failures."""
        rows, units, seconds = [], [], 0.0
        for i in self.ranges[j]:
            turns = self.items.of_record(i)
            if turns and all(t in r["units"] for t in turns):
                rows.append(put_units(self.manifest.raw(i), [r["units"][t] for t in turns]))
                units += [r["units"][t] for t in turns]
                seconds += sum(r["seconds"][t] for t in turns)
        failed = sorted(r["failed"], key=lambda f: (f["index"], f.get("turn", 0)))
        P.write_part(self.root, j, rows, failed, seconds, units)


def run_job(job: ExtractionJob, log=print) -> int:
    """Extract this shard's missing parts, then merge if every part is done; the exit code."""
    prepared = _prepare(job)
    if isinstance(prepared, int):
        return prepared
    manifest, backend, batch_seconds = prepared
    shard, n_shards = job.resolved_shard()
    root, n = P.parts_dir(Path(job.out)), len(manifest)
    todo = [j for j in P.shard_parts(n, job.part_size, shard, n_shards) if not P.part_done(root, j)]
    writer = PartWriter(root, manifest, TurnItems(manifest), todo, job.part_size)
    writer.write_ready()
    t0 = time.perf_counter()
    if any(writer.pending.values()):
        _extract(job, backend, batch_seconds, writer, (shard, n_shards))
    return _finish(job, writer, (shard, n_shards), time.perf_counter() - t0, log)


def _prepare(job: ExtractionJob):
    """(manifest, backend, batch seconds) once every input is checked, or exit code 2 (said why)."""
    from omni_ds.data.manifest import load_manifest
    from omni_ds.units.kmeans import load_centroids
    device = job.resolved_device()
    batch_seconds = job.batch_seconds or (16.0 if device == "cpu" else 200.0)
    try:
        centers = load_centroids(job.kmeans)
        manifest = load_manifest(job.manifest)
        backend = build_backend(job, centers, device, batch_seconds)     # refuses a bad layer / width
        P.check_plan(P.parts_dir(Path(job.out)), job.plan(manifest))    # written only once all is valid
    except Exception as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return manifest, backend, batch_seconds


def _extract(job: ExtractionJob, backend, batch_seconds: float, writer: PartWriter, shard) -> None:
    from tqdm import tqdm
    from omni_ds.units.loader import AudioItems, audio_seconds, make_loader, plan_batches
    paths, todo = writer.items.paths, [j for j in sorted(writer.pending) if writer.pending[j]]
    part_turns = {j: writer.items.of_records(writer.ranges[j]) for j in todo}
    seconds = {t: audio_seconds(paths[t]) if paths[t] else 0.0 for j in todo for t in part_turns[j]}
    # Batches stay within a part, so a part is written as soon as its own batches are done.
    batches = [b for j in todo for b in plan_batches(part_turns[j], seconds, batch_seconds)]
    loader = make_loader(AudioItems([(t, paths[t]) for t in seconds], backend.sample_rate), batches, job.workers)
    bar = tqdm(total=len(seconds), unit="file", disable=job.quiet or shard[0] != 0,
               desc=f"units shard {shard[0]}/{shard[1]}", dynamic_ncols=True)
    t0, checked = time.perf_counter(), False
    for items in loader:
        if not checked:
            checked = _pick_precision(job, backend, items)
        done, failed = extract_batch(backend, items)
        writer.add(items, done, failed, backend.sample_rate)
        bar.update(len(items))
        hours = writer.audio_seconds / 3600
        bar.set_postfix_str(f"{hours / max(time.perf_counter() - t0, 1e-9):.4f} audio-h/s, "
                            f"{hours:.3f} h, {writer.failed} failed")
    bar.close()


def _pick_precision(job: ExtractionJob, backend, items) -> bool:
    """bf16/fp16 only when they give the fp32 units on (almost) all frames of the first batch
    with usable audio; False while no batch had any (nothing to compare yet)."""
    check = [it.wave for it in items if it.wave is not None and not backend.too_short(len(it.wave))][:8]
    if not check and job.dtype != "fp32":
        return False
    note = backend.try_precision(job.dtype, check)
    if note:
        print(f"note: {note}", file=sys.stderr)
    return True


def _finish(job: ExtractionJob, writer: PartWriter, shard, elapsed: float, log) -> int:
    out, n = Path(job.out), len(writer.manifest)
    summary = P.merge(out, n, job.part_size)
    if summary is None:
        left = [j for j in range(P.n_parts(n, job.part_size)) if not P.part_done(P.parts_dir(out), j)]
        log(f"shard {shard[0]}/{shard[1]} done ({writer.audio_seconds / 3600:.3f} audio h in {elapsed:.1f} s, "
            f"{writer.failed} failed); {len(left)} parts of other shards still missing, "
            f"the last shard to finish merges into {out}")
        return 1 if writer.failed else 0
    print_summary(summary, out, writer.audio_seconds, elapsed, log)
    return 1 if summary["failed"] else 0


def print_summary(s: dict, out: Path, processed_s: float, elapsed: float, log=print) -> None:
    log(f"units: {s['ok']}/{s['files']} files, {s['audio_hours']:.4f} audio hours, "
        f"{s['units']} units ({s['distinct_units']} distinct, histogram entropy "
        f"{s['unit_entropy_bits']:.3f} bits) -> {out}")
    if processed_s:
        log(f"this run: {processed_s:.1f} audio s in {elapsed:.1f} s = "
            f"{processed_s / max(elapsed, 1e-9):.2f} audio-s/s")
    if s["failed"]:
        log(f"FAILED: {s['failed']} records (not in the output; every failed turn listed in "
            f"{out.name}.failed.jsonl):")
        for f in s["failures"][:20]:
            turn = f", turn {f['turn']}" if "turn" in f else ""
            log(f"  id {f['id']} (index {f['index']}{turn}): {f['reason']}")
        if len(s["failures"]) > 20:
            log(f"  ... {len(s['failures']) - 20} more")
