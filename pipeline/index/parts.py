"""Per-batch vector parts: plain .npy files (float32 vectors, int64 ids, uint64 hashes), or,
for a shard adopted from the original system, its IndexFlatIP files themselves
(``bSSSSSS.<model>.flat.faiss``, hard links of the original's files, never written).

A part is written once and fsynced; it counts only once a manifest line names it, so a
part without a line is an orphan that the next writer removes. A part is never opened for
writing after that (a linked one shares its inode with the original's file).
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import numpy as np

from pipeline.index import flatfile

NPY = "npy"
FLAT = "flat.faiss"
PART_RE = re.compile(r"^b(\d{6})\.([A-Za-z0-9_]+)\.(npy|flat\.faiss)$")


def part_prefix(seq: int) -> str:
    return f"b{seq:06d}"


def part_name(seq: int, name: str, suffix: str = NPY) -> str:
    return f"{part_prefix(seq)}.{name}.{suffix}"


def part_path(parts_dir: Path, seq: int, name: str) -> Path:
    return Path(parts_dir) / part_name(seq, name)


def is_flat_part(path: Path) -> bool:
    return Path(path).name.endswith("." + FLAT)


def check_part_name(file_name: str, seq: int, name: str) -> bool:
    """Whether a manifest line's file name is a part of that line and that name (no path
    elsewhere, no other line's part)."""
    m = PART_RE.match(file_name)
    return bool(m) and int(m.group(1)) == seq and m.group(2) == name


def write_array(path: Path, array: np.ndarray, durable: bool = True) -> int:
    """Write ``array`` as .npy and fsync it; returns the file size. Always a new inode: a
    leftover file of that name (which could be a hard link) is unlinked, never truncated."""
    Path(path).unlink(missing_ok=True)
    with open(path, "xb") as fh:
        np.lib.format.write_array(fh, np.ascontiguousarray(array), allow_pickle=False)
        fh.flush()
        if durable:
            os.fsync(fh.fileno())
        return fh.tell()


def read_array(path: Path, mmap: bool = True) -> np.ndarray:
    """A part's rows, memory-mapped read-only (or read whole). A ``.flat.faiss`` part is
    accepted only when its header is exactly an IndexFlatIP's (flatfile.read_exact_header),
    so the rows are known to start at flatfile.HEADER_SIZE."""
    if is_flat_part(path):
        try:
            dim, ntotal = flatfile.read_exact_header(path)
        except flatfile.NotFlat as exc:
            raise ValueError(f"part {Path(path).name}: {exc}") from None
        rows = flatfile.vectors(path, dim, ntotal)
        return rows if mmap else np.array(rows)
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
