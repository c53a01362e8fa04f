"""The state database: connections, migrations applied, transactions and image states.

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
from pipeline.core.schema import MIGRATIONS, SCHEMA_VERSION

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

# The schema and its migrations: pipeline/core/schema.py.



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
