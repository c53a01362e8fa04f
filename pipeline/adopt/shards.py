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

An accepted shard goes into the store with ``IndexStore.adopt_shard``: a finalized shard's
seven IndexFlatIP files become the new shard's parts (``bSSSSSS.<model>.flat.faiss``) and its
derived ``<model>.faiss`` by hard link, so it costs no extra disk for its vectors (a copy only
across file systems); the last, active shard is copied (the original rewrites it in place).
The store builds the shard in a staging folder and renames it into place: an adopted shard
is in the store whole or not at all.
"""
from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.adopt.jsonstream import JSONShapeError, iter_array
from pipeline.index import flatfile
from pipeline.index import parts as pt
from pipeline.index.shard import shard_dir_name

IMAGE_INDEX = "image_index.json"
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


def check_vectors(src: SourceShard, order: list[str], threads: int = 4) -> None:
    """Hash every vector of every model and compare with image_index.json (the original's
    files read through read-only memory maps)."""
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


def remove_staging(store_base: Path) -> None:
    from pipeline.index.adoption import STAGING

    shutil.rmtree(Path(store_base) / STAGING, ignore_errors=True)
