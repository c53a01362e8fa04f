"""The DB side of results: one transaction moves a batch of images to downloaded, failed or dead."""
from __future__ import annotations

import sqlite3

from pipeline.core.db import DEAD, DISCOVERED, DOWNLOADED, FAILED, retry_on_busy, set_image_fields, transaction
from pipeline.stages.download.jobs import DONE, FAIL, GONE, Result


@retry_on_busy
def commit_results(conn: sqlite3.Connection, results: list[Result]) -> None:
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
            set_image_fields(conn, [(r.job.listing_id, r.job.image_id, r.job.tries, None)
                                    for r in done], DOWNLOADED, DISCOVERED, ("attempts", "reason"))
        if failed:
            set_image_fields(conn, [(r.job.listing_id, r.job.image_id, r.reason, r.job.tries)
                                    for r in failed], FAILED, DISCOVERED, ("reason", "attempts"))
        if dead:
            set_image_fields(conn, [(r.job.listing_id, r.job.image_id, r.reason, r.job.tries)
                                    for r in dead], DEAD, DISCOVERED, ("reason", "attempts"))
