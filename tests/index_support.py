"""Shared helpers for the index store and search tests: a DB with batched images, and
deterministic vectors for them."""
from __future__ import annotations

import time

import numpy as np

from pipeline.core import db as dbm
from pipeline.models.registry import VECTOR_DIMS, VECTOR_ORDER

ORDER = list(VECTOR_ORDER)
DIMS = dict(VECTOR_DIMS)
FP = "fp-test-0001"


def open_db(root):
    return dbm.open_db(root)


def add_batch(conn, batch_id: int, n: int, first_listing: int, images_per_listing: int = 1) -> np.ndarray:
    """n images (listing ids from first_listing, image ids 1..) in state batched, leased to
    ``batch_id``, and the batch's row; returns the (n, 2) ids."""
    ids = np.array([(first_listing + i // images_per_listing, 1 + i % images_per_listing)
                    for i in range(n)], dtype=np.int64)
    now = time.time()
    with dbm.transaction(conn):
        dbm.add_discovered_images(conn, map(tuple, ids.tolist()))
        keys = list(map(tuple, ids.tolist()))
        dbm.set_image_state(conn, keys, dbm.DOWNLOADED)
        dbm.set_image_state(conn, keys, dbm.BATCHED, batch_id=batch_id)
        conn.execute("INSERT INTO batches(batch_id, worker, state, n_images, created_at) "
                     "VALUES (?, 'local', 'returned', ?, ?)", (batch_id, n, now))
    return ids


def vectors_for(ids: np.ndarray, order=ORDER, dims=DIMS, salt: int = 0) -> dict[str, np.ndarray]:
    """Normalised vectors that depend only on (listing, image, model): a re-offered batch
    carries exactly the same vectors."""
    out = {}
    for j, m in enumerate(order):
        rows = []
        for lid, iid in ids:
            rng = np.random.default_rng([int(lid), int(iid), j, salt])
            v = rng.standard_normal(dims[m]).astype("float32")
            rows.append(v / np.linalg.norm(v))
        out[m] = np.stack(rows) if rows else np.zeros((0, dims[m]), "float32")
    return out


def embedded_rows(conn) -> list[tuple]:
    return conn.execute("SELECT listing_id, image_id, shard, shard_row, global_row FROM "
                        "image_status WHERE state = 'embedded' ORDER BY global_row").fetchall()


def assert_exactly_once(store, conn, expected_ids) -> None:
    """Every expected image is in the index once, at the row the DB names."""
    seen = []
    for shard in store.shards:
        ids = shard.ids()
        for r, (lid, iid) in enumerate(ids.tolist()):
            seen.append((lid, iid, shard.number, r, shard.first_global_row + r))
    pairs = [(a, b) for a, b, *_ in seen]
    assert len(pairs) == len(set(pairs)), "an image is in the index twice"
    assert set(pairs) == {tuple(x) for x in np.asarray(expected_ids).tolist()}
    assert sorted(seen, key=lambda r: r[4]) == [tuple(r) for r in embedded_rows(conn)]


# ---- a synthetic collection for search ------------------------------------------------

def _unit(v):
    v = np.asarray(v, dtype="float32")
    return v / np.linalg.norm(v)


def _noisy(rng, base, noise):
    return _unit(base + noise * rng.standard_normal(base.shape[0]).astype("float32") / np.sqrt(base.shape[0]))


def add_images(conn, batch_id: int, ids) -> None:
    keys = [tuple(map(int, x)) for x in ids]
    with dbm.transaction(conn):
        dbm.add_discovered_images(conn, keys)
        dbm.set_image_state(conn, keys, dbm.DOWNLOADED)
        dbm.set_image_state(conn, keys, dbm.BATCHED, batch_id=batch_id)
        conn.execute("INSERT INTO batches(batch_id, worker, state, n_images, created_at) "
                     "VALUES (?, 'local', 'returned', ?, ?)", (batch_id, len(keys), time.time()))


def add_listing_rows(conn, root, listing_id: int, n_images: int, title: str, price_cents: int,
                     shop: str) -> None:
    """listings_static/dynamic, shop, images (image 1 primary) and loose bg-removed files."""
    now = time.time()
    shop_id = 10_000 + sum(map(ord, shop))
    with dbm.transaction(conn):
        conn.execute("INSERT OR IGNORE INTO shops_static(shop_id, snapshot_timestamp, shop_name) "
                     "VALUES (?, ?, ?)", (shop_id, now, shop))
        conn.execute("INSERT INTO listings_static(listing_id, snapshot_timestamp, shop_id, title) "
                     "VALUES (?, ?, ?, ?)", (listing_id, now, shop_id, title))
        conn.execute("INSERT INTO listings_dynamic(listing_id, snapshot_timestamp, price_amount, "
                     "price_divisor, price_currency) VALUES (?, ?, ?, 100, 'USD')",
                     (listing_id, now - 10, price_cents + 999))
        conn.execute("INSERT INTO listings_dynamic(listing_id, snapshot_timestamp, price_amount, "
                     "price_divisor, price_currency) VALUES (?, ?, ?, 100, 'USD')",
                     (listing_id, now, price_cents))
        for iid in range(1, n_images + 1):
            conn.execute("INSERT INTO images(listing_id, image_id, rank, is_primary) VALUES "
                         "(?, ?, ?, ?)", (listing_id, iid, iid, int(iid == 1)))
    for iid in range(1, n_images + 1):
        (root.bgremoved_dir / f"{listing_id}_{iid}.jpg").write_bytes(b"\xff\xd8 fake jpeg")


class Collection:
    """Known ground truth:
    - object O (per model a base vector) photographed in listings 101, 102, 103: their image
      2 is a near-duplicate of O (image 1, the primary, is an unrelated shot);
    - listing 201: similar to the query in every image model, moderately (0.5);
    - listing 301: a near-duplicate in clip_vitb32 only, random elsewhere;
    - 120 distractor listings (ids 1000..), two random images each.
    ``query(model)`` is a fresh noisy copy of O."""

    OBJECT_LISTINGS = (101, 102, 103)
    ALL_AGREE = 201
    ONE_MODEL = 301

    def __init__(self, root, conn, store, seed: int = 7):
        self.rng = rng = np.random.default_rng(seed)
        self.base = {m: _unit(rng.standard_normal(DIMS[m])) for m in ORDER}
        rows: list[tuple[int, int]] = []
        vecs: dict[str, list] = {m: [] for m in ORDER}

        def add(lid, iid, per_model):
            rows.append((lid, iid))
            for m in ORDER:
                vecs[m].append(per_model(m))

        rand = lambda m: _unit(rng.standard_normal(DIMS[m]))  # noqa: E731
        for lid in self.OBJECT_LISTINGS:
            add(lid, 1, rand)
            add(lid, 2, lambda m: _noisy(rng, self.base[m], 0.3 + 0.1 * (lid - 101)))
            add_listing_rows(conn, root, lid, 2, f"oak chair {lid}", 12_500 + lid, "woodshop")
        add(self.ALL_AGREE, 1, lambda m: _unit(self.base[m] + 1.6 * rand(m)))
        add_listing_rows(conn, root, self.ALL_AGREE, 1, "similar chair", 9_900, "other")
        add(self.ONE_MODEL, 1, lambda m: _noisy(rng, self.base[m], 0.2) if m == "clip_vitb32" else rand(m))
        add_listing_rows(conn, root, self.ONE_MODEL, 1, "one-model match", 5_000, "other")
        for lid in range(1000, 1120):
            add(lid, 1, rand)
            add(lid, 2, rand)
            add_listing_rows(conn, root, lid, 2, f"distractor {lid}", 1_000 + lid, "misc")
        self.ids = np.array(rows, dtype=np.int64)
        self.vectors = {m: np.stack(v) for m, v in vecs.items()}
        add_images(conn, 1, self.ids)
        store.import_batch(1, self.ids, self.vectors, FP, conn)

    def query(self, models=None, noise: float = 0.3) -> dict[str, np.ndarray]:
        return {m: _noisy(self.rng, self.base[m], noise) for m in (models or ORDER)}


# ---- files shared by hard link with another system's files --------------------------------

def file_ids(paths) -> dict:
    """(st_dev, st_ino) -> path of each existing file."""
    import os

    out = {}
    for p in paths:
        st = os.stat(p)
        out[(st.st_dev, st.st_ino)] = str(p)
    return out


def sha_of(paths) -> dict:
    import hashlib

    return {str(p): hashlib.sha256(open(p, "rb").read()).hexdigest() for p in paths}


class WriteOpenRecorder:
    """Records every open for writing (builtins/io open with w, a, x or +; os.open with a
    write flag) of an existing file whose inode is one of ``protected`` ((st_dev, st_ino) ->
    name): such a file must only ever be opened read-only. Use with pytest's monkeypatch."""

    def __init__(self, monkeypatch, protected: dict):
        import builtins
        import io
        import os

        self.protected = dict(protected)
        self.hits: list[str] = []
        self.opens = 0
        real_open, real_os_open = builtins.open, os.open
        wflags = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_TRUNC

        def check(path, writing: bool):
            self.opens += 1
            if not writing or isinstance(path, int):
                return
            try:
                st = os.stat(path)
            except (OSError, TypeError, ValueError):
                return
            key = (st.st_dev, st.st_ino)
            if key in self.protected:
                self.hits.append(f"{path} (= {self.protected[key]})")

        def fake_open(file, mode="r", *a, **kw):
            check(file, any(c in str(mode) for c in "wax+"))
            return real_open(file, mode, *a, **kw)

        def fake_os_open(path, flags, *a, **kw):
            check(path, bool(flags & wflags))
            return real_os_open(path, flags, *a, **kw)

        monkeypatch.setattr(builtins, "open", fake_open)
        monkeypatch.setattr(io, "open", fake_open)
        monkeypatch.setattr(os, "open", fake_os_open)
