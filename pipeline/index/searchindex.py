"""The cross-shard search index: one approximate index per model over every row of the store.

The index store keeps one derived FAISS file per shard and model; at 10 million images that
is 20 shards, so a query would run 20 searches per model. For large collections the search
engine instead uses, per model, one IVF index (by default IVF-PQ with 4-bit fast-scan codes,
d/8 bytes a vector) whose FAISS ids are the store's global rows, and re-scores its
candidates exactly from the stored float32 parts (memory-mapped). Only the codes sit in
RAM, so five models at 10M fit in ~5 GB.

It is derived and disposable: the append-only store stays the source of truth. Files, per
model, under ``data/embeddings/search_<model>/``::

    index_<rows>.faiss   the index over global rows 0..rows-1
    state.json           which file, its type and dim, and which manifest lines it covers
                         (shard number, rows, the checksum of the shard header and of the
                         last covered batch line): a store rebuilt or re-imported under it
                         no longer matches, and the index is then ignored, never trusted

``update`` (a writer) trains it once the store holds ``min_rows`` rows and extends it with
the rows imported since; a search engine also extends its in-memory copy with rows
imported after the last ``update`` (up to a limit), so a new import is searchable at once.
The file is written under a new name, then state.json is replaced: a reader sees the old
index or the new one.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core.config import config_values, toml_defaults
from pipeline.core.errors import UserError
from pipeline.core.fsutil import try_flock

DIR_PREFIX = "search_"
STATE_NAME = "state.json"
log = logging.getLogger("imageselector.searchindex")


class Stale(Exception):
    """The search index on disk does not describe the store's rows (reason in the text)."""


def search_dir(base: Path, model: str) -> Path:
    return Path(base) / f"{DIR_PREFIX}{model}"


