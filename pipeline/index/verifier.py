"""`imageselector index verify`: every file of every shard agrees with the parts, the
registry and the DB. Each problem names the shard, the row and the model where it can."""
from __future__ import annotations

import json

import numpy as np

from pipeline.core.errors import UserError
from pipeline.index import derived, flatfile
from pipeline.index import parts as pt
from pipeline.index.shard import Shard

MAX_PER_KIND = 5  # problems of one kind reported per shard and file before "... and N more"


class _Problems:
    def __init__(self):
        self.items: list[str] = []
        self._counts: dict[tuple, int] = {}

    def add(self, key: tuple, text: str) -> None:
        n = self._counts.get(key, 0) + 1
        self._counts[key] = n
        if n <= MAX_PER_KIND:
            self.items.append(text)

    def finish(self) -> list[str]:
        for key, n in self._counts.items():
            if n > MAX_PER_KIND:
                self.items.append(f"{key[0]}: ... and {n - MAX_PER_KIND} more {key[1]} problems")
        return self.items


def _check_rows(probs, name, key, what, got: np.ndarray, want: np.ndarray, models=None):
    bad = np.nonzero(got != want)[0] if got.ndim == 1 else np.nonzero((got != want).any(axis=1))[0]
    for r in bad:
        col = ""
        if models is not None and got.ndim == 2:
            cols = np.nonzero(got[r] != want[r])[0]
            col = " model " + ",".join(models[c] for c in cols)
        probs.add(key, f"{name} row {int(r)}{col}: {what}")


def verify_store(store, conn=None, registry: tuple[list[str], dict[str, int]] | None = None,
                 full: bool = True) -> tuple[list[str], dict]:
    """Returns (problems, summary). ``registry`` = (order, dims) the shards must match."""
    probs = _Problems()
    summary = {"shards": len(store.shards), "rows": store.total_rows(), "per_shard": []}
    for shard in store.shards:
        _verify_shard(store, shard, probs, registry, full)
        summary["per_shard"].append({"shard": shard.number, "rows": shard.rows,
                                     "full": shard.full})
    if conn is not None:
        _verify_db(store, conn, probs)
    return probs.finish(), summary


def _verify_shard(store, shard: Shard, probs: _Problems, registry, full: bool) -> None:
    name = shard.path.name
    order, dims = shard.order, shard.dims
    if registry is not None:
        r_order, r_dims = registry
        if list(order) != list(r_order):
            probs.add((name, "registry"), f"{name}: model order {order} differs from the "
                                          f"registry's {list(r_order)}")
        for m in order:
            if m in r_dims and dims[m] != r_dims[m]:
                probs.add((name, "registry"), f"{name} model {m}: dim {dims[m]} in the manifest, "
                                              f"registry says {r_dims[m]}")
    rows = shard.rows
    # parts: shapes, and the hashes recomputed from the vectors
    for s in shard.slices:
        try:
            ids = shard.part(s, "ids")
            hashes = shard.part(s, "hashes")
        except UserError as exc:
            probs.add((name, "parts"), str(exc))
            continue
        if ids.shape != (s.n, 2) or hashes.shape != (s.n, len(order)):
            probs.add((name, "parts"), f"{name} rows {s.start}..{s.start + s.n - 1}: ids/hashes "
                                       f"parts of line {s.seq} have shapes {ids.shape}/{hashes.shape}")
            continue
        for j, m in enumerate(order):
            try:
                vec = shard.part(s, m)
            except UserError as exc:
                probs.add((name, "parts"), str(exc))
                continue
            if vec.shape != (s.n, dims[m]) or vec.dtype != np.float32:
                probs.add((name, "parts"), f"{name} model {m}: part of line {s.seq} has shape "
                                           f"{vec.shape} {vec.dtype}, expected ({s.n}, {dims[m]}) float32")
                continue
            if full:
                got = pt.vector_hashes(vec)
                for r in np.nonzero(got != np.asarray(hashes[:, j]))[0]:
                    probs.add((name, f"{m} part"), f"{name} row {s.start + int(r)} model {m}: vector in "
                                                   f"part b{s.seq:06d} hashes to {pt.hash_hex(got[r])}, "
                                                   f"recorded {pt.hash_hex(hashes[r, j])}")
    # derived files
    state = shard.derived_state()
    if state.get("rows") != rows:
        probs.add((name, "derived"), f"{name}: derived files cover {state.get('rows')} rows of "
                                     f"{rows} (run: imageselector index rebuild)")
    try:
        all_ids = shard.ids()
        all_hashes = shard.hashes()
    except UserError:
        return
    for j, m in enumerate(order):
        path = shard.faiss_path(m)
        if not path.exists():
            probs.add((name, m), f"{name} model {m}: {path.name} is missing")
            continue
        kind = derived.faiss_kind(path)
        if kind == derived.FLAT:
            fdim, ntotal = flatfile.read_header(path)
            size_ok = path.stat().st_size == flatfile.file_size(fdim, ntotal)
            if fdim != dims[m] or ntotal != rows or not size_ok:
                probs.add((name, m), f"{name} model {m}: {path.name} holds {ntotal} rows of dim "
                                     f"{fdim} ({path.stat().st_size} bytes), expected {rows} of "
                                     f"dim {dims[m]}")
                continue
            if full:
                vecs = flatfile.vectors(path, fdim, ntotal)
                for lo in range(0, ntotal, 50_000):
                    got = pt.vector_hashes(vecs[lo:lo + 50_000])
                    want = all_hashes[lo:lo + 50_000, j]
                    for r in np.nonzero(got != want)[0]:
                        probs.add((name, m), f"{name} row {lo + int(r)} model {m}: {path.name} vector "
                                             f"hashes to {pt.hash_hex(got[r])}, image_index.json "
                                             f"says {pt.hash_hex(want[r])}")
        else:
            import faiss

            index = faiss.read_index(str(path))
            if index.d != dims[m] or index.ntotal != rows:
                probs.add((name, m), f"{name} model {m}: {path.name} holds {index.ntotal} rows of "
                                     f"dim {index.d}, expected {rows} of dim {dims[m]}")
    _verify_image_index(shard, probs, all_ids, all_hashes)


