"""Per-batch vector parts: plain .npy files (float32 vectors, int64 ids, uint64 hashes).

A part is written in place and fsynced; it counts only once a manifest line names it, so a
part without a line is an orphan that the next writer removes.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import numpy as np

PART_RE = re.compile(r"^b(\d{6})\.([A-Za-z0-9_]+)\.npy$")


def part_prefix(seq: int) -> str:
    return f"b{seq:06d}"


def part_path(parts_dir: Path, seq: int, name: str) -> Path:
    return Path(parts_dir) / f"{part_prefix(seq)}.{name}.npy"


def write_array(path: Path, array: np.ndarray, durable: bool = True) -> int:
    """Write ``array`` as .npy and fsync it; returns the file size."""
    with open(path, "wb") as fh:
        np.lib.format.write_array(fh, np.ascontiguousarray(array), allow_pickle=False)
        fh.flush()
        if durable:
            os.fsync(fh.fileno())
        return fh.tell()


def read_array(path: Path, mmap: bool = True) -> np.ndarray:
    return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)


def file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def vector_hashes(vectors: np.ndarray) -> np.ndarray:
    """First 12 hex digits of the md5 of each float32 row (the original's short hash), as
    48-bit integers."""
    rows = np.ascontiguousarray(vectors, dtype="<f4")
    raw = rows.view(np.uint8).reshape(rows.shape[0], -1)
    out = np.empty(rows.shape[0], dtype=np.uint64)
    for i in range(rows.shape[0]):
        out[i] = int.from_bytes(hashlib.md5(raw[i]).digest()[:6], "big")
    return out


def hash_hex(value) -> str:
    return f"{int(value):012x}"


def list_part_files(parts_dir: Path) -> list[tuple[int, str, Path]]:
    """(seq, name, path) of every part file, plus stray temp files as seq -1."""
    out = []
    try:
        names = os.listdir(parts_dir)
    except FileNotFoundError:
        return out
    for name in names:
        m = PART_RE.match(name)
        out.append((int(m.group(1)), m.group(2), Path(parts_dir) / name) if m
                   else (-1, name, Path(parts_dir) / name))
    return out
