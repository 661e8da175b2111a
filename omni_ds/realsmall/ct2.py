"""CTranslate2 `model.bin`: a reader (and a writer, for tests) of its binary layout.

Layout (little-endian), binary versions 3..6:

    u32 binary_version
    str spec_name                 e.g. "WhisperSpec"
    u32 spec_revision
    u32 n_variables
    n_variables x { str name; u8 rank; u32 dims[rank]; u8 dtype; u32 n_bytes; bytes data }
    u32 n_aliases                 (version >= 3)
    n_aliases x { str alias; str target }

`str` is a u16 length that counts a trailing NUL, then that many bytes. Data types are numbered
as CTranslate2's DataType enum: 0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16.
An alias names a variable stored once under another name (CTranslate2 de-duplicates equal
tensors when it saves). Scalars (rank 0) are config values such as `encoder/num_heads`.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DTYPES = {0: np.dtype("<f4"), 1: np.dtype("i1"), 2: np.dtype("<i2"), 3: np.dtype("<i4"), 4: np.dtype("<f2")}
BFLOAT16 = 5
SUPPORTED_VERSIONS = (3, 4, 5, 6)


class Ct2FormatError(ValueError):
    """The file is not a CTranslate2 model.bin this reader understands (message names the file)."""


@dataclass
class Ct2Model:
    binary_version: int
    spec_name: str
    spec_revision: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> np.ndarray:
        """A variable by name, following aliases."""
        seen = set()
        while name in self.aliases and name not in self.variables:
            if name in seen:
                raise KeyError(f"alias cycle at {name!r}")
            seen.add(name)
            name = self.aliases[name]
        return self.variables[name]

    def __contains__(self, name: str) -> bool:
        return name in self.variables or name in self.aliases

    def names(self) -> list[str]:
        return sorted(set(self.variables) | set(self.aliases))


class _Cursor:
    def __init__(self, buf: memoryview, path: str):
        self.buf, self.off, self.path = buf, 0, path

    def take(self, n: int) -> memoryview:
        if self.off + n > len(self.buf):
            raise Ct2FormatError(f"{self.path}: truncated at byte {self.off} (wanted {n} more bytes, "
                                 f"file has {len(self.buf)})")
        out = self.buf[self.off:self.off + n]
        self.off += n
        return out

    def unpack(self, fmt: str):
        size = struct.calcsize(fmt)
        return struct.unpack(fmt, self.take(size))[0]

    def string(self) -> str:
        n = self.unpack("<H")
        raw = bytes(self.take(n))
        return raw[:-1].decode("utf-8") if raw.endswith(b"\0") else raw.decode("utf-8")

    def at_end(self) -> bool:
        return self.off >= len(self.buf)


def _decode(raw: memoryview, dtype_id: int, dims: list[int], name: str, path: str) -> np.ndarray:
    count = int(np.prod(dims)) if dims else 1
    if dtype_id == BFLOAT16:
        if len(raw) != 2 * count:
            raise Ct2FormatError(f"{path}: variable {name!r} holds {len(raw)} bytes, expected {2 * count}")
        bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        return bits.view(np.float32).reshape(dims)
    if dtype_id not in DTYPES:
        raise Ct2FormatError(f"{path}: variable {name!r} has unknown data type id {dtype_id}")
    dt = DTYPES[dtype_id]
    if len(raw) != dt.itemsize * count:
        raise Ct2FormatError(f"{path}: variable {name!r} holds {len(raw)} bytes, expected "
                             f"{dt.itemsize * count} for shape {dims} {dt}")
    return np.frombuffer(raw, dtype=dt).reshape(dims).copy()


def read_ct2_model(path: str | Path) -> Ct2Model:
    path = str(path)
    data = Path(path).read_bytes()
    cur = _Cursor(memoryview(data), path)
    version = cur.unpack("<I")
    if version not in SUPPORTED_VERSIONS:
        raise Ct2FormatError(f"{path}: binary version {version}; this reader supports {SUPPORTED_VERSIONS}")
    spec = cur.string()
    revision = cur.unpack("<I")
    n_vars = cur.unpack("<I")
    variables: dict[str, np.ndarray] = {}
    for _ in range(n_vars):
        name = cur.string()
        rank = cur.unpack("<B")
        dims = [cur.unpack("<I") for _ in range(rank)]
        dtype_id = cur.unpack("<B")
        n_bytes = cur.unpack("<I")
        variables[name] = _decode(cur.take(n_bytes), dtype_id, dims, name, path)
    aliases: dict[str, str] = {}
    if not cur.at_end():
        for _ in range(cur.unpack("<I")):
            alias = cur.string()
            aliases[alias] = cur.string()
    if not cur.at_end():
        raise Ct2FormatError(f"{path}: {len(data) - cur.off} unexpected trailing bytes")
    for alias, target in aliases.items():
        if target not in variables and target not in aliases:
            raise Ct2FormatError(f"{path}: alias {alias!r} points at missing variable {target!r}")
    return Ct2Model(version, spec, revision, variables, aliases)


def _dtype_id(arr: np.ndarray) -> int:
    for k, dt in DTYPES.items():
        if arr.dtype == dt or arr.dtype == dt.newbyteorder("="):
            return k
    raise ValueError(f"dtype {arr.dtype} cannot be written to a CTranslate2 model.bin")


def write_ct2_model(path: str | Path, spec_name: str, variables: dict[str, np.ndarray],
                    aliases: dict[str, str] | None = None, spec_revision: int = 1,
                    binary_version: int = 6) -> None:
    """Write the layout above (float32/float16/int variables; names sorted as CTranslate2 does)."""
    def s(text: str) -> bytes:
        raw = text.encode("utf-8") + b"\0"
        return struct.pack("<H", len(raw)) + raw

    parts = [struct.pack("<I", binary_version), s(spec_name), struct.pack("<I", spec_revision),
             struct.pack("<I", len(variables))]
    for name in sorted(variables):
        arr = np.asarray(variables[name])        # keeps rank 0 (ascontiguousarray would not)
        dt = _dtype_id(arr)
        le = arr.astype(DTYPES[dt])
        parts += [s(name), struct.pack("<B", arr.ndim), b"".join(struct.pack("<I", d) for d in arr.shape),
                  struct.pack("<B", dt), struct.pack("<I", le.nbytes), le.tobytes()]
    aliases = aliases or {}
    parts.append(struct.pack("<I", len(aliases)))
    for alias in sorted(aliases):
        parts += [s(alias), s(aliases[alias])]
    Path(path).write_bytes(b"".join(parts))
