"""The watch's memory between runs: open conditions (table ``watch_conditions``, schema v4
in pipeline/core/db.py) and since when this root has been watched (``meta`` key
``watch.since``). Every write is one short transaction, retried while the DB is busy."""
from __future__ import annotations

from dataclasses import dataclass

from pipeline.core.db import retry_on_busy, transaction

SINCE_KEY = "watch.since"


@dataclass
class Row:
    key: str
    kind: str
    text: str
    opened_at: float
    seen_at: float
    sent_at: float | None
    alert_id: int | None
    cleared_at: float | None


def _write(conn, sql: str, args: tuple) -> None:
    @retry_on_busy
    def run():
        with transaction(conn):
            conn.execute(sql, args)

    run()


def watching_since(conn, now: float) -> float:
    """The first watch run's time on this root (recorded by the first run)."""
    @retry_on_busy
    def run() -> float:
        with transaction(conn):
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (SINCE_KEY,)).fetchone()
            if row is not None:
                return float(row[0])
            conn.execute("INSERT INTO meta(key, value) VALUES (?, ?)", (SINCE_KEY, repr(float(now))))
            return float(now)

    return run()


def open_rows(conn) -> dict[str, Row]:
    rows = conn.execute("SELECT key, kind, text, opened_at, seen_at, sent_at, alert_id, cleared_at "
                        "FROM watch_conditions").fetchall()
    return {r[0]: Row(*r) for r in rows}


def opened(conn, key: str, kind: str, text: str, now: float) -> None:
    _write(conn, "INSERT INTO watch_conditions(key, kind, text, opened_at, seen_at) VALUES (?,?,?,?,?)",
           (key, kind, text, now, now))


def seen(conn, key: str, text: str, now: float) -> None:
    """Still there (or back before its "ok again" went out): not cleared any more."""
    _write(conn, "UPDATE watch_conditions SET text = ?, seen_at = ?, cleared_at = NULL WHERE key = ?",
           (text, now, key))


def alert_sent(conn, key: str, alert_id: int, now: float) -> None:
    _write(conn, "UPDATE watch_conditions SET sent_at = ?, alert_id = ? WHERE key = ?",
           (now, alert_id, key))


def cleared(conn, key: str, now: float) -> None:
    _write(conn, "UPDATE watch_conditions SET cleared_at = COALESCE(cleared_at, ?) WHERE key = ?",
           (now, key))


def forget(conn, key: str) -> None:
    _write(conn, "DELETE FROM watch_conditions WHERE key = ?", (key,))
