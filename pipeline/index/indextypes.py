"""Building the configured (non-flat) index of a full shard, row order preserved.

A type is a faiss index_factory string ("HNSW32", "IVF1024,SQ8", "IVF1024,PQ64"...), with
inner-product metric. Rows are added in shard order, so FAISS id N is still shard row N.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def build_index(kind: str, dim: int, parts: list[tuple[int, np.ndarray]], train_rows: int = 100_000):
    import faiss

    index = faiss.index_factory(dim, kind, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        total = sum(p.shape[0] for _, p in parts)
        take = min(total, max(train_rows, 1))
        rng = np.random.default_rng(0)
        pick = np.sort(rng.choice(total, size=take, replace=False))
        sample = gather(parts, pick, dim)
        index.train(sample)
    for _, part in parts:
        for lo in range(0, part.shape[0], 50_000):
            index.add(np.ascontiguousarray(part[lo:lo + 50_000], dtype="float32"))
    return index


def gather(parts: list[tuple[int, np.ndarray]], rows: np.ndarray, dim: int) -> np.ndarray:
    """Rows (sorted or not) of a shard from its memory-mapped parts."""
    out = np.empty((len(rows), dim), dtype="float32")
    starts = np.array([s for s, _ in parts], dtype=np.int64)
    which = np.searchsorted(starts, rows, side="right") - 1
    for w in np.unique(which):
        sel = np.nonzero(which == w)[0]
        start, part = parts[w]
        out[sel] = part[rows[sel] - start]
    return out


def write_index_atomic(index, path: Path, durable: bool = True) -> None:
    import faiss

    from pipeline.core.fsutil import fsync_dir

    tmp = path.with_name(f".{path.name}.tmp")
    faiss.write_index(index, str(tmp))
    if durable:
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    os.replace(tmp, path)
    if durable:
        fsync_dir(path.parent)
