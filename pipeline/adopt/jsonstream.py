"""Reading the original's big JSON files item by item.

The original's `tar_index.json` names 5.3 million members twice (per tar and in the reverse
map): loaded whole it would take gigabytes. These readers walk the file in chunks and parse
one item at a time with the standard decoder, so memory stays at one item (one tar's map).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

_WS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()
CHUNK = 1 << 22


class JSONShapeError(ValueError):
    """The file is not JSON, or not of the expected shape."""


class _Reader:
    def __init__(self, fh, chunk: int = CHUNK):
        self.fh = fh
        self.chunk = chunk
        self.buf = ""
        self.pos = 0
        self.eof = False

    def _fill(self) -> bool:
        if self.eof:
            return False
        data = self.fh.read(self.chunk)
        if not data:
            self.eof = True
            return False
        self.buf = self.buf[self.pos:] + data
        self.pos = 0
        return True

    def peek(self) -> str:
        while True:
            self.pos = _WS.match(self.buf, self.pos).end()
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self._fill():
                return ""

    def expect(self, ch: str) -> None:
        got = self.peek()
        if got != ch:
            raise JSONShapeError(f"expected {ch!r}, found {got or 'end of file'!r}")
        self.pos += 1

    def value(self) -> Any:
        self.peek()
        while True:
            try:
                obj, end = _DECODER.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError:
                if self._fill():
                    continue
                raise JSONShapeError(f"bad JSON value near character {self.pos}") from None
            # a number at the very end of the buffer may be cut short: read on and retry
            if end >= len(self.buf) and not self.eof and self._fill():
                continue
            self.pos = end
            return obj

    def skip(self) -> None:
        """Skip one value without holding it whole when it is an object or a list."""
        ch = self.peek()
        if ch == "{":
            for _ in self.object_items():
                pass
        elif ch == "[":
            for _ in self.array_items(skip=True):
                pass
        else:
            self.value()

    def object_items(self, lazy: bool = False) -> Iterator[tuple[str, Any]]:
        """(key, value) of the object here; with ``lazy`` the caller reads each value."""
        self.expect("{")
        if self.peek() == "}":
            self.pos += 1
            return
        while True:
            key = self.value()
            if not isinstance(key, str):
                raise JSONShapeError("object key is not a string")
            self.expect(":")
            if lazy:
                yield key, None
            else:
                yield key, self.value()
            ch = self.peek()
            self.pos += 1
            if ch == "}":
                return
            if ch != ",":
                raise JSONShapeError(f"expected ',' or '}}', found {ch or 'end of file'!r}")

    def array_items(self, skip: bool = False) -> Iterator[Any]:
        self.expect("[")
        if self.peek() == "]":
            self.pos += 1
            return
        while True:
            if skip:
                self.skip()
                yield None
            else:
                yield self.value()
            ch = self.peek()
            self.pos += 1
            if ch == "]":
                return
            if ch != ",":
                raise JSONShapeError(f"expected ',' or ']', found {ch or 'end of file'!r}")


def iter_array(path: Path) -> Iterator[Any]:
    """Items of a top-level JSON list, one at a time."""
    with open(path, encoding="utf-8") as fh:
        reader = _Reader(fh)
        yield from reader.array_items()
        if reader.peek():
            raise JSONShapeError("data after the end of the list")


def iter_member(path: Path, key: str) -> Iterator[tuple[str, Any]]:
    """(key, value) items of the object at top-level member ``key`` of a JSON object
    (e.g. every tar of ``{"tars": {...}, "reverse": {...}}``); other members are skipped
    item by item, and the rest of the file is not read. Yields nothing when the member is
    absent."""
    with open(path, encoding="utf-8") as fh:
        reader = _Reader(fh)
        for name, _ in reader.object_items(lazy=True):
            if name == key:
                if reader.peek() != "{":
                    raise JSONShapeError(f"member {key!r} is not an object")
                yield from reader.object_items()
                return
            reader.skip()
