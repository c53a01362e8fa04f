"""The image downloader: claims `discovered` images, fetches them in parallel, verifies them,
renames each into images/imagedownload/{listing_id}_{image_id}.jpg and records it.

Threads do the network, the check and the file; the main thread alone owns the DB. It claims
images in memory (the stage is single-instance, so a claim needs no DB write), hands them to
the workers, and commits their results in batches. Order of events for one image:

    temp file written (and fsynced) -> verified -> renamed into place -> DB commit

so a `downloaded` row always has its complete file. A crash can leave a temp file (removed
on the next start) or a final file whose row is still `discovered`: the next run finds that
file when it claims the image, re-verifies it, and adopts it (or removes it and downloads
again). No file is ever half-written under its final name.

This module is the main loop (claims, retries, commits, stop and pause); the parts it drives:
settings.py (Settings), jobs.py (Job, Result, the result kinds), fetch.py (one image),
pool.py (the worker threads), commit.py (the DB transaction), files.py (names, temp files).
"""
from __future__ import annotations

import heapq
import logging
import queue
import random
import sqlite3
import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable

from pipeline.core.errors import UserError
from pipeline.core.fsutil import fsync_dir
from pipeline.stages.download.commit import commit_results
from pipeline.stages.download.fetch import Fetcher
from pipeline.stages.download.files import remove_temp_files
from pipeline.stages.download.jobs import DONE, FAIL, GONE, LOCAL_ERROR, RELEASED, RETRY, Job, Result
from pipeline.stages.download.pool import WorkerPool
from pipeline.stages.download.retry import requeue_due
from pipeline.stages.download.settings import Settings


