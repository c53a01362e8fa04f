"""The ``worker`` stage: batches from ``worker/inbox`` -> results in ``worker/outbox``.

Each batch: check it (a malformed one is moved to ``worker/rejected`` with a rejection result
in the outbox, and the worker goes on), remove backgrounds, compute the five image and two
CLIP text embeddings, commit the result folder in one rename, then drop the batch from the
inbox. On the kill file (or SIGTERM) in the middle of a batch, the staged result is thrown
away and the batch stays untouched in the inbox for the next run. A batch whose result is
already in the outbox (crash between commit and clean-up) is only cleaned up.

A worker never opens the DB: its state lives in ``run/worker.json`` (counters: batches,
images, failed, rejected; info: batch in hand, images/s per step).
"""
from __future__ import annotations

import logging
from typing import Callable

from pipeline.batches import batchfile, results
from pipeline.batches.batchfile import WorkerDirs
# One batch, start to finish, lives in pipeline/models/batch_run.py: the orchestrator's Ray
# actors run the same function (a stage imports no other stage).
from pipeline.models.batch_run import (DONE, REJECTED, SKIPPED, STOPPED, WorkerSettings,
                                       build_embedder, process_batch)

def work(dirs: WorkerDirs, embedder, *, once: bool, checkpoint: Callable[[], bool],
         stop_requested: Callable[[], bool], sleep: Callable[[float], bool], poll_s: float,
         report=None, log: logging.Logger | None = None,
         disk_wait: Callable[[], bool] | None = None) -> dict:
    """The worker loop (plain function: the stage wraps it with its context). ``disk_wait``:
    before each batch, wait while the inbox/outbox volume is below its floor (False: stop)."""
    log = log or logging.getLogger("imageselector.worker")
    dirs.ensure()
    for d in (dirs.inbox, dirs.outbox):
        for name in batchfile.clean_stale(d):
            log.info("removed %s left by an earlier run", d / name)
    for name in results.clean_orphan_kept(dirs.outbox, dirs.inbox):
        log.info("removed %s: its batch is no longer in the inbox", dirs.outbox / name)
    totals = {DONE: 0, REJECTED: 0, STOPPED: 0, SKIPPED: 0}
    while checkpoint():
        batches = batchfile.list_batches(dirs.inbox)
        if not batches:
            if once or not sleep(poll_s):
                break
            continue
        batch_path = batches[0]
        if disk_wait is not None and not disk_wait():
            break
        if report:
            report.start(batch_path.name)
        outcome = process_batch(dirs, batch_path, embedder, should_stop=stop_requested,
                                on_progress=report.images if report else (lambda n: None),
                                log=log)
        totals[outcome] += 1
        if report:
            report.finish(outcome)
        if outcome == STOPPED:
            break
    return totals


class _Report:
    """Heartbeat counters of the stage: batch in hand, images done, images/s per step."""

    def __init__(self, ctx, embedder):
        self.ctx = ctx
        self.embedder = embedder

    def start(self, batch_id: str) -> None:
        self.ctx.set_current(batch_id)
        self.ctx.set_info(batch=batch_id)

    def images(self, n: int) -> None:
        self.ctx.progress(n, counter="images")
        self.ctx.set_info(rates=self.embedder.clock.rates())

    def finish(self, outcome: str) -> None:
        counter = {DONE: "batches", REJECTED: "rejected", SKIPPED: "batches"}.get(outcome)
        if counter:
            self.ctx.progress(1, counter=counter)
        self.ctx.set_info(batch=None, last_outcome=outcome)
        self.ctx.set_current(None)


def add_arguments(parser) -> None:
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images per model call (default: worker.batch_size)")


def run(ctx) -> int:
    embedder = build_embedder(ctx.root, getattr(ctx.args, "batch_size", None))
    dirs = WorkerDirs.under(ctx.root.path)
    settings = WorkerSettings.from_config(ctx.root.config)
    from pipeline.core.diskfloor import DiskFloor

    # no DB here: a block shows in run/worker.json (state blocked, info.disk_low), which the
    # orchestrator's polls and the watch carry to the operator
    floor = DiskFloor(ctx.root, [dirs.inbox, dirs.outbox], stage="worker", log=ctx.log)
    totals = work(dirs, embedder, once=ctx.once, checkpoint=ctx.checkpoint,
                  stop_requested=ctx.stop_requested, sleep=ctx.sleep, poll_s=settings.poll_s,
                  report=_Report(ctx, embedder), log=ctx.log, disk_wait=lambda: floor.wait(ctx))
    ctx.log.info("worker: %s", ", ".join(f"{k} {v}" for k, v in totals.items()))
    return 0
