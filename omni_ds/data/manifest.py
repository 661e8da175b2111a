"""Manifest reading: both record forms of DESIGN.md, normalised, stored as a cached Arrow table.

The first load parses the JSON / JSONL file, normalises every record and writes an Arrow dataset
(HF `datasets`) into `.omni_ds_cache/` beside the manifest; later loads memory-map it, so a 200 K
record manifest opens in well under a second and costs little RAM per data-loader worker. The
cache key is the manifest's content hash plus its folder (relative paths resolve against it).

Malformed records (not JSON, not an object, a required key missing or of the wrong type) raise
`ManifestError` naming the file, the line (JSONL) or index (JSON list), and the key. Content
problems (missing files, empty text, ...) are not errors here: the validation pass reports them.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from omni_ds.constants import SPEECH_PLACEHOLDER

CACHE_DIRNAME = ".omni_ds_cache"
_FORMAT_VERSION = "1"   # bump when the normalised columns change, to invalidate old caches
FLAT_KEYS = ("speech_instruction_path", "text_instruction", "text_response", "speech_response_path")
COLUMNS = ("id", "speech_path", "response_path", "instruction_text", "response_text", "units",
           "prompt_instruction", "raw")


class ManifestError(ValueError):
    """A record that cannot be read at all; the message names file, line/index and key."""


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


def _iter_records(path: Path):
    """Yield (where, record) with `where` = 'file:line N' or 'file[index]' for messages."""
    with open(path, "r", encoding="utf-8-sig") as f:
        head = f.read(4096).lstrip()
    if head.startswith("["):
        with open(path, "r", encoding="utf-8-sig") as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise ManifestError(f"{path}: not valid JSON ({e})") from None
        for i, rec in enumerate(data):
            yield f"{path}[{i}]", rec
        return
    with open(path, "r", encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ManifestError(f"{path}:line {lineno}: not valid JSON ({e})") from None
            yield f"{path}:line {lineno}", rec


def _resolve(folder: Path, value, where: str, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise ManifestError(f"{where}: key {key!r} must be a non-empty path string, got {value!r}")
    p = Path(value)
    return str(p if p.is_absolute() else (folder / p))


def _text(rec: dict, key: str, where: str, required: bool) -> str:
    if key not in rec:
        if required:
            raise ManifestError(f"{where}: missing key {key!r}")
        return ""
    value = rec[key]
    if not isinstance(value, str):
        raise ManifestError(f"{where}: key {key!r} must be a string, got {type(value).__name__}")
    return value


def _units(rec: dict, where: str):
    if rec.get("units") is None:
        return None
    units = rec["units"]
    # Range is checked by validation (a bad record, not a broken file); type is checked here.
    if not isinstance(units, list) or not all(isinstance(u, int) and not isinstance(u, bool) for u in units):
        raise ManifestError(f"{where}: key 'units' must be a list of integers")
    return units


def normalise(rec, where: str, index: int, folder: Path, name: str) -> dict:
    """One raw record (either form) -> the normalised dict of the manifest contract."""
    if not isinstance(rec, dict):
        raise ManifestError(f"{where}: record must be a JSON object, got {type(rec).__name__}")
    rid = rec.get("id")
    rid = str(rid) if rid is not None else f"{name}:{index}"
    if "conversations" in rec or "speech" in rec:
        # LLaVA-style form of the LLaMA-Omni repository.
        if "speech" not in rec:
            raise ManifestError(f"{where} (id {rid}): missing key 'speech'")
        convs = rec.get("conversations")
        if not isinstance(convs, list):
            raise ManifestError(f"{where} (id {rid}): key 'conversations' must be a list")
        human = [c for c in convs if isinstance(c, dict) and c.get("from") == "human"]
        gpt = [c for c in convs if isinstance(c, dict) and c.get("from") == "gpt"]
        if len(human) != 1 or len(gpt) != 1:
            raise ManifestError(f"{where} (id {rid}): key 'conversations' must hold one 'human' and "
                                f"one 'gpt' turn (single-turn data), got {len(human)} and {len(gpt)}")
        for turn in (human[0], gpt[0]):
            if not isinstance(turn.get("value"), str):
                raise ManifestError(f"{where} (id {rid}): key 'conversations[].value' must be a string")
        user = human[0]["value"]
        # The human turn is "<speech>\n{instruction}": keep the instruction for the prompt.
        prompt_instruction = user.replace(SPEECH_PLACEHOLDER, "", 1).strip()
        response_path = rec.get("speech_response_path") or rec.get("tgt_speech")
        return {
            "id": rid,
            "speech_path": _resolve(folder, rec["speech"], where, "speech"),
            "response_path": _resolve(folder, response_path, where, "speech_response_path")
            if response_path else None,
            "instruction_text": _text(rec, "text_instruction", where, required=False),
            "response_text": gpt[0]["value"],
            "units": _units(rec, where),
            "prompt_instruction": prompt_instruction or None,
        }
    for key in ("speech_instruction_path", "text_response"):
        if key not in rec:
            raise ManifestError(f"{where} (id {rid}): missing key {key!r} (flat form needs "
                                f"{FLAT_KEYS[:3]}; LLaVA form needs 'speech' and 'conversations')")
    response_path = rec.get("speech_response_path")
    return {
        "id": rid,
        "speech_path": _resolve(folder, rec["speech_instruction_path"], where, "speech_instruction_path"),
        "response_path": _resolve(folder, response_path, where, "speech_response_path")
        if response_path else None,
        "instruction_text": _text(rec, "text_instruction", where, required=False),
        "response_text": _text(rec, "text_response", where, required=True),
        "units": _units(rec, where),
        "prompt_instruction": None,
    }


def _build_table(path: Path, out_dir: Path):
    import datasets

    folder, name = path.parent.resolve(), path.name
    cols = {c: [] for c in COLUMNS}
    seen = {}
    for index, (where, rec) in enumerate(_iter_records(path)):
        row = normalise(rec, where, index, folder, name)
        if row["id"] in seen:
            raise ManifestError(f"{where}: duplicate id {row['id']!r} (first at index {seen[row['id']]})")
        seen[row["id"]] = index
        row["raw"] = json.dumps(rec, ensure_ascii=False)
        for c in COLUMNS:
            cols[c].append(row[c])
    features = datasets.Features({
        "id": datasets.Value("string"), "speech_path": datasets.Value("string"),
        "response_path": datasets.Value("string"), "instruction_text": datasets.Value("string"),
        "response_text": datasets.Value("string"), "units": datasets.Sequence(datasets.Value("int64")),
        "prompt_instruction": datasets.Value("string"), "raw": datasets.Value("string"),
    })
    datasets.disable_progress_bars()
    table = datasets.Dataset.from_dict(cols, features=features)
    tmp = out_dir.with_name(out_dir.name + f".tmp{os.getpid()}")
    table.save_to_disk(str(tmp))
    try:
        os.replace(tmp, out_dir)     # atomic: a concurrent reader never sees a half-written cache
    except OSError:
        if not out_dir.is_dir():     # another process won the race: keep its copy
            raise
        shutil.rmtree(tmp, ignore_errors=True)


class Manifest:
    """Sequence of normalised records (dicts with the contract's keys), Arrow-backed."""

    def __init__(self, path: Path, table, fingerprint: str):
        self.path = path
        self.fingerprint = fingerprint        # content hash + folder; keys the validation index
        self._table = table

    def __len__(self) -> int:
        return self._table.num_rows

    def __getitem__(self, i: int) -> dict:
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"record {i} out of range for {self.path} ({len(self)} records)")
        row = self._table[int(i)]
        row.pop("raw")
        row["index"] = int(i)
        return row

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def raw(self, i: int) -> dict:
        """The record exactly as it was read (tools that add fields write this back)."""
        return json.loads(self._table[int(i)]["raw"])

    def column(self, name: str) -> list:
        """A whole column (e.g. 'id') without building per-row dicts."""
        return self._table.data.column(name).to_pylist()

    def arrow_column(self, name: str):
        """A column as a (memory-mapped) pyarrow ChunkedArray, for vectorised checks."""
        return self._table.data.column(name)

    @property
    def ids(self) -> list[str]:
        return self.column("id")


def load_manifest(path) -> Manifest:
    """Read a flat or LLaVA-style manifest (JSON list or JSONL) through the Arrow cache."""
    import datasets

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist")
    key = hashlib.sha256(f"{_FORMAT_VERSION}|{file_digest(path)}|{path.parent.resolve()}".encode())
    fingerprint = key.hexdigest()[:20]
    out_dir = cache_dir_for(path) / f"{path.name}.{fingerprint}.arrow"
    if not out_dir.is_dir():
        _build_table(path, out_dir)
    return Manifest(path, datasets.load_from_disk(str(out_dir)), fingerprint)
