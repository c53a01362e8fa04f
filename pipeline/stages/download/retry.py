"""Failed downloads tried again by later passes (DECISIONS.md, image_status:
``failed -> discovered`` for download errors other than 404 and the placeholder, after a
backoff, up to a cap; docs/OPERATIONS.md "Parity with the original").

A download that fails (404, 410 and the placeholder are `dead`, never `failed`) is stored with
``retry_at``: download.failed_retry_after_s after the failure, doubled for each earlier pass in
a row that failed it, and ``failed_passes``. Each pass of the download stage starts by moving
the failed images whose ``retry_at`` has come back to `discovered` (so the weekly run counts
them as work; the ones not yet due stay `failed` and are no work). After
download.failed_retry_passes later passes have failed it too, ``retry_at`` stays NULL and the
reason says so: only `imageselector requeue` tries it again. Failures recorded by other stages
(workers, adoption) never get a ``retry_at``, so they are never retried here.
"""
from __future__ import annotations

import sqlite3

from pipeline.core.db import DISCOVERED, FAILED, retry_on_busy, set_image_state, transaction

GAVE_UP = "no more automatic retries"


def plan_failure(reason: str, failed_before: int, now: float, after_s: float,
                 max_passes: int) -> tuple[str, float | None, int]:
    """(reason, retry_at, failed_passes) for an image whose download failed this pass, when
    ``failed_before`` passes in a row had failed it already."""
    passes = failed_before + 1
    if passes <= max_passes:
        return reason, now + after_s * 2 ** failed_before, passes
    tail = (f" (failed on {passes} passes: {GAVE_UP}; `imageselector requeue` tries it again)"
            if max_passes else "")
    return reason + tail, None, passes


def failed_passes_of(conn: sqlite3.Connection, keys: list[tuple[int, int]]) -> dict[tuple[int, int], int]:
    """Each image's count of passes in a row that failed it (inside the caller's transaction)."""
    out = {}
    for lid, iid in keys:
        row = conn.execute("SELECT failed_passes FROM image_status WHERE listing_id = ? "
                           "AND image_id = ?", (lid, iid)).fetchone()
        out[(lid, iid)] = int(row[0]) if row else 0
    return out


@retry_on_busy
def requeue_due(conn: sqlite3.Connection, now: float) -> int:
    """Move the failed downloads whose retry is due back to `discovered`; returns how many.
    The state change goes through set_image_state, so the queue counters follow."""
    with transaction(conn):
        keys = conn.execute("SELECT listing_id, image_id FROM image_status "
                            "WHERE retry_at <= ? AND state = 'failed'", (now,)).fetchall()
        return set_image_state(conn, keys, DISCOVERED, expect=FAILED, now=now,
                               retry_at=None, reason=None, attempts=0)


def due(conn: sqlite3.Connection, at: float) -> int:
    """Failed downloads whose retry is due at ``at`` (still `failed`)."""
    return int(conn.execute("SELECT COUNT(*) FROM image_status WHERE retry_at <= ? "
                            "AND state = 'failed'", (at,)).fetchone()[0])


def waiting(conn: sqlite3.Connection) -> tuple[int, float | None]:
    """(failed downloads waiting for an automatic retry, when the first is due)."""
    n, first = conn.execute("SELECT COUNT(*), min(retry_at) FROM image_status "
                            "WHERE retry_at IS NOT NULL AND state = 'failed'").fetchone()
    return int(n), first
