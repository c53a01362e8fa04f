"""A FAISS ``IndexFlatIP`` file that grows by appending rows, without importing faiss.

faiss writes a flat inner-product index as: fourcc ``IxFI``, d (int32), ntotal (int64), two
dummy int64 (1<<20), is_trained (uint8), metric_type (int32), the number of floats
(uint64), then the float32 rows. Rows therefore sit at the end: an append writes the new
rows after the old ones and then patches the two counts in the header, so a 500,000-row
shard never has its 1.5 GB rewritten. The derived-state record (derived.json) says how many
rows and bytes the file holds after the last finished append; anything beyond is cut off.
tests/test_index_store.py (test_flat_layout_matches_faiss) checks this layout against
``faiss.serialize_index``; ``read_exact_header`` checks it on every file read as a part.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

FOURCC = b"IxFI"
METRIC_INNER_PRODUCT = 0
HEADER_SIZE = 45
_NTOTAL_AT = 8
_COUNT_AT = 37


class NotFlat(ValueError):
    """The file is not a plain IndexFlatIP (e.g. HNSW or IVF)."""


class SharedFile(RuntimeError):
    """An in-place write was asked of a file that has other hard links (an adopted shard's
    file shares its inode with the original's): writing would change the other name too."""


def header_bytes(dim: int, ntotal: int) -> bytes:
    return (FOURCC + struct.pack("<i", dim) + struct.pack("<q", ntotal)
            + struct.pack("<qq", 1 << 20, 1 << 20) + struct.pack("<B", 1)
            + struct.pack("<i", METRIC_INNER_PRODUCT) + struct.pack("<Q", ntotal * dim))


def read_header(path: Path) -> tuple[int, int]:
    """(dim, ntotal) of a flat IP file; NotFlat for another index type."""
    with open(path, "rb") as fh:
        head = fh.read(HEADER_SIZE)
    if len(head) < HEADER_SIZE or head[:4] != FOURCC:
        raise NotFlat(f"{path}: not an IndexFlatIP file (fourcc {head[:4]!r})")
    dim = struct.unpack_from("<i", head, 4)[0]
    ntotal = struct.unpack_from("<q", head, _NTOTAL_AT)[0]
    count = struct.unpack_from("<Q", head, _COUNT_AT)[0]
    if count != ntotal * dim:
        raise NotFlat(f"{path}: header counts disagree ({ntotal} rows x {dim} != {count} floats)")
    return dim, ntotal


def read_exact_header(path: Path) -> tuple[int, int]:
    """(dim, ntotal) of a file that is exactly an IndexFlatIP as faiss serializes it: every
    header byte as ``header_bytes`` writes it (fourcc, counts, the two dummies, is_trained,
    inner-product metric, float count) and the size header + rows, nothing after. Only then
    do the rows sit at HEADER_SIZE; NotFlat (naming what differs) otherwise."""
    dim, ntotal = read_header(path)
    with open(path, "rb") as fh:
        head = fh.read(HEADER_SIZE)
        size = os.fstat(fh.fileno()).st_size
    want = header_bytes(dim, ntotal)
    if head != want:
        at = next(i for i in range(HEADER_SIZE) if head[i] != want[i])
        raise NotFlat(f"{path}: header byte {at} is {head[at]}, an IndexFlatIP (inner product) "
                      f"header has {want[at]} there")
    if size != file_size(dim, ntotal):
        raise NotFlat(f"{path}: {size:,} bytes, its header says {ntotal:,} rows of dim {dim} "
                      f"({file_size(dim, ntotal):,} bytes)")
    return dim, ntotal


def file_size(dim: int, ntotal: int) -> int:
    return HEADER_SIZE + ntotal * dim * 4


def is_shared(path: Path) -> bool:
    """Whether ``path`` has other hard links (then it must never be written in place)."""
    try:
        return os.stat(path).st_nlink > 1
    except FileNotFoundError:
        return False


def _refuse_shared(path: Path) -> None:
    if is_shared(path):
        raise SharedFile(f"{path} has other hard links (shared with the original system's "
                         f"files); it is never written in place")


def create(path: Path, dim: int, durable: bool = True) -> None:
    Path(path).unlink(missing_ok=True)  # a new inode, never a truncated shared one
    with open(path, "xb") as fh:
        fh.write(header_bytes(dim, 0))
        fh.flush()
        if durable:
            os.fsync(fh.fileno())


def truncate_to(path: Path, dim: int, ntotal: int, durable: bool = True) -> None:
    """Bring a file back to exactly ``ntotal`` rows (after an append that did not finish)."""
    _refuse_shared(path)
    with open(path, "r+b") as fh:
        fh.truncate(file_size(dim, ntotal))
        fh.seek(0)
        fh.write(header_bytes(dim, ntotal))
        fh.flush()
        if durable:
            os.fsync(fh.fileno())


def append_rows(path: Path, dim: int, old_rows: int, rows: np.ndarray, durable: bool = True) -> int:
    """Append float32 rows after ``old_rows`` rows; returns the new row count. The data goes
    first and the header last, so a reader holding the old header sees the old index."""
    rows = np.ascontiguousarray(rows, dtype="<f4")
    if rows.ndim != 2 or rows.shape[1] != dim:
        raise ValueError(f"{path}: rows of shape {rows.shape} do not fit dim {dim}")
    new_rows = old_rows + rows.shape[0]
    _refuse_shared(path)
    with open(path, "r+b") as fh:
        fh.seek(file_size(dim, old_rows))
        fh.write(memoryview(rows).cast("B"))
        fh.truncate()
        if durable:
            fh.flush()
            os.fsync(fh.fileno())
        fh.seek(0)
        fh.write(header_bytes(dim, new_rows))
        fh.flush()
        if durable:
            os.fsync(fh.fileno())
    return new_rows


def vectors(path: Path, dim: int, ntotal: int) -> np.ndarray:
    """The rows of the file as a read-only memory map (no copy)."""
    if ntotal == 0:
        return np.zeros((0, dim), dtype="<f4")
    return np.memmap(path, dtype="<f4", mode="r", offset=HEADER_SIZE, shape=(ntotal, dim))
