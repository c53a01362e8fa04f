"""The original's index shards: check each one row by row, then take it into the new index
store.

An original ``data/embeddings/shard_NNNN/`` holds seven ``<model>.faiss`` files
(IndexFlatIP) and ``image_index.json`` with rows ``[listing_id, image_id, global_row,
h1..h7]`` (h = first 12 hex digits of the md5 of that model's float32 vector). A shard is
accepted only when every file has the same row count, every global row is
``shard x capacity + row``, and every vector of every model hashes to its recorded h.
Otherwise it is refused whole (never half-adopted) and its finalized copy in
``backups/shard_NNNN`` is tried instead.

The index store's chain has no gaps (shard N starts where N-1 ends), so the shards after a
refused one are checked and reported but held back.

The adapter (``StagedShard``): the store has no call that takes existing vectors, so an
adopted shard is written in the store's own on-disk format, in a staging folder
(``data/embeddings/.adopt-staging/shard_NNNN``), and renamed into place under the store
lock. The rename is the commit: a shard is in the store whole or not at all. Its parts are
one batch line; the vectors are copied into the parts (the store reads vectors only from
.npy parts), while a finalized shard's derived flat index files are hard links to the
original's files (byte-for-byte the same format), so a finalized shard costs its vectors
once, not twice. The API the store should offer to make the parts references as well is in
bench/results/adopt.md.
"""
from __future__ import annotations

import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.adopt.files import place
from pipeline.adopt.jsonstream import JSONShapeError, iter_array
from pipeline.fsutil import fsync_dir
from pipeline.indexstore import derived, flatfile
from pipeline.indexstore import manifest as mf
from pipeline.indexstore import parts as pt
from pipeline.indexstore.shard import Shard, shard_dir_name

IMAGE_INDEX = "image_index.json"
STAGING = ".adopt-staging"
CHUNK_ROWS = 4096
MAX_MISMATCH_EXAMPLES = 5


def adopted_batch_id(number: int) -> int:
    """Adopted slices carry negative batch ids: worker batches are positive."""
    return -(number + 1)


def faiss_name(model: str) -> str:
    return f"{model}.faiss"


@dataclass
class SourceShard:
    number: int
    path: Path
    via: str                                   # "data/embeddings" or "backups"
    rows: int = 0
    ids: np.ndarray | None = None              # (n, 2) int64
    hashes: np.ndarray | None = None           # (n, models) uint64
    dims: dict = field(default_factory=dict)
    problems: list = field(default_factory=list)
    mismatches: list = field(default_factory=list)   # (row, model, got, want) examples
    n_mismatch: int = 0
    checked: bool = False

    @property
    def name(self) -> str:
        return shard_dir_name(self.number)

    @property
    def ok(self) -> bool:
        return not self.problems and self.n_mismatch == 0

    def identity(self, order: list[str]) -> dict:
        files = {}
        for name in [*(faiss_name(m) for m in order), IMAGE_INDEX]:
            try:
                st = (self.path / name).stat()
                files[name] = [st.st_size, st.st_mtime_ns]
            except OSError:
                files[name] = None
        return {"shard": self.name, "via": self.via, "rows": self.rows, "files": files}

    def why(self) -> str:
        """One line: why the shard is refused."""
        if self.problems:
            more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
            return self.problems[0] + more
        shown = "; ".join(f"row {r} model {m}: vector hashes to {g}, image_index.json says {w}"
                          for r, m, g, w in self.mismatches[:3])
        return f"{self.n_mismatch} hash mismatch(es): {shown}"


