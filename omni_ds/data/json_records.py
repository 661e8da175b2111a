"""Records of a manifest file, one at a time: JSONL, or a JSON array read as a stream.

The released InstructS2S-200K metadata is one JSON array of about 1 GB. `json.load` would hold
every dialogue as Python objects at once (several GB); here the array is decoded element by
element with the C decoder (`raw_decode`) over a sliding text buffer, so memory stays at one
buffer plus one record.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

_CHUNK = 1 << 22          # characters read per refill
_MAX_RECORD = 1 << 26     # a record that does not decode within this many characters is broken
_WS = " \t\r\n"


class RecordSyntaxError(ValueError):
    """Not valid JSON; the message names the file and the line or element."""


def iter_json_records(path: Path) -> Iterator[tuple[str, object]]:
    """Yield (where, record): where is 'file:line N' (JSONL) or 'file[i]' (JSON array)."""
    with open(path, "r", encoding="utf-8-sig") as f:
        head = f.read(4096).lstrip()
    if head.startswith("["):
        yield from _iter_array(path)
    else:
        yield from _iter_lines(path)


def _iter_lines(path: Path):
    with open(path, "r", encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise RecordSyntaxError(f"{path}:line {lineno}: not valid JSON ({e})") from None
            yield f"{path}:line {lineno}", rec


class _Buffer:
    """A text window over the file: `text[pos:]` is what is not consumed yet."""

    def __init__(self, f):
        self.f, self.text, self.pos, self.eof = f, "", 0, False

    def fill(self) -> bool:
        """Read more; False at end of file."""
        chunk = self.f.read(_CHUNK)
        if not chunk:
            self.eof = True
            return False
        self.text = self.text[self.pos:] + chunk
        self.pos = 0
        return True

    def skip_ws(self) -> str:
        """The next non-space character ('' at end of file), not consumed."""
        while True:
            while self.pos < len(self.text) and self.text[self.pos] in _WS:
                self.pos += 1
            if self.pos < len(self.text) or not self.fill():
                return self.text[self.pos] if self.pos < len(self.text) else ""


def _iter_array(path: Path):
    decoder = json.JSONDecoder()
    with open(path, "r", encoding="utf-8-sig") as f:
        buf = _Buffer(f)
        buf.skip_ws()
        buf.pos += 1                                  # the opening '['
        index = 0
        while True:
            c = buf.skip_ws()
            if c == "]":
                return
            if c == "":
                raise RecordSyntaxError(f"{path}: not valid JSON (the array is not closed after element {index})")
            if index and c != ",":
                raise RecordSyntaxError(f"{path}[{index}]: not valid JSON (expected ',' or ']', got {c!r})")
            if index:
                buf.pos += 1
                buf.skip_ws()
            yield f"{path}[{index}]", _decode_one(decoder, buf, path, index)
            index += 1


def _decode_one(decoder: json.JSONDecoder, buf: _Buffer, path: Path, index: int):
    while True:
        try:
            value, end = decoder.raw_decode(buf.text, buf.pos)
        except json.JSONDecodeError as e:
            # The element may run past the buffer: read more and retry; at end of file (or past
            # any plausible record size, so a broken file is not read whole) it is broken.
            if len(buf.text) - buf.pos < _MAX_RECORD and not buf.eof and buf.fill():
                continue
            raise RecordSyntaxError(f"{path}[{index}]: not valid JSON ({e.msg})") from None
        if end == len(buf.text) and not buf.eof:      # a number may continue in the next chunk
            if buf.fill():
                continue
        buf.pos = end
        return value
