"""A small real stage that proves the stage contract: each unit of work waits ``--work-s``
and then moves up to ``--batch`` discovered images to downloaded in one transaction (a fake
download), so queues, heartbeats, kill files and pauses can be tested for real."""
from __future__ import annotations

import os
import time


def add_arguments(parser) -> None:
    parser.add_argument("--work-s", type=float, default=0.2, help="seconds per unit of work")
    parser.add_argument("--batch", type=int, default=1, help="images moved per unit")
    parser.add_argument("--units", type=int, default=0, help="stop after this many units (0: no limit)")
    parser.add_argument("--ignore-kill", action="store_true",
                        help="misbehave: ignore the kill file and SIGTERM (tests the stop ladder)")
    parser.add_argument("--fail-after", type=int, default=0,
                        help="fail (exit 1) after this many units (0: never)")


def _move_batch(conn, batch: int) -> int:
    from pipeline.core.db import DISCOVERED, DOWNLOADED, retry_on_busy, set_image_state, transaction

    @retry_on_busy
    def unit() -> int:
        with transaction(conn):
            keys = conn.execute("SELECT listing_id, image_id FROM image_status WHERE state = ? "
                                "LIMIT ?", (DISCOVERED, batch)).fetchall()
            return set_image_state(conn, keys, DOWNLOADED, expect=DISCOVERED)

    return unit()


def run(ctx) -> int:
    args = ctx.args
    work_s = getattr(args, "work_s", 0.2)
    batch = getattr(args, "batch", 1)
    units = getattr(args, "units", 0)
    ignore_kill = getattr(args, "ignore_kill", False)
    fail_after = getattr(args, "fail_after", 0)
    if ignore_kill:
        import signal

        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    conn = ctx.db()
    done = 0
    while True:
        if not ignore_kill and not ctx.checkpoint():
            ctx.log.info("kill file seen after %d units", done)
            return 0
        time.sleep(work_s)
        moved = _move_batch(conn, batch)
        done += 1
        ctx.progress(1, current=f"unit {done}")
        ctx.progress(moved, counter="images")
        if fail_after and done >= fail_after:
            ctx.set_info(failure=f"selftest failed on purpose after {done} units")
            return 1
        if units and done >= units:
            return 0
        if ctx.once and moved == 0:
            return 0
        if ignore_kill:
            ctx.set_info(pid=os.getpid())
