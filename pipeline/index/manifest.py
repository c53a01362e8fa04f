"""An append-only JSON-lines manifest whose every line carries its own checksum.

A line is committed once it is written and fsynced. A process killed mid-append leaves a
torn last line (no newline, bad JSON or a bad checksum): it is not an entry and is cut off
the next time a writer opens the manifest. A bad line anywhere else is corruption.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from pipeline.core.errors import UserError


class ManifestCorrupt(UserError):
    """A committed manifest line fails its checksum (not a torn tail)."""


def entry_sum(entry: dict) -> str:
    body = {k: v for k, v in entry.items() if k != "sum"}
    blob = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def encode_entry(entry: dict) -> bytes:
    sealed = dict(entry)
    sealed["sum"] = entry_sum(entry)
    return (json.dumps(sealed, sort_keys=True, separators=(",", ":")) + "\n").encode()


def _parse_line(line: bytes) -> dict | None:
    try:
        entry = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(entry, dict) or entry.get("sum") != entry_sum(entry):
        return None
    return entry


def read_manifest(path: Path) -> tuple[list[dict], int, int]:
    """(entries, bytes of committed lines, bytes of a torn tail). Raises ManifestCorrupt when
    a line other than the last one is bad."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return [], 0, 0
    entries: list[dict] = []
    pos = 0
    while pos < len(data):
        end = data.find(b"\n", pos)
        if end < 0:  # no newline: an append that never finished
            return entries, pos, len(data) - pos
        entry = _parse_line(data[pos:end])
        if entry is None:
            if end + 1 >= len(data):
                return entries, pos, len(data) - pos
            raise ManifestCorrupt(f"{path}: line {len(entries) + 1} fails its checksum "
                                  f"(manifest corrupt; the shard cannot be trusted)")
        entries.append(entry)
        pos = end + 1
    return entries, pos, 0


def cut_torn_tail(path: Path, good_bytes: int) -> None:
    """Drop an unfinished last line (writers only, under the store lock)."""
    with open(path, "r+b") as fh:
        fh.truncate(good_bytes)
        fh.flush()
        os.fsync(fh.fileno())


def append_entry(path: Path, entry: dict, durable: bool = True) -> None:
    """Append one committed line: write, fsync (the commit point)."""
    line = encode_entry(entry)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(line)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
