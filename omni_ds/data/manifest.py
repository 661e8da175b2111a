"""Manifest reading: every record form (omni_ds.data.record_forms), normalised to dialogues and
stored as a cached, memory-mapped Arrow file.

The first load streams the JSON / JSONL file record by record (a 1 GB JSON array is never held
as Python objects), normalises each record and writes Arrow record batches into
`.omni_ds_cache/` beside the manifest; later loads memory-map that file, so a 200 K-dialogue
manifest opens in well under a second and costs little RAM per data-loader worker. The cache key
is the manifest's content hash plus the folder relative paths resolve against (the manifest's
own, or `audio_root`).

`manifest[i]` is a record's first turn in the single-turn contract of docs/ARCHITECTURE.md (what
single-turn tools read); `manifest.turns(i)` is every turn of the dialogue. Malformed records raise
`ManifestError` naming the file, the line (JSONL) or index (JSON list), and the key. Content
problems (missing files, empty text, a dialogue that does not alternate, ...) are not errors here:
the validation pass reports them.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional

from omni_ds.data.json_records import RecordSyntaxError, iter_json_records
from omni_ds.data.record_forms import FLAT_KEYS, TURN_KEYS, ManifestError, normalise

CACHE_DIRNAME = ".omni_ds_cache"
_FORMAT_VERSION = "2"   # bump when the normalised columns change, to invalidate old caches
_BATCH = 4096           # records per Arrow record batch while the cache is written
SCALAR_COLUMNS = ("id", "speech_path", "response_path", "instruction_text", "response_text", "units",
                  "prompt_instruction")
__all__ = ["FLAT_KEYS", "Manifest", "ManifestError", "load_manifest", "file_digest", "cache_dir_for"]


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def cache_dir_for(path: Path) -> Path:
    """`.omni_ds_cache` beside the manifest, or under ~/.cache when that folder is read-only."""
    beside = path.parent / CACHE_DIRNAME
    try:
        beside.mkdir(exist_ok=True)
        if os.access(beside, os.W_OK):
            return beside
    except OSError:
        pass
    home = Path(os.environ.get("OMNI_DS_CACHE", Path.home() / ".cache" / "omni_ds"))
    home.mkdir(parents=True, exist_ok=True)
    return home


def _schema():
    import pyarrow as pa
    units = pa.list_(pa.int64())
    turn = pa.struct([(k, units if k in ("units", "dataset_units") else pa.string()) for k in TURN_KEYS])
    return pa.schema([(k, units if k == "units" else pa.string()) for k in SCALAR_COLUMNS]
                     + [("turns", pa.list_(turn)), ("problem", pa.string()), ("raw", pa.string())])


def _row(rec, where: str, index: int, root: Path, name: str) -> dict:
    row = normalise(rec, where, index, root, name)
    first = row["turns"][0] if row["turns"] else {k: None for k in TURN_KEYS}
    row.update({k: first[k] for k in SCALAR_COLUMNS if k != "id"})
    row["response_text"] = row["response_text"] or ""
    row["instruction_text"] = row["instruction_text"] or ""
    row["speech_path"] = row["speech_path"] or ""
    row["raw"] = json.dumps(rec, ensure_ascii=False)
    return row


def _write_table(path: Path, root: Path, out: Path) -> None:
    """Stream the records into an Arrow IPC file, one record batch of _BATCH rows at a time."""
    import pyarrow as pa
    schema, name, seen, rows = _schema(), path.name, {}, []
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    try:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
            for index, (where, rec) in enumerate(iter_json_records(path)):
                row = _row(rec, where, index, root, name)
                if row["id"] in seen:
                    raise ManifestError(f"{where}: duplicate id {row['id']!r} (first at index {seen[row['id']]})")
                seen[row["id"]] = index
                rows.append(row)
                if len(rows) == _BATCH:
                    writer.write_batch(pa.RecordBatch.from_pylist(rows, schema))
                    rows = []
            if rows:
                writer.write_batch(pa.RecordBatch.from_pylist(rows, schema))
            if not seen:
                raise ManifestError(f"{path}: no records (the file is empty)")
        os.replace(tmp, out)     # atomic: a concurrent reader never sees a half-written cache
    except RecordSyntaxError as e:
        raise ManifestError(str(e)) from None
    except UnicodeDecodeError as e:
        raise ManifestError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
    finally:
        tmp.unlink(missing_ok=True)


class Manifest:
    """Sequence of normalised records, Arrow-backed (memory-mapped)."""

    def __init__(self, path: Path, table, fingerprint: str, digest: Optional[str] = None):
        self.path = path
        self.fingerprint = fingerprint        # content hash + folder; keys the validation index
        self.digest = digest                  # sha256 of the file's bytes (a resume checks it)
        self._table = table

    def __len__(self) -> int:
        return self._table.num_rows

    def _check(self, i: int) -> int:
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"record {i} out of range for {self.path} ({len(self)} records)")
        return int(i)

    def __getitem__(self, i: int) -> dict:
        """The record's first turn, with its id and index (the single-turn contract)."""
        i = self._check(i)
        row = self._table.select(list(SCALAR_COLUMNS)).slice(i, 1).to_pylist()[0]
        row["index"] = i
        return row

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def turns(self, i: int) -> list[dict]:
        """Every turn of record i (TURN_KEYS each), in order; [] when its `problem` says why."""
        return self._table.column("turns")[self._check(i)].as_py()

    def raw(self, i: int) -> dict:
        """The record exactly as it was read (tools that add fields write this back)."""
        return json.loads(self._table.column("raw")[self._check(i)].as_py())

    def column(self, name: str) -> list:
        """A whole column (e.g. 'id') without building per-row dicts."""
        return self._table.column(name).to_pylist()

    def arrow_column(self, name: str):
        """A column as a (memory-mapped) pyarrow ChunkedArray, for vectorised checks."""
        return self._table.column(name)

    @property
    def ids(self) -> list[str]:
        return self.column("id")


def load_manifest(path, audio_root: Optional[str] = None) -> Manifest:
    """Read a manifest (any record form, JSON list or JSONL) through the Arrow cache. Relative
    audio paths resolve against `audio_root`, or the manifest's folder when it is None."""
    import pyarrow as pa

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist")
    root = Path(audio_root).resolve() if audio_root else path.parent.resolve()
    digest = file_digest(path)
    key = hashlib.sha256(f"{_FORMAT_VERSION}|{digest}|{root}".encode())
    fingerprint = key.hexdigest()[:20]
    out = cache_dir_for(path) / f"{path.name}.{fingerprint}.v{_FORMAT_VERSION}.arrow"
    if not out.is_file():
        _write_table(path, root, out)
    table = pa.ipc.open_file(pa.memory_map(str(out))).read_all()
    return Manifest(path, table, fingerprint, digest)