def _verify_image_index(shard: Shard, probs: _Problems, ids: np.ndarray, hashes: np.ndarray) -> None:
    name = shard.path.name
    key = (name, "image_index.json")
    try:
        with open(shard.image_index_path, encoding="utf-8") as fh:
            rows = json.load(fh)
    except FileNotFoundError:
        probs.add(key, f"{name}: image_index.json is missing")
        return
    except ValueError as exc:
        probs.add(key, f"{name}: image_index.json is not valid JSON ({exc})")
        return
    width = 3 + len(shard.order)
    if len(rows) != shard.rows:
        probs.add(key, f"{name}: image_index.json has {len(rows)} rows, the parts {shard.rows}")
        return
    g0 = shard.first_global_row
    for r, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != width:
            probs.add(key, f"{name} row {r}: image_index.json row is {row!r}")
            continue
        if row[0] != ids[r, 0] or row[1] != ids[r, 1] or row[2] != g0 + r:
            probs.add(key, f"{name} row {r}: image_index.json says {row[:3]}, parts say "
                           f"[{ids[r, 0]}, {ids[r, 1]}, {g0 + r}]")
        for j, m in enumerate(shard.order):
            if row[3 + j] != pt.hash_hex(hashes[r, j]):
                probs.add(key, f"{name} row {r} model {m}: image_index.json hash {row[3 + j]}, "
                               f"parts {pt.hash_hex(hashes[r, j])}")


def _verify_db(store, conn, probs: _Problems) -> None:
    """Index rows <-> DB rows, through the DB's global_row index (no full scan per shard)."""
    end = 0
    for shard in store.shards:
        name = shard.path.name
        key = (name, "db")
        ids = shard.ids()
        g0 = shard.first_global_row
        end = g0 + shard.capacity
        got = conn.execute("SELECT global_row, listing_id, image_id, shard, shard_row, state "
                           "FROM image_status WHERE global_row >= ? AND global_row < ?",
                           (g0, end)).fetchall()
        by_row: dict[int, tuple] = {}
        for row in got:
            r = row[0] - g0
            if r in by_row or r >= shard.rows:
                probs.add(key, f"{name} row {r}: the DB places image {row[1]}_{row[2]} there, "
                               f"{'a row already taken' if r in by_row else f'past the shard end ({shard.rows} rows)'}")
            by_row.setdefault(r, row)
        for r in range(shard.rows):
            row = by_row.get(r)
            lid, iid = int(ids[r, 0]), int(ids[r, 1])
            if row is None:
                state = conn.execute("SELECT state, shard, shard_row FROM image_status WHERE "
                                     "listing_id = ? AND image_id = ?", (lid, iid)).fetchone()
                probs.add(key, f"{name} row {r}: image {lid}_{iid} is in the index but the DB has "
                               f"{'no such image' if state is None else f'state {state[0]} shard {state[1]} row {state[2]}'}")
                continue
            if (row[1], row[2]) != (lid, iid) or row[3] != shard.number or row[4] != r \
                    or row[5] not in ("embedded", "tarred"):
                probs.add(key, f"{name} row {r}: DB has image {row[1]}_{row[2]} shard {row[3]} "
                               f"row {row[4]} state {row[5]}, index has {lid}_{iid}")
    n_past = conn.execute("SELECT COUNT(*) FROM image_status WHERE global_row >= ?",
                          (end,)).fetchone()[0]
    if n_past:
        probs.add(("db", "db"), f"DB places {n_past} images past the last shard")
    n_missing = conn.execute("SELECT COUNT(*) FROM image_status WHERE state = 'embedded' "
                             "AND global_row IS NULL").fetchone()[0]
    if n_missing:
        probs.add(("db", "db"), f"DB has {n_missing} embedded images with no index row")