# ---------------------------------------------------------------------------
# Reading and checking one original shard
# ---------------------------------------------------------------------------
def read_image_index(path: Path, n_models: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids (n,2), global rows (n,), hashes (n, models)) of an original image_index.json,
    streamed row by row. ValueError names the first bad row."""
    width = 3 + n_models
    lids, iids, grows, hexes = [], [], [], []
    for r, row in enumerate(iter_array(path)):
        if not isinstance(row, list) or len(row) != width or not all(
                isinstance(x, int) and not isinstance(x, bool) for x in row[:3]):
            raise ValueError(f"{IMAGE_INDEX} row {r} is {str(row)[:80]}, expected "
                             f"[listing_id, image_id, global_row, {n_models} hashes]")
        lids.append(row[0])
        iids.append(row[1])
        grows.append(row[2])
        hexes.append(row[3:])
    n = len(lids)
    hashes = np.zeros((n, n_models), dtype=np.uint64)
    for r, hs in enumerate(hexes):
        for j, h in enumerate(hs):
            if not isinstance(h, str) or len(h) != 12:
                raise ValueError(f"{IMAGE_INDEX} row {r}: hash {j + 1} is {h!r}, expected 12 hex digits")
            try:
                hashes[r, j] = int(h, 16)
            except ValueError:
                raise ValueError(f"{IMAGE_INDEX} row {r}: hash {j + 1} is {h!r}, not hex") from None
    ids = np.array([lids, iids], dtype=np.int64).T.reshape(n, 2)
    return ids, np.array(grows, dtype=np.int64), hashes


def read_source(number: int, path: Path, via: str, order: list[str], dims: dict[str, int],
                capacity: int, last: bool) -> SourceShard:
    """The structure of a shard: files present, flat, of the registry's dims, of one row
    count; global rows where they belong. Problems are collected, nothing raised."""
    src = SourceShard(number, Path(path), via)
    counts: dict[str, int] = {}
    for m in order:
        f = src.path / faiss_name(m)
        if not f.exists():
            src.problems.append(f"{f.name} is missing")
            continue
        try:
            dim, ntotal = flatfile.read_header(f)
        except (flatfile.NotFlat, OSError) as exc:
            src.problems.append(f"{f.name} is not an IndexFlatIP file ({exc})")
            continue
        size = f.stat().st_size
        if size != flatfile.file_size(dim, ntotal):
            src.problems.append(f"{f.name} is {size:,} bytes, its header says {ntotal:,} rows of "
                                f"dim {dim} ({flatfile.file_size(dim, ntotal):,} bytes): truncated or damaged")
            continue
        if dim != dims[m]:
            src.problems.append(f"{f.name} has dim {dim}, the model registry says {dims[m]}")
            continue
        src.dims[m] = dim
        counts[f.name] = ntotal
    ii = src.path / IMAGE_INDEX
    if not ii.exists():
        src.problems.append(f"{IMAGE_INDEX} is missing (no hashes to check the vectors against)")
    else:
        try:
            src.ids, grows, src.hashes = read_image_index(ii, len(order))
            counts[IMAGE_INDEX] = len(src.ids)
        except (ValueError, JSONShapeError, UnicodeDecodeError) as exc:
            src.problems.append(f"{IMAGE_INDEX} is unreadable: {exc}")
            src.ids = None
    if len(set(counts.values())) > 1:
        src.problems.append("files disagree in row count: " +
                            ", ".join(f"{k} {v:,}" for k, v in counts.items()))
    src.rows = max(counts.values()) if counts else 0
    if src.ids is not None and not src.problems:
        expect = number * capacity + np.arange(src.rows, dtype=np.int64)
        bad = np.nonzero(grows != expect)[0]
        if len(bad):
            r = int(bad[0])
            src.problems.append(f"{IMAGE_INDEX} row {r} has global row {int(grows[r])}, expected "
                                f"{int(expect[r])} (shard x {capacity:,} + row)")
        if not last and src.rows != capacity:
            src.problems.append(f"holds {src.rows:,} rows, but a finalized shard holds exactly "
                                f"{capacity:,} (adopt.original_shard_rows)")
        elif src.rows > capacity:
            src.problems.append(f"holds {src.rows:,} rows, more than a shard's {capacity:,} "
                                f"(adopt.original_shard_rows)")
    return src


def check_vectors(src: SourceShard, order: list[str], writer: "StagedShard | None" = None,
                  threads: int = 4) -> None:
    """Hash every vector of every model and compare with image_index.json (and, with a
    writer, copy the vectors into the staged parts in the same pass)."""
    if not src.ok or src.ids is None:
        return
    n = src.rows

    def one(j: int, m: str):
        vec = flatfile.vectors(src.path / faiss_name(m), src.dims[m], n)
        want = src.hashes[:, j]
        bad, nonfinite = [], []
        for lo in range(0, n, CHUNK_ROWS):
            chunk = np.asarray(vec[lo:lo + CHUNK_ROWS])
            got = pt.vector_hashes(chunk)
            for r in np.nonzero(got != want[lo:lo + CHUNK_ROWS])[0]:
                bad.append((lo + int(r), m, pt.hash_hex(got[r]), pt.hash_hex(want[lo + r])))
            finite = np.isfinite(chunk).all(axis=1)
            if not finite.all():
                nonfinite.extend(lo + int(r) for r in np.nonzero(~finite)[0])
            if writer is not None and not bad:
                writer.write(m, lo, chunk)
        return bad, nonfinite

    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(order)))) as pool:
        results = list(pool.map(lambda jm: one(*jm), list(enumerate(order))))
    for (bad, nonfinite), m in zip(results, order):
        src.n_mismatch += len(bad)
        src.mismatches.extend(bad[:MAX_MISMATCH_EXAMPLES])
        if nonfinite:
            src.problems.append(f"row {nonfinite[0]} model {m}: NaN or infinite values "
                                f"({len(nonfinite)} rows)")
    src.mismatches.sort()
    src.checked = True


# ---------------------------------------------------------------------------
# The adapter: an adopted shard in the store's on-disk format
# ---------------------------------------------------------------------------
class StagedShard:
    """One adopted shard being written under data/embeddings/.adopt-staging/."""

    def __init__(self, store_base: Path, src: SourceShard, capacity: int, order: list[str],
                 fingerprint: str, durable: bool = True):
        self.base = Path(store_base)
        self.staging = self.base / STAGING
        self.src = src
        self.order = order
        self.durable = durable
        path = self.staging / shard_dir_name(src.number)
        if path.exists():
            shutil.rmtree(path)  # left by a run that died before its rename
        self.staging.mkdir(parents=True, exist_ok=True)
        header = {"capacity": int(capacity), "first_global_row": src.number * int(capacity),
                  "vector_order": list(order), "dims": {m: int(src.dims[m]) for m in order},
                  "fingerprint": fingerprint, "created": time.time(),
                  "adopted_from": src.identity(order)}
        self.shard = Shard.create(self.staging, src.number, header, durable)
        self.seq = self.shard.next_seq()
        self.mm = {m: np.lib.format.open_memmap(pt.part_path(self.shard.parts_dir, self.seq, m),
                                                mode="w+", dtype="<f4", shape=(src.rows, src.dims[m]))
                   for m in order}

    @property
    def path(self) -> Path:
        return self.shard.path

    def write(self, model: str, lo: int, chunk: np.ndarray) -> None:
        self.mm[model][lo:lo + len(chunk)] = chunk

    def commit(self, fingerprint: str, link_models: list[str], index_types: dict,
               train_rows: int, build_final: bool, log=None, link_mode: str = "auto") -> dict:
        """Make the parts durable, append the batch line (the shard's content is now fixed),
        then the derived files: hard links for a finalized shard's flat indexes, the rest
        built by the store's own derived-file code. Returns {"linked": n, "copied_bytes": b}."""
        src, n = self.src, self.src.rows
        for m in self.order:
            mm = self.mm.pop(m)
            mm.flush()
            del mm
            if self.durable:
                _fsync_file(pt.part_path(self.shard.parts_dir, self.seq, m))
        pt.write_array(pt.part_path(self.shard.parts_dir, self.seq, "ids"), src.ids, self.durable)
        pt.write_array(pt.part_path(self.shard.parts_dir, self.seq, "hashes"), src.hashes, self.durable)
        if self.durable:
            fsync_dir(self.shard.parts_dir)
        first = self.shard.first_global_row
        entry = {"kind": "batch", "seq": self.seq, "batch_id": adopted_batch_id(src.number),
                 "start": 0, "n": n, "offset": 0, "total": n, "fingerprint": fingerprint,
                 "first": [src.number, first], "t": time.time(),
                 "adopted": {"shard": src.name, "via": src.via}}
        mf.append_entry(self.shard.manifest_path, entry, self.durable)
        self.shard.load(repair=False)
        files, linked, copied = {}, 0, 0
        for m in link_models:
            placed = place(src.path / faiss_name(m), self.shard.faiss_path(m), link_mode, self.durable)
            linked += placed.how == "linked"
            copied += placed.bytes_copied
            files[m] = {"rows": n, "size": self.shard.faiss_path(m).stat().st_size,
                        "type": derived.FLAT}
        if files:
            self.shard.write_derived_state({"files": files, "rows": None,
                                            "manifest_bytes": self.shard.manifest_bytes}, self.durable)
        derived.refresh(self.shard, index_types, train_rows, self.durable, build_final, log)
        return {"linked": linked, "copied_bytes": copied}

    def place(self) -> Path:
        """Rename the staged shard into the store (call under the store lock)."""
        final = self.base / shard_dir_name(self.src.number)
        if final.exists():
            raise FileExistsError(f"{final} exists")
        os.rename(self.shard.path, final)
        fsync_dir(self.base)
        return final

    def abort(self) -> None:
        for mm in self.mm.values():
            del mm
        self.mm = {}
        shutil.rmtree(self.shard.path, ignore_errors=True)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_staging(store_base: Path) -> None:
    shutil.rmtree(Path(store_base) / STAGING, ignore_errors=True)