def auto_nlist(rows: int) -> int:
    """IVF lists: the power of two nearest 4 * sqrt(rows) (2,048 at 200K, 4,096 at 1M,
    16,384 at 10M), at most 65,536 and rows / 39 (faiss's minimum training points per
    centroid)."""
    want = 4 * math.sqrt(max(rows, 1))
    n = 2 ** round(math.log2(want))
    return int(max(1, min(65_536, n, rows // 39)))


def index_type(template: str, dim: int, rows: int, nlist: int = 0) -> str:
    """A faiss factory string from a template: {nlist} (``nlist`` or auto), {pq} (d/4: one
    4-bit code per 4 dimensions), {d}."""
    try:
        return template.format(nlist=nlist or auto_nlist(rows), pq=max(1, dim // 4), d=dim)
    except (KeyError, IndexError, ValueError) as exc:
        raise UserError(f"search.index_type {template!r} is not a valid template ({exc})") from None


# ---- which rows an index covers ---------------------------------------------------------

def covered(shards, rows: int) -> list[list]:
    """[shard number, rows of it covered, header checksum, checksum of the last covered
    batch line] for every shard holding rows below global row ``rows``."""
    out = []
    for sh in shards:
        n = min(sh.rows, rows - sh.first_global_row)
        if n <= 0:
            break
        last = next((s for s in sh.slices if s.start + s.n == n), None)
        if last is None:
            raise Stale(f"{sh.path.name}: row {n} is not the end of a committed batch")
        out.append([sh.number, n, sh.entries[0].get("sum"), last.entry.get("sum")])
    return out


def check_covered(record: list, shards) -> str | None:
    """None when the shards still hold the recorded lines, else why not."""
    by_number = {sh.number: sh for sh in shards}
    for number, n, head, last in record:
        sh = by_number.get(number)
        if sh is None:
            return f"shard {number} is gone"
        if sh.entries[0].get("sum") != head:
            return f"shard {number} was re-created"
        s = next((s for s in sh.slices if s.start + s.n == n), None)
        if s is None or s.entry.get("sum") != last:
            return f"shard {number}'s first {n} rows changed"
    return None


def prefix_rows(shards, rows_of=None) -> int:
    """Global rows 0..N-1 that exist without a gap (every shard before the last full)."""
    total = 0
    for sh in shards:
        n = sh.rows if rows_of is None else rows_of(sh)
        if sh.first_global_row != total:
            break
        total += n
        if n < sh.capacity:
            break
    return total


# ---- building -----------------------------------------------------------------------------

def iter_rows(shards, model: str, start: int, stop: int, chunk: int = 50_000, parts_of=None):
    """(global rows, float32 vectors) of rows start..stop-1 of ``model``, from the parts."""
    for sh in shards:
        g0 = sh.first_global_row
        if g0 + sh.rows <= start or g0 >= stop:
            continue
        parts = parts_of(sh, model) if parts_of else sh.vector_parts(model)
        for first, part in parts:
            lo = max(start - g0, first)
            hi = min(stop - g0, first + part.shape[0])
            for a in range(lo, hi, chunk):
                b = min(hi, a + chunk)
                yield (np.arange(a, b, dtype=np.int64) + g0,
                       np.ascontiguousarray(part[a - first:b - first], dtype="float32"))


def add_rows(index, shards, model: str, start: int, stop: int, parts_of=None) -> int:
    for grows, vecs in iter_rows(shards, model, start, stop, parts_of=parts_of):
        index.add_with_ids(vecs, grows)
    return stop


def train_new(kind: str, dim: int, shards, model: str, rows: int, train_rows: int):
    import faiss

    from pipeline.index.indextypes import gather

    index = faiss.index_factory(dim, kind, faiss.METRIC_INNER_PRODUCT)
    take = min(rows, max(train_rows, 1))
    pick = np.sort(np.random.default_rng(0).choice(rows, size=take, replace=False))
    sample = []
    for sh in shards:
        g0 = sh.first_global_row
        sel = pick[(pick >= g0) & (pick < g0 + sh.rows)] - g0
        if len(sel):
            sample.append(gather(sh.vector_parts(model), sel, dim))
    index.train(np.concatenate(sample))
    return index


# ---- files --------------------------------------------------------------------------------

def read_state(base: Path, model: str) -> dict | None:
    try:
        with open(search_dir(base, model) / STATE_NAME, encoding="utf-8") as fh:
            state = json.load(fh)
        return state if isinstance(state, dict) else None
    except (FileNotFoundError, ValueError):
        return None


def state_signature(base: Path, model: str):
    try:
        st = (search_dir(base, model) / STATE_NAME).stat()
        return (st.st_size, st.st_mtime_ns, st.st_ino)
    except FileNotFoundError:
        return None


def load(base: Path, model: str, shards, dim: int):
    """(index, state) of the model's search index on disk; None when there is none; Stale
    when it does not describe these shards."""
    import faiss

    state = read_state(base, model)
    if state is None:
        return None
    if state.get("model") != model or int(state.get("dim", -1)) != dim:
        raise Stale(f"built for {state.get('model')} dim {state.get('dim')}")
    why = check_covered(state.get("covered", []), shards)
    if why:
        raise Stale(why)
    path = search_dir(base, model) / state["file"]
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as exc:
        raise Stale(f"{path.name} unreadable ({str(exc).splitlines()[0][:80]})") from None
    if index.ntotal != int(state["rows"]) or index.d != dim:
        raise Stale(f"{path.name} holds {index.ntotal} rows of dim {index.d}, "
                    f"state.json says {state['rows']} of dim {dim}")
    return index, state


def _write(base: Path, model: str, index, state: dict, durable: bool) -> None:
    from pipeline.core.fsutil import atomic_write_bytes, fsync_dir
    from pipeline.index.indextypes import write_index_atomic

    folder = search_dir(base, model)
    name = f"index_{int(state['rows'])}.faiss"
    write_index_atomic(index, folder / name, durable)
    state = dict(state, file=name, size=(folder / name).stat().st_size)
    atomic_write_bytes(folder / STATE_NAME, json.dumps(state, indent=1).encode(), durable=durable)
    for old in folder.glob("index_*.faiss"):
        if old.name != name:
            old.unlink(missing_ok=True)
    if durable:
        fsync_dir(folder)


@contextmanager
def _locked(folder: Path, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while (fd := try_flock(folder / ".lock")) is None:
        if time.monotonic() > deadline:
            raise UserError(f"{folder}: another process is updating this search "
                            f"index (waited {timeout_s:.0f}s)")
        time.sleep(0.1)
    try:
        yield
    finally:
        os.close(fd)


def snapshot_shards(base: Path, lock_wait_s: float = 600.0):
    """The shards' committed lines, read under the store's shared lock (committed parts
    never change afterwards, so they are read without it)."""
    from pipeline.index.shard import Shard, list_shard_numbers
    from pipeline.index.store import IndexStore

    with IndexStore(base, lock_timeout_s=lock_wait_s).locked(exclusive=False):
        return [Shard(base, n).load(repair=False) for n in list_shard_numbers(base)]


@dataclass
@toml_defaults("search", template="search.index_type", min_rows="search.index_min_rows",
               nlist="search.index_nlist", train_rows="search.index_train_rows",
               durable="index.fsync", lock_wait_s=None)
class BuildSettings:
    template: str
    min_rows: int
    nlist: int
    train_rows: int
    durable: bool
    lock_wait_s: float = 600.0   # a build waits this long for another build of the model

    @classmethod
    def from_config(cls, config) -> "BuildSettings":
        return cls(**config_values(cls, config))


def update(base: Path, model: str, settings: BuildSettings, force: bool = False,
           shards=None) -> dict:
    """Bring ``model``'s search index up to every committed row: train it (first time,
    once the store holds ``min_rows``), or add the rows imported since. Returns what it did."""
    base = Path(base)
    t0 = time.perf_counter()
    with _locked(search_dir(base, model), settings.lock_wait_s):
        shards = shards if shards is not None else snapshot_shards(base, settings.lock_wait_s)
        if not shards:
            return {"model": model, "action": "empty", "rows": 0}
        dims = shards[-1].dims
        if model not in dims:
            raise UserError(f"unknown model {model} (store models: {', '.join(shards[-1].order)})")
        dim, total = dims[model], prefix_rows(shards)
        loaded, why = None, None
        if not force:
            try:
                loaded = load(base, model, shards, dim)
            except Stale as exc:
                why = str(exc)
        if loaded is None:
            if total < settings.min_rows:
                return {"model": model, "action": "too small", "rows": total}
            kind = index_type(settings.template, dim, total, settings.nlist)
            log.info("search index %s: training %s on %d rows%s", model, kind,
                     min(total, settings.train_rows), f" (old one stale: {why})" if why else "")
            index = train_new(kind, dim, shards, model, total, settings.train_rows)
            state = {"model": model, "dim": dim, "type": kind, "rows": 0,
                     "trained_rows": total, "created": time.time()}
            action = "built"
        else:
            index, state = loaded
            action = "extended"
            if int(state["rows"]) == total:
                return {"model": model, "action": "current", "rows": total}
        start = int(state["rows"])
        add_rows(index, shards, model, start, total)
        state.update(rows=total, covered=covered(shards, total), updated=time.time())
        _write(base, model, index, state, settings.durable)
    return {"model": model, "action": action, "rows": total, "added": total - start,
            "type": state["type"], "seconds": round(time.perf_counter() - t0, 2)}


def update_for_root(root, models: list[str] | None = None, force: bool = False) -> list[dict]:
    """Every model's search index (or ``models``); the writer step to run after imports
    when ``search.index_type`` is set."""
    settings = BuildSettings.from_config(root.config)
    if not settings.template:
        return []
    base = root.embeddings_dir
    shards = snapshot_shards(base, settings.lock_wait_s)
    names = models or (shards[-1].order if shards else [])
    return [update(base, m, settings, force, shards) for m in names]