class Downloader:
    """The main loop: claims, feeds the workers, retries, commits. Owns the DB connection."""

    def __init__(self, conn: sqlite3.Connection, download_dir: Path, settings: Settings,
                 log: logging.Logger, ctx, pause_requested: Callable[[], bool] = lambda: False,
                 floor=None):
        self.conn = conn
        self.dir = Path(download_dir)
        self.settings = settings
        self.log = log
        self.ctx = ctx
        self.pause_requested = pause_requested
        self.floor = floor          # pipeline.core.diskfloor.DiskFloor (None: no floor)
        self.abort = threading.Event()
        self.claimed: set[tuple[int, int]] = set()
        self.fresh: deque[Job] = deque()
        self.retries: list[Job] = []          # heap by not_before
        self.in_flight = 0
        self.pending: list[Result] = []
        self.pending_since = 0.0
        self.source_empty_until = 0.0
        self.next_disk_check = 0.0
        self.totals = {DONE: 0, FAIL: 0, GONE: 0, "retried": 0, "adopted": 0, "bytes": 0,
                       RELEASED: 0}

    # -- claims ------------------------------------------------------------------------
    def _claim(self, want: int) -> int:
        """Claim up to `want` discovered images not already claimed (oldest first). At most
        len(claimed) of the rows read are already ours, so reading that many more is enough."""
        rows = self.conn.execute(
            "SELECT s.listing_id, s.image_id, i.url FROM image_status s "
            "LEFT JOIN images i ON i.listing_id = s.listing_id AND i.image_id = s.image_id "
            "WHERE s.state = 'discovered' ORDER BY s.updated_at, s.listing_id, s.image_id "
            "LIMIT ?", (len(self.claimed) + want,)).fetchall()
        added = 0
        for lid, iid, url in rows:
            key = (lid, iid)
            if key in self.claimed:
                continue
            self.claimed.add(key)
            self.fresh.append(Job(0.0, lid, iid, url))
            added += 1
        return added

    def _next_job(self, now: float) -> Job | None:
        if self.retries and self.retries[0].not_before <= now:
            return heapq.heappop(self.retries)
        if not self.fresh and now >= self.source_empty_until:
            if not self._claim(max(64, self.settings.max_in_flight * 4)):
                # Nothing new: do not query again at every turn of the loop.
                self.source_empty_until = now + min(1.0, self.settings.idle_poll_s)
        if self.fresh:
            return self.fresh.popleft()
        return None

    def _feed(self, pool: WorkerPool) -> None:
        now = time.monotonic()
        while self.in_flight < self.settings.max_in_flight:
            job = self._next_job(now)
            if job is None:
                return
            job.tries += 1
            pool.submit(job)
            self.in_flight += 1

    def _release(self, jobs) -> None:
        for job in jobs:
            self.claimed.discard(job.key)
            self.totals[RELEASED] += 1

    # -- results -------------------------------------------------------------------------
    def _collect(self, pool: WorkerPool, timeout: float) -> int:
        got = 0
        try:
            result = pool.results.get(timeout=timeout) if timeout > 0 else pool.results.get_nowait()
        except queue.Empty:
            return 0
        while True:
            self.in_flight -= 1
            got += 1
            self._handle(result)
            try:
                result = pool.results.get_nowait()
            except queue.Empty:
                return got

    def _handle(self, result: Result) -> None:
        job, s = result.job, self.settings
        if result.kind == RETRY:
            if job.tries < s.max_tries:
                delay = min(s.backoff_max_s, s.backoff_s * 2 ** (job.tries - 1))
                job.not_before = time.monotonic() + delay * random.uniform(0.5, 1.0)
                heapq.heappush(self.retries, job)
                self.totals["retried"] += 1
                self.ctx.progress(1, counter="retried")
                self.log.info("retry %s_%s in %.1f s (try %d of %d): %s", job.listing_id,
                              job.image_id, job.not_before - time.monotonic(), job.tries,
                              s.max_tries, result.reason)
                return
            result = Result(job, FAIL, f"{result.reason} after {job.tries} tries")
        if result.kind == RELEASED:
            self._release([job])
            return
        if result.kind == LOCAL_ERROR:
            self._release([job])
            if self.disk_problem():  # disk full: the loop blocks until there is room
                self.log.warning("%s", result.reason)
                self.next_disk_check = 0.0
                return
            self.flush()
            raise LocalError(result.reason)
        if result.kind in (FAIL, GONE):
            self.log.info("%s %s_%s (%s): %s", result.kind, job.listing_id, job.image_id,
                          job.url, result.reason)
        if not self.pending:
            self.pending_since = time.monotonic()
        self.pending.append(result)

    def flush(self) -> None:
        """Commit the pending results in one transaction (files are already in place)."""
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        done = [r for r in pending if r.kind == DONE]
        if done and self.settings.fsync:
            fsync_dir(self.dir)  # the renames are durable before the rows say so
        commit_results(self.conn, pending, self.settings)
        for r in pending:
            self.claimed.discard(r.job.key)
        adopted = sum(1 for r in done if r.adopted)
        nbytes = sum(r.nbytes for r in done)
        failed = sum(1 for r in pending if r.kind == FAIL)
        dead = sum(1 for r in pending if r.kind == GONE)
        self.totals[DONE] += len(done)
        self.totals[FAIL] += failed
        self.totals[GONE] += dead
        self.totals["adopted"] += adopted
        self.totals["bytes"] += nbytes
        ctx = self.ctx
        last = pending[-1].job
        ctx.progress(len(done), counter="done", current=f"{last.listing_id}_{last.image_id}")
        ctx.progress(failed, counter="failed")
        ctx.progress(dead, counter="dead")
        ctx.progress(adopted, counter="adopted")
        ctx.progress(nbytes, counter="bytes")

    def _flush_due(self) -> bool:
        return bool(self.pending) and (
            len(self.pending) >= self.settings.commit_batch
            or time.monotonic() - self.pending_since >= self.settings.commit_interval_s)

    # -- disk ------------------------------------------------------------------------------
    def disk_problem(self) -> str | None:
        """The download folder's volume is below its floor (the shared disk floors)."""
        low = self.floor.check() if self.floor is not None else None
        return low.reason() if low is not None else None

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> int:
        ctx, s = self.ctx, self.settings
        self.dir.mkdir(parents=True, exist_ok=True)
        removed = remove_temp_files(self.dir)
        if removed:
            self.log.info("removed %d temp file(s) left by an earlier run", removed)
        # A new pass: failed downloads whose backoff has passed are work again (retry.py).
        requeued = requeue_due(self.conn, time.time())
        if requeued:
            self.log.info("%d failed download(s) due for another try: back to discovered", requeued)
            ctx.progress(requeued, counter="requeued")
        fetcher = Fetcher(self.dir, s, self.abort)
        pool = WorkerPool(fetcher, s.workers, self.log)
        self.log.info("downloading with %d workers (%d in flight at most, per-host cap %s, "
                      "verify %s)", s.workers, s.max_in_flight, s.per_host or "none", s.verify)
        next_control = 0.0
        try:
            while True:
                now = time.monotonic()
                if now >= next_control or not self.next_disk_check:
                    next_control = now + 0.2
                    ctx.set_info(in_flight=self.in_flight, waiting_retry=len(self.retries),
                                 claimed=len(self.claimed))
                    if ctx.stop_requested():
                        break
                    if self.pause_requested():
                        self._drain(pool)
                        self.flush()
                        if not ctx.checkpoint():  # blocks while paused
                            break
                    if now >= self.next_disk_check and self.floor is not None:
                        self.next_disk_check = now + 1.0
                        if self.disk_problem():
                            # a safe point first: every handed-out download finished and
                            # committed; then blocked, disk_low once, wait for room
                            self._drain(pool)
                            self.flush()
                            if not self.floor.wait(ctx):
                                break
                            self.next_disk_check = 0.0
                            continue
                self._feed(pool)
                if self.in_flight:
                    self._collect(pool, timeout=0.1)
                if self._flush_due():
                    self.flush()
                if not self.in_flight and not self.fresh:
                    if self.retries:
                        wait = self.retries[0].not_before - time.monotonic()
                        if wait > 0 and not ctx.sleep(min(wait, 0.2)):
                            break
                        continue
                    self.flush()
                    if self._claim(max(64, s.max_in_flight * 4)):
                        continue
                    if ctx.once:  # everything queued when we looked is done
                        break
                    ctx.set_info(in_flight=0, waiting_retry=0, claimed=len(self.claimed))
                    if not ctx.sleep(s.idle_poll_s):
                        break
        finally:
            self._shutdown(pool)
            fetcher.close()
        t = self.totals
        self.log.info("downloaded %d (adopted %d), failed %d, dead %d, retried %d, released %d, "
                      "%.1f MB", t[DONE], t["adopted"], t[FAIL], t[GONE], t["retried"],
                      t[RELEASED], t["bytes"] / 1e6)
        return 0

    def _drain(self, pool: WorkerPool) -> None:
        """Let every handed-out download finish (before a pause or a disk block)."""
        while self.in_flight:
            self._collect(pool, timeout=0.2)

    def _shutdown(self, pool: WorkerPool) -> None:
        """Stop: release what no worker started, give running downloads stop_grace_s, then
        release them too; commit every result that came back."""
        try:
            queued = pool.take_queued()
            self.in_flight -= len(queued)
            self._release(queued)
            self._release(self.fresh)
            self.fresh.clear()
            self._release(self.retries)
            self.retries = []
            deadline = time.monotonic() + self.settings.stop_grace_s
            while self.in_flight and time.monotonic() < deadline:
                self._collect(pool, timeout=0.1)
            if self.in_flight:
                self.abort.set()  # workers drop what they hold at their next chunk
                deadline = time.monotonic() + 2.0
                while self.in_flight and time.monotonic() < deadline:
                    self._collect(pool, timeout=0.1)
            if self.in_flight:
                # Still inside a read: its claim is dropped; if it ever completes, its file
                # is adopted by the next run (never a partial file: it renames only whole ones).
                self.log.warning("%d download(s) still blocked in a read: released",
                                 self.in_flight)
            self.flush()
        finally:
            self.abort.set()
            pool.close()


class LocalError(UserError):
    """The downloader cannot write its files (the image is not at fault)."""
