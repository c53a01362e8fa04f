"""The state database: schema, migrations, connections, transactions and image states.

SQLite in WAL mode. Connections are in autocommit mode; every transaction that may write
starts with BEGIN IMMEDIATE (so a read never has to be upgraded to a write, which is what
gives SQLITE_BUSY_SNAPSHOT), and `retry_on_busy` wraps whole transactions. Queue depths are
kept in `queue_counts` by triggers, in the same transaction as the change, so reading them
is O(1) however many images there are. docs/data_structure.md explains every table.
"""
from __future__ import annotations

import functools
import random
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

from pipeline.core.errors import UserError

# image_status states (DECISIONS.md, image_status).
DISCOVERED = "discovered"
DOWNLOADED = "downloaded"
BATCHED = "batched"
EMBEDDED = "embedded"
TARRED = "tarred"
FAILED = "failed"
DEAD = "dead"
IMAGE_STATES = (DISCOVERED, DOWNLOADED, BATCHED, EMBEDDED, TARRED, FAILED, DEAD)

# Allowed transitions (DECISIONS.md); `set_image_state` refuses anything else.
TRANSITIONS: dict[str, tuple[str, ...]] = {
    DISCOVERED: (DOWNLOADED, FAILED, DEAD),
    DOWNLOADED: (BATCHED, FAILED, DEAD),
    BATCHED: (EMBEDDED, FAILED, DOWNLOADED),
    EMBEDDED: (TARRED,),
    TARRED: (),
    FAILED: (DISCOVERED,),
    DEAD: (),
}

DEFAULT_BUSY_TIMEOUT_S = 10.0

