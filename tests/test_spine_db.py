"""The state DB under real concurrent processes: crash safety, busy retries, queue counters."""
from __future__ import annotations

import os
import random
import signal
import sqlite3
import time

import pytest

from pipeline.core import db, schema


def _fork(fn, *args) -> int:
    """Run fn in a forked child that can never fall back into pytest."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            fn(*args)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    return pid


def _fresh_db(path):
    conn = db.connect(path)
    conn.close()


def _writer_child(path, ack_fd: int, start: int) -> None:
    """Commit one image per transaction and acknowledge each commit on the pipe."""
    conn = db.connect(path, busy_timeout_s=5)
    i = start
    while True:
        with db.transaction(conn):
            db.add_discovered_images(conn, [(i, i)])
            if i % 3 == 0:
                db.set_image_state(conn, [(i, i)], db.DOWNLOADED)
            conn.execute("INSERT INTO listings_static(listing_id, snapshot_timestamp, title) "
                         "VALUES (?, ?, ?)", (i, time.time(), "x" * random.randint(0, 3000)))
        os.write(ack_fd, f"{i}\n".encode())
        i += 1


def test_sigkill_writer_loses_no_acknowledged_write(tmp_path):
    """SQLite's own crash test, as DECISIONS.md asks: ~20 SIGKILLs at random moments."""
    path = tmp_path / "crash.db"
    _fresh_db(path)
    acknowledged: set[int] = set()
    next_id = 0
    rng = random.Random(1234)
    for _round in range(20):
        r, w = os.pipe()
        # the child has everything imported already, so a fork costs milliseconds
        pid = _fork(_writer_child, path, w, next_id)
        os.close(w)
        time.sleep(rng.uniform(0.01, 0.15))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        with os.fdopen(r) as fh:
            got = [int(line) for line in fh.read().splitlines() if line.strip()]
        acknowledged.update(got)
        next_id = (max(got) + 1 if got else next_id) + 1000  # never reuse an id a child may have committed unacknowledged
        conn = db.connect(path)
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        present = {row[0] for row in conn.execute("SELECT listing_id FROM image_status")}
        missing = acknowledged - present
        assert not missing, f"acknowledged writes lost after SIGKILL: {sorted(missing)[:10]}"
        # the trigger-kept counters never drift from the rows, even across crashes
        assert db.queue_depths(conn) == db.count_states_slowly(conn)
        conn.close()
    assert len(acknowledged) > 20  # the children really wrote between kills


def _busy_child(path, worker: int, n: int, err_fd: int) -> None:
    # a tiny busy_timeout makes SQLITE_BUSY frequent, so the retry decorator is exercised
    conn = db.connect(path, busy_timeout_s=0.001)
    errors = 0

    @db.retry_on_busy(total_s=60)
    def write(i: int) -> None:
        with db.transaction(conn):
            db.add_discovered_images(conn, [(worker * 1_000_000 + i, i)])
            # hold the write lock a moment so the other process collides with us
            conn.execute("SELECT COUNT(*) FROM image_status").fetchone()

    for i in range(n):
        try:
            write(i)
        except sqlite3.OperationalError as exc:
            errors += 1
            os.write(err_fd, f"{exc}\n".encode())
    raise SystemExit(0 if errors == 0 else 3)


def test_two_writers_under_retry_decorator_never_see_locked(tmp_path):
    path = tmp_path / "busy.db"
    _fresh_db(path)
    n = 300
    r, w = os.pipe()
    pids = []
    for worker in (1, 2):
        pids.append(_fork(_busy_child, path, worker, n, w))
    os.close(w)
    statuses = [os.waitpid(pid, 0)[1] for pid in pids]
    with os.fdopen(r) as fh:
        escaped = fh.read()
    assert escaped == "", f"errors escaped the retry decorator: {escaped[:500]}"
    assert all(os.waitstatus_to_exitcode(s) == 0 for s in statuses)
    conn = db.connect(path)
    assert conn.execute("SELECT COUNT(*) FROM image_status").fetchone()[0] == 2 * n


