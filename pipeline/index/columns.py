"""Re-embedded columns: one model's vectors replaced over the whole store (`imageselector
reembed`), switched on for every shard at one commit point.

A re-embed writes, per shard and per committed batch line (slice), the new vectors and their
hashes under ``shard_NNNN/columns/<model>.<column id>/``::

    bSSSSSS.<vector>.npy          float32 (n, dim), row-aligned with the slice's ids part
    bSSSSSS.<vector>.hashes.npy   uint64 (n,): the vector hashes of that file (written last)

Nothing reads those files until one line of ``data/embeddings/columns.jsonl`` (an
append-only, checksummed manifest like a shard's) names them for every shard; from then on
the shard reads that model's vectors and hash column from the column's files for the slices
the line lists, and its fingerprint is the line's. A line is the only commit point, so a
half-written column is never used and search switches for all shards at once. The shards'
own parts stay as they were (the old column), never written.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.index import manifest as mf

COLUMNS_NAME = "columns.jsonl"
COLUMNS_DIR = "columns"


@dataclass(frozen=True)
class Column:
    """One committed column of one shard: ``vector`` read from ``folder`` for ``slices``."""

    vector: str
    column_id: str
    fingerprint: str
    folder: Path
    slices: frozenset = field(default_factory=frozenset)

    def vector_file(self, seq: int) -> Path:
        return vector_file(self.folder, seq, self.vector)

    def hash_file(self, seq: int) -> Path:
        return hash_file(self.folder, seq, self.vector)


def manifest_path(base: Path) -> Path:
    return Path(base) / COLUMNS_NAME


def column_folder(shard_path: Path, model: str, column_id: str) -> Path:
    return Path(shard_path) / COLUMNS_DIR / f"{model}.{column_id}"


def vector_file(folder: Path, seq: int, vector: str) -> Path:
    return Path(folder) / f"b{seq:06d}.{vector}.npy"


def hash_file(folder: Path, seq: int, vector: str) -> Path:
    return Path(folder) / f"b{seq:06d}.{vector}.hashes.npy"


def read_lines(base: Path) -> list[dict]:
    """The committed column lines (a torn last line is not one)."""
    entries, _good, _torn = mf.read_manifest(manifest_path(base))
    return [e for e in entries if e.get("kind") == "column"]


def for_shard(base: Path, number: int, lines: list[dict] | None = None) -> tuple[dict, str | None]:
    """({vector: Column} in force for shard ``number``, the fingerprint of the last line
    that covers it or None). A later line for a model replaces an earlier one."""
    lines = read_lines(base) if lines is None else lines
    out: dict[str, Column] = {}
    fingerprint = None
    for e in lines:
        sh = (e.get("shards") or {}).get(str(number))
        if sh is None:
            continue
        folder = Path(base) / sh["dir"]
        for vector in e["vectors"]:
            out[vector] = Column(vector, e["column_id"], e["fingerprint"], folder,
                                 frozenset(int(x) for x in sh["slices"]))
        fingerprint = e["fingerprint"]
    return out, fingerprint


def commit(base: Path, entry: dict, durable: bool = True) -> None:
    """Append one column line (the caller holds the store lock): a torn tail left by a
    killed commit is cut first."""
    path = manifest_path(base)
    _entries, good, torn = mf.read_manifest(path)
    if torn:
        mf.cut_torn_tail(path, good)
    mf.append_entry(path, dict(entry, kind="column"), durable)


def committed_ids(base: Path) -> set[str]:
    return {e["column_id"] for e in read_lines(base)}


def signature(base: Path):
    try:
        st = os.stat(manifest_path(base))
        return (st.st_size, st.st_mtime_ns, st.st_ino)
    except FileNotFoundError:
        return None


def in_force_ids(base: Path, lines: list[dict] | None = None) -> dict[str, str]:
    """{model: the column id its shards read}: a model's last line replaces its earlier ones."""
    lines = read_lines(base) if lines is None else lines
    return {e["model"]: e["column_id"] for e in lines}


def folders(shard_paths) -> list[Path]:
    """Every column folder of these shards, committed or not."""
    out = []
    for shard_path in shard_paths:
        parent = Path(shard_path) / COLUMNS_DIR
        if parent.is_dir():
            out += sorted(p for p in parent.iterdir() if p.is_dir())
    return out