# ---------------------------------------------------------------------------
# Schema. Each entry of MIGRATIONS brings the DB from version i to i+1; PRAGMA
# user_version holds the version. Never edit a released migration: append a new one.
# ---------------------------------------------------------------------------
_V1 = """
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT
);

-- Taxonomy: static description of each node, and a time series of its listing counts.
CREATE TABLE taxonomy_static (
    taxonomy_id   INTEGER PRIMARY KEY,
    parent_id     INTEGER,
    name          TEXT NOT NULL,
    level         INTEGER,
    full_path_ids TEXT,              -- JSON list of ids from the root
    is_leaf       INTEGER NOT NULL DEFAULT 0,
    fetched_at    REAL NOT NULL
);
CREATE TABLE taxonomy_dynamic (
    id                 INTEGER PRIMARY KEY,
    taxonomy_id        INTEGER NOT NULL,
    snapshot_timestamp REAL NOT NULL,
    listing_count      INTEGER
);
CREATE INDEX taxonomy_dynamic_node ON taxonomy_dynamic(taxonomy_id, snapshot_timestamp);

-- Listings: one static row, and a time series of the fields that change.
CREATE TABLE listings_static (
    listing_id            INTEGER PRIMARY KEY,
    snapshot_timestamp    REAL NOT NULL,
    shop_id               INTEGER,
    user_id               INTEGER,
    title                 TEXT,
    description           TEXT,
    url                   TEXT,
    creation_timestamp    INTEGER,
    is_customizable       INTEGER,
    is_personalizable     INTEGER,
    listing_type          TEXT,
    tags                  TEXT,      -- JSON list
    materials             TEXT,      -- JSON list
    style                 TEXT,      -- JSON list
    production_partners   TEXT,      -- JSON list
    processing_min        INTEGER,
    processing_max        INTEGER,
    who_made              TEXT,
    when_made             TEXT,
    item_weight           REAL,
    item_weight_unit      TEXT,
    item_length           REAL,
    item_width            REAL,
    item_height           REAL,
    item_dimensions_unit  TEXT,
    should_auto_renew     INTEGER,
    language              TEXT,
    taxonomy_id           INTEGER,
    last_dynamic_ts       REAL       -- time of the newest listings_dynamic row
);
CREATE INDEX listings_static_shop ON listings_static(shop_id);
CREATE INDEX listings_static_dynamic_ts ON listings_static(last_dynamic_ts);
CREATE TABLE listings_dynamic (
    id                  INTEGER PRIMARY KEY,
    listing_id          INTEGER NOT NULL,
    snapshot_timestamp  REAL NOT NULL,
    state               TEXT,
    ending_timestamp    INTEGER,
    last_modified_timestamp INTEGER,
    quantity            INTEGER,
    num_favorers        INTEGER,
    views               INTEGER,
    price_amount        INTEGER,
    price_divisor       INTEGER,
    price_currency      TEXT,
    UNIQUE (listing_id, snapshot_timestamp)
);

-- Shops: static row (with the review counts that decide a review fetch) and a time series.
CREATE TABLE shops_static (
    shop_id                   INTEGER PRIMARY KEY,
    snapshot_timestamp        REAL NOT NULL,
    shop_name                 TEXT,
    user_id                   INTEGER,
    title                     TEXT,
    create_date               INTEGER,
    url                       TEXT,
    currency_code             TEXT,
    is_shop_us_based          INTEGER,
    shipping_from_country_iso TEXT,
    shop_location_country_iso TEXT,
    last_dynamic_ts           REAL,
    last_activity_ts          REAL,  -- newest listing activity seen for this shop
    prev_review_count         INTEGER,
    curr_review_count         INTEGER
);
CREATE TABLE shops_dynamic (
    id                      INTEGER PRIMARY KEY,
    shop_id                 INTEGER NOT NULL,
    snapshot_timestamp      REAL NOT NULL,
    update_date             INTEGER,
    listing_active_count    INTEGER,
    accepts_custom_requests INTEGER,
    num_favorers            INTEGER,
    transaction_sold_count  INTEGER,
    review_average          REAL,
    review_count            INTEGER,
    UNIQUE (shop_id, snapshot_timestamp)
);
CREATE TABLE reviews (
    shop_id           INTEGER NOT NULL,
    listing_id        INTEGER NOT NULL,
    transaction_id    INTEGER,
    buyer_user_id     INTEGER,
    rating            INTEGER,
    review            TEXT,
    language          TEXT,
    create_timestamp  INTEGER NOT NULL,
    updated_timestamp INTEGER,
    UNIQUE (shop_id, listing_id, create_timestamp)
);

-- Crawl progress: one row per crawl unit (taxonomy, price band); the cursor is `next_offset`.
CREATE TABLE crawl_units (
    unit_id      INTEGER PRIMARY KEY,
    taxonomy_id  INTEGER NOT NULL,
    min_price    REAL NOT NULL,
    max_price    REAL NOT NULL,
    total_count  INTEGER,          -- Etsy's `count` for the unit at its last page
    next_offset  INTEGER NOT NULL DEFAULT 0,
    exhausted    INTEGER NOT NULL DEFAULT 0,
    split_from   INTEGER,          -- a unit over 12,000 listings is split; its parts name it
    pass_no      INTEGER NOT NULL DEFAULT 0,
    updated_at   REAL,
    UNIQUE (taxonomy_id, min_price, max_price)
);
CREATE TABLE sync_state (
    key   TEXT PRIMARY KEY,
    value TEXT                     -- JSON
);

-- Images: what Etsy says about each image (rank 1 is the primary) and what we measured.
CREATE TABLE images (
    listing_id   INTEGER NOT NULL,
    image_id     INTEGER NOT NULL,
    rank         INTEGER,
    is_primary   INTEGER NOT NULL DEFAULT 0,
    url          TEXT,               -- the URL the downloader fetches (url_570xN by default)
    url_full     TEXT,
    full_width   INTEGER,
    full_height  INTEGER,
    hex_code     TEXT,
    created_timestamp INTEGER,
    bytes        INTEGER,            -- measured after download
    width        INTEGER,
    height       INTEGER,
    sha256       TEXT,
    PRIMARY KEY (listing_id, image_id)
) WITHOUT ROWID;
CREATE INDEX images_primary ON images(listing_id) WHERE is_primary = 1;

-- Where each image is in the pipeline. One row per image; queue_counts mirrors the states.
CREATE TABLE image_status (
    listing_id  INTEGER NOT NULL,
    image_id    INTEGER NOT NULL,
    state       TEXT NOT NULL CHECK (state IN
                ('discovered','downloaded','batched','embedded','tarred','failed','dead')),
    reason      TEXT,                -- why failed / dead
    attempts    INTEGER NOT NULL DEFAULT 0,
    batch_id    INTEGER,
    shard       INTEGER,
    shard_row   INTEGER,
    global_row  INTEGER,
    tar_name    TEXT,
    tar_offset  INTEGER,
    updated_at  REAL NOT NULL,
    PRIMARY KEY (listing_id, image_id)
) WITHOUT ROWID;
CREATE INDEX image_status_state ON image_status(state, updated_at);
CREATE INDEX image_status_batch ON image_status(batch_id) WHERE batch_id IS NOT NULL;
CREATE INDEX image_status_global_row ON image_status(global_row) WHERE global_row IS NOT NULL;

CREATE TABLE queue_counts (
    state TEXT PRIMARY KEY,
    n     INTEGER NOT NULL
);
INSERT INTO queue_counts(state, n) VALUES
    ('discovered',0),('downloaded',0),('batched',0),('embedded',0),('tarred',0),('failed',0),('dead',0);
CREATE TRIGGER image_status_ins AFTER INSERT ON image_status BEGIN
    UPDATE queue_counts SET n = n + 1 WHERE state = NEW.state;
END;
CREATE TRIGGER image_status_del AFTER DELETE ON image_status BEGIN
    UPDATE queue_counts SET n = n - 1 WHERE state = OLD.state;
END;
CREATE TRIGGER image_status_upd AFTER UPDATE OF state ON image_status
WHEN OLD.state <> NEW.state BEGIN
    UPDATE queue_counts SET n = n - 1 WHERE state = OLD.state;
    UPDATE queue_counts SET n = n + 1 WHERE state = NEW.state;
END;

-- Batches sent to workers by the orchestrator: a lease per batch.
CREATE TABLE batches (
    batch_id      INTEGER PRIMARY KEY,
    worker        TEXT,
    state         TEXT NOT NULL,     -- prepared, shipped, running, returned, imported, expired, failed
    n_images      INTEGER NOT NULL,
    lease_expires REAL,
    created_at    REAL NOT NULL,
    shipped_at    REAL,
    finished_at   REAL,
    imported_at   REAL,
    shard         INTEGER,
    first_row     INTEGER,
    fingerprint   TEXT,
    error         TEXT
);
CREATE INDEX batches_state ON batches(state);

-- Every stage run: its start and its exit (a crash is recorded by the next start).
CREATE TABLE stage_runs (
    run_id     INTEGER PRIMARY KEY,
    stage      TEXT NOT NULL,
    host       TEXT NOT NULL,
    pid        INTEGER NOT NULL,
    started_at REAL NOT NULL,
    ended_at   REAL,
    exit_code  INTEGER,
    outcome    TEXT,                 -- ok, failed, stopped, crashed
    reason     TEXT,
    counters   TEXT                  -- JSON
);
CREATE INDEX stage_runs_stage ON stage_runs(stage, started_at);

-- Backups and mirrors: one row per attempt.
CREATE TABLE backups (
    backup_id   INTEGER PRIMARY KEY,
    target      TEXT NOT NULL,
    kind        TEXT NOT NULL,        -- snapshot, mirror, mirror-verify
    started_at  REAL NOT NULL,
    finished_at REAL,
    ok          INTEGER,
    verified    INTEGER NOT NULL DEFAULT 0,
    size_bytes  INTEGER,
    path        TEXT,
    error       TEXT
);
CREATE INDEX backups_target ON backups(target, started_at);

-- Alerts sent (or not) to the operator, for the console.
CREATE TABLE alerts (
    alert_id INTEGER PRIMARY KEY,
    at       REAL NOT NULL,
    kind     TEXT NOT NULL,
    text     TEXT NOT NULL,
    sent     INTEGER NOT NULL DEFAULT 0,
    error    TEXT
);
CREATE INDEX alerts_at ON alerts(at);
"""

