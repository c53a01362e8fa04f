"""The DB side of results: one transaction moves a batch of images to downloaded, failed or dead."""
from __future__ import annotations

import sqlite3
import time

from pipeline.core.db import DEAD, DISCOVERED, DOWNLOADED, FAILED, retry_on_busy, set_image_fields, transaction
from pipeline.stages.download.jobs import DONE, FAIL, GONE, Result
from pipeline.stages.download.retry import failed_passes_of, plan_failure


@retry_on_busy
def commit_results(conn: sqlite3.Connection, results: list[Result], settings,
                   now: float | None = None) -> None:
    """``settings``: the download Settings (failed_retry_after_s, failed_retry_passes decide
    when a failure is tried again, pipeline/stages/download/retry.py)."""
    now = time.time() if now is None else now
    done = [r for r in results if r.kind == DONE]
    failed = [r for r in results if r.kind == FAIL]
    dead = [r for r in results if r.kind == GONE]
    with transaction(conn):
        if done:
            conn.executemany(
                "UPDATE images SET bytes = ?, width = ?, height = ?, sha256 = ? "
                "WHERE listing_id = ? AND image_id = ?",
                [(r.nbytes, r.width, r.height, r.sha256, r.job.listing_id, r.job.image_id)
                 for r in done])
            set_image_fields(conn, [(r.job.listing_id, r.job.image_id, r.job.tries, None, 0)
                                    for r in done], DOWNLOADED, DISCOVERED,
                             ("attempts", "reason", "failed_passes"), now=now)
        if failed:
            before = failed_passes_of(conn, [r.job.key for r in failed])
            rows = []
            for r in failed:
                reason, retry_at, passes = plan_failure(
                    r.reason, before[r.job.key], now, settings.failed_retry_after_s,
                    settings.failed_retry_passes)
                rows.append((r.job.listing_id, r.job.image_id, reason, r.job.tries, retry_at, passes))
            set_image_fields(conn, rows, FAILED, DISCOVERED,
                             ("reason", "attempts", "retry_at", "failed_passes"), now=now)
        if dead:
            set_image_fields(conn, [(r.job.listing_id, r.job.image_id, r.reason, r.job.tries)
                                    for r in dead], DEAD, DISCOVERED, ("reason", "attempts"), now=now)
