"""A unit-extraction job: manifest in, `units` added per record out, resumable by parts.

    job = ExtractionJob(manifest="train.jsonl", hubert="mhubert.pt", kmeans="km1000.bin",
                        out="train_units.jsonl")
    exit_code = run_job(job)          # 0 all records, 1 some failed (listed), 2 bad inputs

Records are grouped in parts of `part_size`; each shard (i/n, or RANK/WORLD_SIZE) extracts its
parts and writes each one atomically when its last record is done (omni_ds.units.parts), so a
killed job rerun skips finished parts; the last shard to finish merges them into `out`. The
plan (what the parts depend on) is pinned in the parts folder: resuming with other inputs is
refused. A backend is anything with `sample_rate`, `too_short(n)`, `units(waves)` and
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
        return {"manifest": manifest.fingerprint, "records": len(manifest), "part_size": self.part_size,
                "layer": self.layer, "dedup": self.dedup, "backend": self.backend,
                "hubert_sha256": file_digest(Path(self.hubert)), "kmeans_sha256": file_digest(Path(self.kmeans))}


def build_backend(job: ExtractionJob, centers, device: str, batch_seconds: float):
    if job.backend == "fairseq":
        from omni_ds.units.fairseq_backend import FairseqUnitExtractor
        return FairseqUnitExtractor(job.hubert, centers, job.layer, device, job.dedup)
    from omni_ds.units.extract import FeatureExtractor, UnitExtractor
    from omni_ds.units.hubert import load_hubert
    return UnitExtractor(FeatureExtractor(load_hubert(job.hubert, job.layer), device, batch_seconds),
                         centers, job.dedup)


def extract_batch(backend, items, ids, paths) -> tuple[dict, list]:
    """Units for the good items; failures (id, index, path, reason) for the others."""
    done, failed, good = {}, [], []

    def fail(it, why):
        failed.append({"id": ids[it.index], "index": it.index, "path": paths[it.index], "reason": why})
    for it in items:
        why = it.error or backend.too_short(len(it.wave))
        fail(it, why) if why else good.append(it)
    try:
        for it, u in zip(good, backend.units([it.wave for it in good])):
            done[it.index] = u
    except Exception:
        for it in good:             # isolate the record that breaks the batch
            try:
                done[it.index] = backend.units([it.wave])[0]
            except Exception as err:
                fail(it, f"extraction failed: {type(err).__name__}: {err}")
    return done, failed


class PartWriter:
    """Collects a shard's results per part; writes a part the moment its last record is in."""

    def __init__(self, root: Path, manifest, todo: list[int], part_size: int):
        self.root, self.manifest, self.part_size = root, manifest, part_size
        n = len(manifest)
        self.part_of = {i: j for j in todo for i in P.part_range(j, n, part_size)}
        self.pending = {j: len(P.part_range(j, n, part_size)) for j in todo}
        self.results = {j: {"units": {}, "failed": [], "seconds": 0.0} for j in todo}
        self.audio_seconds, self.failed = 0.0, 0

    def add(self, items, done: dict, failed: list, sample_rate: int) -> None:
        for it in items:
            if it.index in done:
                r = self.results[self.part_of[it.index]]
                r["units"][it.index] = done[it.index]
                r["seconds"] += len(it.wave) / sample_rate
                self.audio_seconds += len(it.wave) / sample_rate
        for f in failed:
            self.results[self.part_of[f["index"]]]["failed"].append(f)
        self.failed += len(failed)
        for it in items:
            j = self.part_of[it.index]
            self.pending[j] -= 1
            if self.pending[j] == 0:
                self._write(j, self.results.pop(j))

    def _write(self, j: int, r: dict) -> None:
        rows = []
        for i in sorted(r["units"]):
            rec = self.manifest.raw(i)
            rec["units"] = r["units"][i]
            rows.append(rec)
        P.write_part(self.root, j, rows, sorted(r["failed"], key=lambda f: f["index"]), r["seconds"])


def run_job(job: ExtractionJob, log=print) -> int:
    """Extract this shard's missing parts, then merge if every part is done; the exit code."""
    prepared = _prepare(job)
    if isinstance(prepared, int):
        return prepared
    manifest, backend, batch_seconds = prepared
    shard, n_shards = job.resolved_shard()
    root, n = P.parts_dir(Path(job.out)), len(manifest)
    todo = [j for j in P.shard_parts(n, job.part_size, shard, n_shards) if not P.part_done(root, j)]
    writer = PartWriter(root, manifest, todo, job.part_size)
    t0 = time.perf_counter()
    if todo:
        _extract(job, manifest, backend, batch_seconds, writer, (shard, n_shards))
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


def _extract(job: ExtractionJob, manifest, backend, batch_seconds: float, writer: PartWriter, shard) -> None:
    from tqdm import tqdm
    from omni_ds.units.loader import AudioItems, audio_seconds, make_loader, plan_batches
    paths, n = manifest.column("response_path"), len(manifest)
    todo = sorted(writer.pending)
    seconds = {i: audio_seconds(paths[i]) if paths[i] else 0.0
               for j in todo for i in P.part_range(j, n, job.part_size)}
    batches = [b for j in todo for b in plan_batches(list(P.part_range(j, n, job.part_size)), seconds, batch_seconds)]
    loader = make_loader(AudioItems([(i, paths[i]) for i in seconds], backend.sample_rate), batches, job.workers)
    bar = tqdm(total=len(seconds), unit="file", disable=job.quiet or shard[0] != 0,
               desc=f"units shard {shard[0]}/{shard[1]}", dynamic_ncols=True)
    t0, checked = time.perf_counter(), False
    for items in loader:
        if not checked:
            _pick_precision(job, backend, items)
            checked = True
        done, failed = extract_batch(backend, items, manifest.ids, paths)
        writer.add(items, done, failed, backend.sample_rate)
        bar.update(len(items))
        hours = writer.audio_seconds / 3600
        bar.set_postfix_str(f"{hours / max(time.perf_counter() - t0, 1e-9):.4f} audio-h/s, "
                            f"{hours:.3f} h, {writer.failed} failed")
    bar.close()


def _pick_precision(job: ExtractionJob, backend, items) -> None:
    """bf16/fp16 only when they give the fp32 units on the first batch's utterances."""
    check = [it.wave for it in items if it.wave is not None and not backend.too_short(len(it.wave))][:8]
    note = backend.try_precision(job.dtype, check)
    if note:
        print(f"note: {note}", file=sys.stderr)


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
        log(f"FAILED: {s['failed']} records (not in the output; all listed in {out.name}.failed.jsonl):")
        for f in s["failures"][:20]:
            log(f"  id {f['id']} (index {f['index']}): {f['reason']}")
        if s["failed"] > 20:
            log(f"  ... {s['failed'] - 20} more")