# v2: the weekly run's steps (pipeline/stages/runner/runner.py).
_V2 = """
CREATE TABLE runner_steps (
    run_started REAL NOT NULL,       -- identifies the run
    step        TEXT NOT NULL,
    stage       TEXT NOT NULL,
    phase       INTEGER NOT NULL,
    started_at  REAL,
    ended_at    REAL,
    outcome     TEXT,                -- ok, failed, stopped, crashed, skipped, refused
    exit_code   INTEGER,
    reason      TEXT
);
CREATE INDEX runner_steps_run ON runner_steps(run_started);
"""

# v3: what the schedule ran when, and with what result (pipeline/core/schedule.py).
_V3 = """
CREATE TABLE IF NOT EXISTS schedule_runs (
    run_id      INTEGER PRIMARY KEY,
    job         TEXT NOT NULL,
    trigger     TEXT NOT NULL,          -- cron, launchd, run-due, manual
    started_at  REAL NOT NULL,
    finished_at REAL,
    exit_code   INTEGER,
    outcome     TEXT,                   -- ok, failed, busy, interrupted
    step        TEXT,
    pid         INTEGER,
    output_tail TEXT
);
CREATE INDEX IF NOT EXISTS schedule_runs_job ON schedule_runs(job, started_at);
"""

# v4: the watch job's open conditions (pipeline/watch/store.py), so separate `watch --once`
# runs alert once per condition and send one "ok again" when it clears.
_V4 = """
CREATE TABLE IF NOT EXISTS watch_conditions (
    key        TEXT PRIMARY KEY,        -- kind:thing@host, stable from run to run
    kind       TEXT NOT NULL,           -- the alert kind
    text       TEXT NOT NULL,           -- the alert as last evaluated
    opened_at  REAL NOT NULL,           -- first seen
    seen_at    REAL NOT NULL,           -- last seen by a watch run
    sent_at    REAL,                    -- its alert delivered (NULL: not yet, tried again next run)
    alert_id   INTEGER,                 -- the alerts row of that alert
    cleared_at REAL                     -- cleared, its "ok again" not delivered yet
);
"""

