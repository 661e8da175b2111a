"""Resumable output of extract_units.py: the manifest is cut into fixed parts of `part_size`
records; each finished part is written atomically (temporary file, then rename) as
`part-NNNNNN.jsonl` (output rows, manifest order) beside `part-NNNNNN.meta.json` (failures, one
per failed turn; audio seconds and unit counts of the rows). A part exists completely or not at all, so a killed job redoes at
most the parts it was working on, and no row is lost or written twice. Parts do not depend on
the number of shards: shard i of n takes parts j with j % n == i, and any shard layout resumes
any other. The merge concatenates the parts in order once all of them exist."""
from __future__ import annotations

import json
import math
import os
from collections import Counter
from pathlib import Path

PLAN_NAME = "plan.json"


def parts_dir(out: Path) -> Path:
    return out.with_name(out.name + ".parts")


def n_parts(n_records: int, part_size: int) -> int:
    return max(1, math.ceil(n_records / part_size))


def part_range(j: int, n_records: int, part_size: int) -> range:
    return range(j * part_size, min(n_records, (j + 1) * part_size))


def shard_parts(n_records: int, part_size: int, shard: int, n_shards: int) -> list[int]:
    return [j for j in range(n_parts(n_records, part_size)) if j % n_shards == shard]


def _paths(root: Path, j: int) -> tuple[Path, Path]:
    return root / f"part-{j:06d}.jsonl", root / f"part-{j:06d}.meta.json"


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def check_plan(root: Path, plan: dict) -> None:
    """Create the plan, or make sure an existing parts folder belongs to the same job."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / PLAN_NAME
    if not path.exists():
        _atomic_write(path, json.dumps(plan, indent=1, sort_keys=True))
        return
    old = json.loads(path.read_text())
    diff = sorted(k for k in set(old) | set(plan) if old.get(k) != plan.get(k))
    if diff:
        raise ValueError(f"{root} holds parts of a different job (differs in {diff}); "
                         "delete it or choose another --out")


def part_done(root: Path, j: int) -> bool:
    rows, meta = _paths(root, j)
    return rows.exists() and meta.exists()


def write_part(root: Path, j: int, rows: list[dict], failures: list[dict], seconds: float,
               units: list[list[int]]) -> None:
    """`rows`: the records written; `failures`: one per failed turn; `units`: every turn's units
    of `rows` (a dialogue's are on its turns, not on the row)."""
    counts = Counter(u for turn in units for u in turn)
    meta = {"part": j, "ok": len(rows), "failed": failures, "seconds": seconds,
            "unit_counts": {str(k): v for k, v in sorted(counts.items())}}
    rows_path, meta_path = _paths(root, j)
    _atomic_write(meta_path, json.dumps(meta))
    # The rows file is renamed last: its presence marks the part as complete.
    _atomic_write(rows_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_meta(root: Path, j: int) -> dict:
    return json.loads(_paths(root, j)[1].read_text())


def summarize(metas: list[dict]) -> dict:
    counts: Counter = Counter()
    for m in metas:
        counts.update({int(k): v for k, v in m["unit_counts"].items()})
    total = sum(counts.values())
    entropy = -sum(c / total * math.log2(c / total) for c in counts.values()) if total else 0.0
    failures = [f for m in metas for f in m["failed"]]
    # Records, not turns: a dialogue with two failed turns is one record left out.
    failed = len({f["index"] for f in failures})
    return {"files": sum(m["ok"] for m in metas) + failed,
            "ok": sum(m["ok"] for m in metas), "failed": failed, "failed_turns": len(failures),
            "audio_hours": sum(m["seconds"] for m in metas) / 3600, "units": total,
            "distinct_units": len(counts), "unit_entropy_bits": entropy, "failures": failures}


def merge(out: Path, n_records: int, part_size: int) -> dict | None:
    """Concatenate all parts into `out` (+ `out.failed.jsonl`, `out.summary.json`) atomically;
    None while some part is missing."""
    root = parts_dir(out)
    count = n_parts(n_records, part_size)
    if not all(part_done(root, j) for j in range(count)):
        return None
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as dst:
        for j in range(count):
            dst.write(_paths(root, j)[0].read_bytes())
    os.replace(tmp, out)
    summary = summarize([read_meta(root, j) for j in range(count)])
    failed = out.with_name(out.name + ".failed.jsonl")
    _atomic_write(failed, "".join(json.dumps(f, ensure_ascii=False) + "\n"
                                  for f in summary["failures"]))
    _atomic_write(out.with_name(out.name + ".summary.json"), json.dumps(summary, indent=1))
    return summary
