"""A listing's first-seen time is kept, never overwritten (the original's rule): a re-crawl of
the local Etsy API over real HTTP moves each listing's snapshot time and leaves first_seen
alone; the v5 migration fills first_seen of older DBs from their oldest snapshot."""
from __future__ import annotations

import sqlite3

from etsy_support import KEY, make_root, run_sync
from pipeline.core import db, schema
from pipeline.sandbox.etsy_api import LocalEtsyAPI
from pipeline.stages.sync.store import write_listings


def _listings(db_path) -> dict[int, tuple]:
    conn = sqlite3.connect(str(db_path))
    try:
        return {r[0]: r[1:] for r in conn.execute(
            "SELECT listing_id, first_seen, snapshot_timestamp, last_dynamic_ts FROM listings_static")}
    finally:
        conn.close()


def test_recrawl_keeps_first_seen_and_new_listings_get_their_own(tmp_path):
    with LocalEtsyAPI(listings=150, api_key=KEY, faults={"vanish": 0.1}) as api:
        late = api.vanished_ids()  # absent from the first crawl's batch calls, so not stored
        assert late
        # a refresh window of 0: the re-crawl takes a new snapshot of every listing
        root = make_root(tmp_path / "root", api.base_url, sync={"listing_refresh_days": 0.0})
        assert run_sync(root) == 0
        first = _listings(root.db_path)
        assert first and not late & set(first)
        for first_seen, snapshot, _ in first.values():
            assert first_seen is not None and first_seen == snapshot

        api.clear_faults()
        assert run_sync(root) == 0
        second = _listings(root.db_path)
    assert set(second) == set(first) | late
    for lid, (first_seen, snapshot, dynamic_ts) in first.items():
        again = second[lid]
        assert again[0] == first_seen, lid                      # kept
        assert again[1] > snapshot and again[2] > dynamic_ts, lid  # the re-crawl did write
    newest_first = max(v[0] for v in first.values())
    for lid in late:
        first_seen, snapshot, _ = second[lid]
        assert first_seen == snapshot and first_seen > newest_first


def _v4_db(path) -> sqlite3.Connection:
    """A DB as version 4 of the schema left it."""
    conn = sqlite3.connect(str(path), isolation_level=None)
    for script in schema.MIGRATIONS[:4]:
        for statement in db._split_sql(script):
            conn.execute(statement)
    conn.execute("PRAGMA user_version = 4")
    return conn


def test_migration_fills_first_seen_and_no_later_write_overwrites_it(tmp_path):
    path = tmp_path / "db.sqlite"
    old = _v4_db(path)
    # 1: crawled at 1000 and 3000, static row last written at 5000 (the old overwrite);
    # 2: static row only; 3: adopted without a time (snapshot 0) and no series
    old.executemany("INSERT INTO listings_static(listing_id, snapshot_timestamp, shop_id) "
                    "VALUES (?, ?, 1)", [(1, 5000.0), (2, 4000.0), (3, 0.0)])
    old.executemany("INSERT INTO listings_dynamic(listing_id, snapshot_timestamp) VALUES (?, ?)",
                    [(1, 3000.0), (1, 1000.0)])
    old.close()

    conn = db.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION
    seen = dict(conn.execute("SELECT listing_id, first_seen FROM listings_static"))
    assert seen == {1: 1000.0, 2: 4000.0, 3: None}

    # a row inserted without first_seen (as adoption does) takes its snapshot time
    with db.transaction(conn):
        conn.execute("INSERT INTO listings_static(listing_id, snapshot_timestamp) VALUES (4, 4500.0)")
    # the crawl writes all four again, twice: only the one without a time gets one
    items = [{"listing_id": lid, "shop_id": 1, "title": f"t{lid}", "last_modified_timestamp": 1}
             for lid in (1, 2, 3, 4, 5)]
    for now in (9000.0, 12000.0):
        with db.transaction(conn):
            write_listings(conn, items, {it["listing_id"]: None for it in items}, now, 0.0, "url_570xN")
    rows = {r[0]: r[1:] for r in conn.execute(
        "SELECT listing_id, first_seen, snapshot_timestamp FROM listings_static")}
    assert rows == {1: (1000.0, 12000.0), 2: (4000.0, 12000.0), 3: (9000.0, 12000.0),
                    4: (4500.0, 12000.0), 5: (9000.0, 12000.0)}
    # an older snapshot stored later (the original's series, adopted after its static row)
    # moves first_seen back to it; a newer one does not move it
    with db.transaction(conn):
        conn.executemany("INSERT INTO listings_dynamic(listing_id, snapshot_timestamp) VALUES (?, ?)",
                         [(4, 2000.0), (1, 8000.0), (2, 0.0)])
    seen = dict(conn.execute("SELECT listing_id, first_seen FROM listings_static"))
    assert seen == {1: 1000.0, 2: 4000.0, 3: 9000.0, 4: 2000.0, 5: 9000.0}
    conn.close()