# v5: the original's rules (ORIGINAL_SYSTEM.md, docs/OPERATIONS.md "Parity with the original").
# image_status: a download failure is retried by a later download pass after a backoff, up to a
# cap (pipeline/stages/download/retry.py): `retry_at` is when it is due (NULL: never by itself,
# only by `requeue`), `failed_passes` how many passes in a row failed it. listings_static:
# `first_seen`, set once and never overwritten by a later sighting: rows from before v5 take
# their oldest snapshot, rows inserted without it (adoption) their snapshot time, and an older
# snapshot stored later (the original's time series, adopted) moves it back to that time.
_V5 = """
ALTER TABLE image_status ADD COLUMN retry_at REAL;
ALTER TABLE image_status ADD COLUMN failed_passes INTEGER NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS image_status_retry ON image_status(retry_at) WHERE retry_at IS NOT NULL;
ALTER TABLE listings_static ADD COLUMN first_seen REAL;
UPDATE listings_static SET first_seen = (SELECT min(t) FROM (
    SELECT nullif(listings_static.snapshot_timestamp, 0) AS t
    UNION ALL SELECT d.snapshot_timestamp FROM listings_dynamic d
    WHERE d.listing_id = listings_static.listing_id AND d.snapshot_timestamp > 0));
CREATE TRIGGER IF NOT EXISTS listings_static_first_seen AFTER INSERT ON listings_static
WHEN NEW.first_seen IS NULL BEGIN
    UPDATE listings_static SET first_seen = nullif(NEW.snapshot_timestamp, 0)
    WHERE listing_id = NEW.listing_id;
END;
CREATE TRIGGER IF NOT EXISTS listings_dynamic_first_seen AFTER INSERT ON listings_dynamic
WHEN NEW.snapshot_timestamp > 0 BEGIN
    UPDATE listings_static SET first_seen = NEW.snapshot_timestamp
    WHERE listing_id = NEW.listing_id
      AND (first_seen IS NULL OR first_seen > NEW.snapshot_timestamp);
END;
"""

# v6: the reviews rule (pipeline/stages/sync/reviews.py): when a shop's reviews were last
# read completely (or it was found gone), so a resumed pass does not ask again.
_V6 = """
ALTER TABLE shops_static ADD COLUMN reviews_checked_at REAL;
"""

MIGRATIONS: list[str] = [_V1, _V2, _V3, _V4, _V5, _V6]
SCHEMA_VERSION = len(MIGRATIONS)


class DBError(UserError):
    """The DB cannot be used as it is (corrupt, too new, unreadable)."""


T = TypeVar("T")


