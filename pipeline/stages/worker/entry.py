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
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pipeline.batches import batchfile, results
from pipeline.core.config import config_values, toml_defaults
from pipeline.batches.batchfile import BatchError, WorkerDirs

DONE, REJECTED, STOPPED, SKIPPED = "done", "rejected", "stopped", "skipped"


@dataclass(frozen=True)
@toml_defaults("worker")
class WorkerSettings:
    batch_size: int
    prep_threads: int
    prefetch_images: int
    poll_s: float

    @classmethod
    def from_config(cls, config) -> "WorkerSettings":
        return cls(**config_values(cls, config))


def build_embedder(root, batch_size: int | None = None):
    """Models and background removal as the root's configuration says (nothing loaded yet)."""
    from pipeline.models.bgremove import BackgroundRemover, settings_from_config
    from pipeline.models.embed import Embedder
    from pipeline.models.loading import ModelSet
    from pipeline.models.registry import ModelSettings

    config = root.config
    model_settings = ModelSettings.from_config(config, root_profile=root.profile)
    models = ModelSet(model_settings)
    models.check_weights()
    remover = BackgroundRemover(settings_from_config(config, model_settings.profile))
    ws = WorkerSettings.from_config(config)
    return Embedder(models, remover, batch_size=batch_size or ws.batch_size, prep_threads=ws.prep_threads,
                    prefetch=ws.prefetch_images)


def reject(dirs: WorkerDirs, batch_path: Path, reason: str) -> Path:
    """Move a bad batch aside (with the reason beside it) and tell the orchestrator."""
    target = dirs.rejected / batch_path.name
    if target.exists():
        target = dirs.rejected / f"{batch_path.name}.{int(time.time())}"
    results.write_rejection(dirs.outbox, batch_path.name, reason)
    (batch_path / "REJECTED.txt").write_text(reason + "\n", encoding="utf-8")
    shutil.move(str(batch_path), str(target))
    return target


def process_batch(dirs: WorkerDirs, batch_path: Path, embedder,
                  should_stop: Callable[[], bool] = lambda: False,
                  on_progress: Callable[[int], None] = lambda n: None,
                  log: logging.Logger | None = None) -> str:
    """One batch, start to finish. Returns DONE, REJECTED, STOPPED or SKIPPED."""
    from pipeline.models.embed import Job, Stopped

    log = log or logging.getLogger("imageselector.worker")
    batch_id = batch_path.name
    existing = dirs.outbox / batch_id
    if (existing / results.RESULT).is_file():
        log.info("batch %s already has a result: removing it from the inbox", batch_id)
        batchfile.remove_tree(batch_path)
        batchfile.remove_tree(results.kept_path(dirs.outbox, batch_id))
        return SKIPPED
    try:
        batch = batchfile.read_batch(batch_path)
    except BatchError as exc:
        log.error("rejected: %s", exc)
        batchfile.remove_tree(results.kept_path(dirs.outbox, batch_id))
        reject(dirs, batch_path, str(exc))
        return REJECTED
    fingerprint = embedder.models.fingerprint()
    writer = results.ResultWriter(dirs.outbox, batch_id)
    earlier, dropped = writer.take_kept(batch.rows, fingerprint)
    if dropped:
        log.warning("batch %s: rows kept by a stopped run not used (%s): embedding it all",
                    batch_id, dropped)
    done = set(earlier.ok) | {i for i, _ in earlier.failed} if earlier else set()
    if earlier:
        log.info("batch %s: resuming: %d rows embedded and %d failed before the stop, %d to go",
                 batch_id, len(earlier.ok), len(earlier.failed), len(batch.rows) - len(done))
    jobs = [Job(i, row, batch.image_path(row)) for i, row in enumerate(batch.rows) if i not in done]
    texts = [row.text for row in batch.rows]
    try:
        out = embedder.run(jobs, texts, writer, should_stop=should_stop, on_progress=on_progress)
        out = out.merged(earlier)
        failed = [(batch.rows[i], reason) for i, reason in out.failed]
        for row, reason in failed:
            log.warning("batch %s: image %s failed: %s", batch_id, row.image_name, reason)
        writer.commit([batch.rows[i] for i in out.ok], out.vectors, failed,
                      fingerprint, embedder.models.fingerprint_detail(),
                      extra={"seconds": {k: round(v, 3) for k, v in out.seconds.items()},
                             "wall_s": round(out.wall_s, 3)})
    except Stopped as stop:
        finished = stop.finished.merged(earlier) if stop.finished else earlier
        if finished and (finished.ok or finished.failed):
            writer.keep(batch.rows, finished, fingerprint)
            log.info("batch %s: stop requested; %d of %d rows finished and kept for the next "
                     "run, the batch left in the inbox", batch_id,
                     len(finished.ok) + len(finished.failed), len(batch.rows))
        else:
            writer.abort()
            log.info("batch %s: stop requested; left untouched in the inbox", batch_id)
        return STOPPED
    except BaseException:
        writer.abort()
        raise
    batchfile.remove_tree(batch_path)
    log.info("batch %s: %d embedded, %d failed in %.1f s", batch_id, len(out.ok),
             len(out.failed), out.wall_s)
    return DONE


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