def test_without_retry_busy_errors_do_happen(tmp_path):
    """The contrast that shows the previous test can fail: no decorator, busy errors escape."""
    path = tmp_path / "busy2.db"
    _fresh_db(path)
    holder = db.connect(path)
    holder.execute("BEGIN IMMEDIATE")
    other = db.connect(path, busy_timeout_s=0.01)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        with db.transaction(other):
            pass
    holder.execute("ROLLBACK")


def _transition_child(path, seed: int, rounds: int) -> None:
    rng = random.Random(seed)
    conn = db.connect(path, busy_timeout_s=0.01)

    @db.retry_on_busy(total_s=60)
    def step() -> None:
        with db.transaction(conn):
            keys = conn.execute("SELECT listing_id, image_id, state FROM image_status "
                                "ORDER BY random() LIMIT 20").fetchall()
            for lid, iid, state in keys:
                targets = db.TRANSITIONS[state]
                if targets:
                    db.set_image_state(conn, [(lid, iid)], rng.choice(targets), reason="test")
            if rng.random() < 0.3:
                base = rng.randrange(10_000_000)
                db.add_discovered_images(conn, [(base, j) for j in range(5)])
            if rng.random() < 0.1:
                conn.execute("DELETE FROM image_status WHERE state = 'dead' AND image_id % 2 = 0")

    for _ in range(rounds):
        step()


def test_queue_depths_stay_exact_under_concurrent_transitions(tmp_path):
    path = tmp_path / "queues.db"
    conn = db.connect(path)
    with db.transaction(conn):
        db.add_discovered_images(conn, [(i, i) for i in range(2000)])
    pids = []
    for seed in range(3):
        pids.append(_fork(_transition_child, path, seed, 80))
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    depths = db.queue_depths(conn)
    assert depths == db.count_states_slowly(conn)
    # the transitions really moved images through several states
    assert sum(1 for n in depths.values() if n) >= 4


def test_set_image_state_refuses_illegal_transitions(tmp_path):
    conn = db.connect(tmp_path / "t.db")
    with db.transaction(conn):
        db.add_discovered_images(conn, [(1, 1), (1, 2)])
        assert db.set_image_state(conn, [(1, 1)], db.EMBEDDED) == 0  # discovered -> embedded: no
        assert db.set_image_state(conn, [(1, 1)], db.DEAD, reason="404") == 1
        # a tombstone is never re-added by the next crawl
        assert db.add_discovered_images(conn, [(1, 1), (1, 3)]) == 1
    with pytest.raises(ValueError):
        db.set_image_state(conn, [(1, 2)], db.TARRED, expect=db.DISCOVERED)
    assert conn.execute("SELECT state, reason FROM image_status WHERE image_id = 1").fetchone() == ("dead", "404")


def test_corrupt_db_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "bad.db"
    blob = b"this is not sqlite" * 500
    path.write_bytes(blob)
    with pytest.raises(db.DBError, match="corrupt or not an SQLite database"):
        db.connect(path)
    assert path.read_bytes() == blob


def test_newer_schema_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "new.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {schema.SCHEMA_VERSION + 5}")
    conn.execute("CREATE TABLE future(x)")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(db.DBError, match="newer than this program"):
        db.connect(path)
    assert path.read_bytes() == before


def test_migration_is_forward_and_idempotent(tmp_path):
    path = tmp_path / "m.db"
    conn = db.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    conn = db.connect(path)  # a second open changes nothing
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"image_status", "images", "queue_counts", "batches", "stage_runs", "backups",
            "listings_static", "listings_dynamic", "shops_static", "shops_dynamic", "reviews",
            "crawl_units", "sync_state", "taxonomy_static", "taxonomy_dynamic"} <= tables