def _is_busy(exc: BaseException) -> bool:
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def retry_on_busy(func: Callable[..., T] | None = None, *, total_s: float = 60.0,
                  first_sleep_s: float = 0.01, max_sleep_s: float = 1.0) -> Callable[..., T]:
    """Retry a whole transaction while the DB is busy (BUSY, BUSY_SNAPSHOT, LOCKED).

    Wrap a function that opens and commits its own transaction, so a retry replays the
    whole unit. Jittered exponential backoff; gives up with the last error after total_s.
    """

    def decorate(fn: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            deadline = time.monotonic() + total_s
            sleep = first_sleep_s
            while True:
                try:
                    return fn(*args, **kwargs)
                except sqlite3.OperationalError as exc:
                    if not _is_busy(exc) or time.monotonic() >= deadline:
                        raise
                time.sleep(random.uniform(0, sleep))
                sleep = min(max_sleep_s, sleep * 2)

        return wrapper

    if func is not None:
        return decorate(func)
    return decorate


def connect(path: str | Path, busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S,
            synchronous: str = "FULL", migrate: bool = True,
            check_same_thread: bool = True) -> sqlite3.Connection:
    """Open the state DB: autocommit, WAL, busy_timeout; create or migrate its schema.

    A corrupt file, or one made by a newer version of this program, is refused with one
    clear message and left untouched.
    """
    path = Path(path)
    if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
        raise UserError(f"db.synchronous must be OFF, NORMAL, FULL or EXTRA, got {synchronous!r}")
    try:
        conn = sqlite3.connect(str(path), timeout=busy_timeout_s, isolation_level=None,
                               check_same_thread=check_same_thread)
    except sqlite3.OperationalError as exc:
        raise DBError(f"DB {path}: cannot open ({exc})") from None
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise DBError(f"DB {path}: schema version {version} is newer than this program's "
                          f"({SCHEMA_VERSION}); upgrade imageselector (the DB was not changed)")
        if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            retry_on_busy(lambda: conn.execute("PRAGMA journal_mode = WAL"))()
        conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
        conn.execute("PRAGMA foreign_keys = ON")
        if migrate and version < SCHEMA_VERSION:
            _migrate(conn, path)
    except sqlite3.DatabaseError as exc:
        conn.close()
        if isinstance(exc, sqlite3.OperationalError) and _is_busy(exc):
            raise
        raise DBError(f"DB {path}: corrupt or not an SQLite database ({exc}); "
                      f"the file was not changed") from None
    except BaseException:
        conn.close()
        raise
    return conn


@retry_on_busy
def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    with transaction(conn):
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        for index in range(version, SCHEMA_VERSION):
            for statement in _split_sql(MIGRATIONS[index]):
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _split_sql(script: str) -> Iterator[str]:
    """Split a migration into statements (executescript would commit our transaction)."""
    buffer: list[str] = []
    for line in script.splitlines():
        if line.strip().startswith("--") and not buffer:
            continue
        buffer.append(line)
        statement = "\n".join(buffer).strip()
        if statement and sqlite3.complete_statement(statement):
            yield statement
            buffer = []
    rest = "\n".join(buffer).strip()
    if rest:
        yield rest


def open_db(root, **kwargs) -> sqlite3.Connection:
    """Connect to a root's DB with the root's configured busy timeout and sync level."""
    cfg = root.config
    return connect(root.db_path, busy_timeout_s=cfg.get("db.busy_timeout_s"),
                   synchronous=cfg.get("db.synchronous"), **kwargs)


@contextmanager
def transaction(conn: sqlite3.Connection, mode: str = "IMMEDIATE") -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception."""
    conn.execute(f"BEGIN {mode}")
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


@contextmanager
def read_snapshot(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A consistent read across several queries (BEGIN DEFERRED; never writes)."""
    conn.execute("BEGIN")
    try:
        yield conn
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")


# ---------------------------------------------------------------------------
# Image states
# ---------------------------------------------------------------------------
_STATE_FIELDS = ("reason", "attempts", "batch_id", "shard", "shard_row", "global_row",
                 "tar_name", "tar_offset", "retry_at", "failed_passes")


def add_discovered_images(conn: sqlite3.Connection, keys: Iterable[tuple[int, int]],
                          now: float | None = None) -> int:
    """Insert new images as `discovered`; a known image (any state, dead included) is left
    alone, so a tombstone stops the next crawl re-adding it. Call inside a transaction."""
    now = time.time() if now is None else now
    cur = conn.executemany(
        "INSERT OR IGNORE INTO image_status(listing_id, image_id, state, updated_at) "
        "VALUES (?, ?, 'discovered', ?)",
        ((int(lid), int(iid), now) for lid, iid in keys))
    return max(cur.rowcount, 0)


def set_image_state(conn: sqlite3.Connection, keys: Iterable[tuple[int, int]], state: str,
                    expect: str | Iterable[str] | None = None, now: float | None = None,
                    **fields) -> int:
    """Move images to `state` (inside the caller's transaction). Only rows whose current
    state may go to `state` (and is in `expect`, when given) change; returns how many did.
    Extra keyword fields (reason, batch_id, shard, shard_row, global_row, tar_name,
    tar_offset, attempts, retry_at, failed_passes) are set in the same statement."""
    if state not in IMAGE_STATES:
        raise ValueError(f"unknown image state {state!r}")
    unknown = set(fields) - set(_STATE_FIELDS)
    if unknown:
        raise ValueError(f"unknown image_status field(s): {', '.join(sorted(unknown))}")
    sources = [s for s, targets in TRANSITIONS.items() if state in targets]
    if expect is not None:
        wanted = {expect} if isinstance(expect, str) else set(expect)
        bad = wanted - set(sources)
        if bad:
            raise ValueError(f"transition {sorted(bad)} -> {state} is not allowed")
        sources = [s for s in sources if s in wanted]
    now = time.time() if now is None else now
    assignments = ", ".join([f"{name} = ?" for name in fields] + ["state = ?", "updated_at = ?"])
    placeholders = ",".join("?" * len(sources))
    sql = (f"UPDATE image_status SET {assignments} "
           f"WHERE listing_id = ? AND image_id = ? AND state IN ({placeholders})")
    values = list(fields.values())
    changed = 0
    for lid, iid in keys:
        cur = conn.execute(sql, (*values, state, now, int(lid), int(iid), *sources))
        changed += cur.rowcount
    return changed


def set_image_fields(conn: sqlite3.Connection, rows: Iterable[tuple], state: str,
                     expect: str | Iterable[str], field_names: tuple[str, ...],
                     now: float | None = None) -> int:
    """Like set_image_state with per-row values: rows are (listing_id, image_id, *values)."""
    unknown = set(field_names) - set(_STATE_FIELDS)
    if unknown or state not in IMAGE_STATES:
        raise ValueError(f"bad fields or state: {sorted(unknown)} {state!r}")
    wanted = [expect] if isinstance(expect, str) else list(expect)
    for source in wanted:
        if state not in TRANSITIONS[source]:
            raise ValueError(f"transition {source} -> {state} is not allowed")
    now = time.time() if now is None else now
    assignments = ", ".join([f"{name} = ?" for name in field_names] + ["state = ?", "updated_at = ?"])
    placeholders = ",".join("?" * len(wanted))
    sql = (f"UPDATE image_status SET {assignments} "
           f"WHERE listing_id = ? AND image_id = ? AND state IN ({placeholders})")
    changed = 0
    for row in rows:
        lid, iid, *values = row
        cur = conn.execute(sql, (*values, state, now, int(lid), int(iid), *wanted))
        changed += cur.rowcount
    return changed


def queue_depths(conn: sqlite3.Connection) -> dict[str, int]:
    """Images per state, in O(1) (the trigger-kept counters)."""
    counts = dict(conn.execute("SELECT state, n FROM queue_counts").fetchall())
    return {state: int(counts.get(state, 0)) for state in IMAGE_STATES}


def count_states_slowly(conn: sqlite3.Connection) -> dict[str, int]:
    """COUNT(*) per state: for checks and tests, never for a live display."""
    counts = dict(conn.execute("SELECT state, COUNT(*) FROM image_status GROUP BY state").fetchall())
    return {state: int(counts.get(state, 0)) for state in IMAGE_STATES}


def get_state(conn: sqlite3.Connection, key: str, default=None):
    import json

    row = conn.execute("SELECT value FROM sync_state WHERE key = ?", (key,)).fetchone()
    return default if row is None else json.loads(row[0])


def put_state(conn: sqlite3.Connection, key: str, value) -> None:
    """Upsert a JSON value in sync_state (inside the caller's transaction)."""
    import json

    conn.execute("INSERT INTO sync_state(key, value) VALUES (?, ?) "
                 "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, json.dumps(value)))
