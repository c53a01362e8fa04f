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
"""
from __future__ import annotations

import hashlib
import heapq
import logging
import os
import queue
import random
import shutil
import sqlite3
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

from pipeline.core.config import config_values, toml_defaults
from pipeline.core.db import DEAD, DISCOVERED, DOWNLOADED, FAILED, retry_on_busy, set_image_fields, transaction
from pipeline.core.errors import UserError
from pipeline.core.fsutil import fsync_dir
from pipeline.core.imagecheck import ImageRejected, verify_image

TEMP_SUFFIX = ".part"
_CHUNK = 128 * 1024

# Result kinds
DONE = "done"          # downloaded (or adopted), verified, renamed into place
FAIL = "failed"        # permanent failure: the reason is stored
GONE = "dead"          # 404/410 or Etsy's placeholder
RETRY = "retry"        # transient failure: try again later (or fail after max_tries)
RELEASED = "released"  # abandoned on a stop: the image stays `discovered`
LOCAL_ERROR = "local"  # our side failed (disk full, permissions): never the image's fault


def final_name(listing_id: int, image_id: int) -> str:
    return f"{listing_id}_{image_id}.jpg"


def temp_name(listing_id: int, image_id: int) -> str:
    # Hidden and with a suffix of its own, so nothing that lists *.jpg ever sees it.
    return f".{listing_id}_{image_id}.jpg{TEMP_SUFFIX}"


def remove_temp_files(download_dir: Path) -> int:
    """Remove temp files a killed run left behind (only this stage writes them)."""
    removed = 0
    try:
        entries = os.scandir(download_dir)
    except FileNotFoundError:
        return 0
    with entries:
        for entry in entries:
            if entry.name.startswith(".") and entry.name.endswith(TEMP_SUFFIX):
                try:
                    os.unlink(entry.path)
                    removed += 1
                except FileNotFoundError:
                    pass
    return removed


@dataclass
@toml_defaults("download")
class Settings:
    workers: int
    max_in_flight: int
    per_host: int
    connect_timeout_s: float
    read_timeout_s: float
    total_timeout_s: float
    max_tries: int
    backoff_s: float
    backoff_max_s: float
    max_redirects: int
    max_bytes: int
    max_pixels: int
    placeholder_max_bytes: int
    min_free_gb: float
    verify: str
    fsync: bool
    commit_batch: int
    commit_interval_s: float
    stop_grace_s: float
    idle_poll_s: float
    use_env_proxies: bool
    user_agent: str

    @classmethod
    def from_config(cls, config, **overrides) -> "Settings":
        values = config_values(cls, config)
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        if self.workers < 1:
            raise UserError(f"download workers (--workers or download.workers) must be at "
                            f"least 1, got {self.workers}")
        if self.max_in_flight < self.workers:
            self.max_in_flight = self.workers
        if self.max_tries < 1:
            raise UserError(f"download.max_tries must be at least 1, got {self.max_tries}")
        if self.verify not in ("draft", "full"):
            raise UserError(f"download.verify must be \"draft\" or \"full\", got {self.verify!r}")
        if self.per_host < 0:
            raise UserError(f"download.per_host must be 0 (no cap) or more, got {self.per_host}")


@dataclass(order=True)
class Job:
    not_before: float
    listing_id: int = field(compare=False)
    image_id: int = field(compare=False)
    url: str | None = field(compare=False)
    tries: int = field(default=0, compare=False)

    @property
    def key(self) -> tuple[int, int]:
        return (self.listing_id, self.image_id)


@dataclass
class Result:
    job: Job
    kind: str
    reason: str = ""
    nbytes: int = 0
    width: int = 0
    height: int = 0
    sha256: str = ""
    adopted: bool = False


class _Outcome(Exception):
    def __init__(self, kind: str, reason: str = ""):
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


def make_session(settings: Settings):
    """One pooled session: keep-alive connections, a pool as big as the worker count."""
    import requests
    from requests.adapters import HTTPAdapter

    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=16, pool_maxsize=max(settings.workers, 1),
                          max_retries=0, pool_block=False)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.max_redirects = settings.max_redirects
    session.trust_env = settings.use_env_proxies
    # Images are already compressed; identity keeps the length check exact.
    session.headers.update({"User-Agent": settings.user_agent, "Accept-Encoding": "identity",
                            "Accept": "image/*,*/*;q=0.5"})
    return session


class Fetcher:
    """Download, verify and place one image. Thread-safe; used by every worker."""

    def __init__(self, download_dir: Path, settings: Settings, abort: threading.Event):
        import requests
        import urllib3

        self.requests = requests
        self.urllib3 = urllib3
        self.dir = Path(download_dir)
        self.settings = settings
        self.abort = abort
        self.session = make_session(settings)
        self._host_lock = threading.Lock()
        self._host_slots: dict[str, threading.BoundedSemaphore] = {}

    def close(self) -> None:
        self.session.close()

    def fetch(self, job: Job) -> Result:
        final = self.dir / final_name(job.listing_id, job.image_id)
        try:
            adopted = self._adopt(job, final)
            if adopted is not None:
                return adopted
            data, content_type = self._download(job.url)
            return self._place(job, data, content_type, final)
        except _Outcome as outcome:
            return Result(job, outcome.kind, outcome.reason)

    # -- a file a crashed run renamed into place before its DB commit ----------
    def _adopt(self, job: Job, final: Path) -> Result | None:
        try:
            data = final.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _Outcome(LOCAL_ERROR, f"cannot read {final}: {exc.strerror}") from None
        try:
            if len(data) <= self.settings.placeholder_max_bytes:
                raise ImageRejected("placeholder size")
            info = verify_image(data, self.settings.max_pixels, self.settings.verify == "full")
        except ImageRejected:
            _unlink(final)  # not a good file: download it again
            return None
        return Result(job, DONE, "", len(data), info.width, info.height,
                      hashlib.sha256(data).hexdigest(), adopted=True)

    # -- HTTP ---------------------------------------------------------------------
    def _slot(self, url: str):
        if not self.settings.per_host:
            return _NO_SLOT
        host = urlsplit(url).netloc.lower()
        with self._host_lock:
            slot = self._host_slots.get(host)
            if slot is None:
                slot = self._host_slots[host] = threading.BoundedSemaphore(self.settings.per_host)
        return slot

    def _download(self, url: str | None) -> tuple[bytes, str | None]:
        if not url:
            raise _Outcome(FAIL, "no URL stored for this image")
        with self._slot(url):
            return self._get(url)

    def _get(self, url: str) -> tuple[bytes, str | None]:
        s = self.settings
        requests, urllib3 = self.requests, self.urllib3
        deadline = time.monotonic() + s.total_timeout_s
        try:
            response = self.session.get(url, stream=True,
                                        timeout=(s.connect_timeout_s, s.read_timeout_s))
        except requests.TooManyRedirects:
            raise _Outcome(FAIL, f"redirect loop (more than {s.max_redirects} redirects)") from None
        except requests.Timeout:
            raise _Outcome(RETRY, "timeout") from None
        except requests.ConnectionError as exc:
            raise _Outcome(RETRY, f"connection error: {_short(exc)}") from None
        except (requests.RequestException, ValueError) as exc:  # bad URL, bad scheme
            raise _Outcome(FAIL, f"bad URL {url!r}: {_short(exc)}") from None
        declared = None
        try:
            code = response.status_code
            if code in (404, 410):
                raise _Outcome(GONE, f"HTTP {code}")
            if code in (408, 429) or code >= 500:
                raise _Outcome(RETRY, f"HTTP {code}")
            if code != 200:
                raise _Outcome(FAIL, f"HTTP {code}")
            headers = response.headers
            content_type = headers.get("Content-Type")
            declared = _int_or_none(headers.get("Content-Length"))
            encoded = headers.get("Content-Encoding", "identity").lower() not in ("identity", "")
            if declared is not None and declared > s.max_bytes:
                raise _Outcome(FAIL, f"too large: {declared:,} bytes (limit {s.max_bytes:,})")
            chunks: list[bytes] = []
            size = 0
            raw = response.raw
            # The declared length in one read (one allocation), then read on to the end.
            amount = declared if declared and not encoded else _CHUNK
            while True:
                chunk = raw.read(amount, decode_content=True)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                amount = _CHUNK
                if size > s.max_bytes:
                    raise _Outcome(FAIL, f"too large: over {s.max_bytes:,} bytes")
                if self.abort.is_set():
                    raise _Outcome(RELEASED, "stopping")
                if time.monotonic() > deadline:
                    raise _Outcome(RETRY, f"timeout: body not complete after {s.total_timeout_s:g} s")
            if declared is not None and not encoded and size != declared:
                raise _Outcome(RETRY, f"length mismatch: got {size:,} of {declared:,} bytes")
            return (chunks[0] if len(chunks) == 1 else b"".join(chunks)), content_type
        except _Outcome:
            raise
        except (urllib3.exceptions.ReadTimeoutError, TimeoutError) as exc:
            raise _Outcome(RETRY, "timeout: stalled mid-body") from None
        except urllib3.exceptions.ProtocolError as exc:
            # urllib3 enforces Content-Length: a short body is an IncompleteRead here.
            text = str(exc)
            if "IncompleteRead" in text or "incomplete" in text.lower():
                raise _Outcome(RETRY, f"length mismatch: body ended before its Content-Length "
                                      f"of {declared:,} bytes" if declared is not None else
                               f"length mismatch: {_short(exc)}") from None
            raise _Outcome(RETRY, f"connection error: {_short(exc)}") from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise _Outcome(RETRY, f"connection error: {_short(exc)}") from None
        finally:
            response.close()

    # -- verification and the file --------------------------------------------------
    def _place(self, job: Job, data: bytes, content_type: str | None, final: Path) -> Result:
        s = self.settings
        if not data:
            raise _Outcome(FAIL, "empty body (0 bytes)")
        if len(data) <= s.placeholder_max_bytes:
            raise _Outcome(GONE, f"placeholder ({len(data)} bytes <= {s.placeholder_max_bytes})")
        try:
            info = verify_image(data, s.max_pixels, s.verify == "full", content_type)
        except ImageRejected as exc:
            raise _Outcome(FAIL, exc.reason) from None
        digest = hashlib.sha256(data).hexdigest()
        tmp = self.dir / temp_name(job.listing_id, job.image_id)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                if s.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            if self.abort.is_set():  # released on a stop: leave nothing behind
                _unlink(tmp)
                raise _Outcome(RELEASED, "stopping")
            os.replace(tmp, final)
        except OSError as exc:
            _unlink(tmp)
            raise _Outcome(LOCAL_ERROR, f"cannot write {final}: {exc.strerror or exc}") from None
        return Result(job, DONE, "", len(data), info.width, info.height, digest)


class _NoSlot:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


_NO_SLOT = _NoSlot()


class WorkerPool:
    """N daemon threads: a worker stuck in a stalled read can never hold up the exit."""

    def __init__(self, fetcher: Fetcher, workers: int, log: logging.Logger):
        self.fetcher = fetcher
        self.log = log
        self.work: queue.Queue[Job | None] = queue.Queue()
        self.results: queue.Queue[Result] = queue.Queue()
        self.threads = [threading.Thread(target=self._loop, name=f"download-{i}", daemon=True)
                        for i in range(workers)]
        for thread in self.threads:
            thread.start()

    def _loop(self) -> None:
        while True:
            job = self.work.get()
            if job is None:
                return
            try:
                result = self.fetcher.fetch(job)
            except Exception as exc:  # a bug: fail this image loudly (requeue it once fixed)
                self.log.exception("downloading %s failed unexpectedly", job.url)
                result = Result(job, FAIL, f"internal error: {_short(exc)}")
            self.results.put(result)

    def submit(self, job: Job) -> None:
        self.work.put(job)

    def take_queued(self) -> list[Job]:
        """Jobs no worker has started yet (released on a stop)."""
        jobs = []
        while True:
            try:
                job = self.work.get_nowait()
            except queue.Empty:
                return jobs
            if job is not None:
                jobs.append(job)

    def close(self) -> None:
        for _ in self.threads:
            self.work.put(None)


class Downloader:
    """The main loop: claims, feeds the workers, retries, commits. Owns the DB connection."""

    def __init__(self, conn: sqlite3.Connection, download_dir: Path, settings: Settings,
                 log: logging.Logger, ctx, pause_requested: Callable[[], bool] = lambda: False,
                 free_bytes: Callable[[Path], int] | None = None):
        self.conn = conn
        self.dir = Path(download_dir)
        self.settings = settings
        self.log = log
        self.ctx = ctx
        self.pause_requested = pause_requested
        self.free_bytes = free_bytes or (lambda p: shutil.disk_usage(p).free)
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
        _commit_results(self.conn, pending)
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
        floor = self.settings.min_free_gb * 1e9
        try:
            free = self.free_bytes(self.dir)
        except OSError as exc:
            return f"cannot read free space of {self.dir} ({exc.strerror})"
        if free < floor:
            return (f"free disk {free / 1e9:.1f} GB on {self.dir} is below the floor of "
                    f"{self.settings.min_free_gb:g} GB (download.min_free_gb)")
        return None

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> int:
        ctx, s = self.ctx, self.settings
        self.dir.mkdir(parents=True, exist_ok=True)
        removed = remove_temp_files(self.dir)
        if removed:
            self.log.info("removed %d temp file(s) left by an earlier run", removed)
        fetcher = Fetcher(self.dir, s, self.abort)
        pool = WorkerPool(fetcher, s.workers, self.log)
        self.log.info("downloading with %d workers (%d in flight at most, per-host cap %s, "
                      "verify %s)", s.workers, s.max_in_flight, s.per_host or "none", s.verify)
        next_control = 0.0
        blocked = False
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
                    if now >= self.next_disk_check:
                        self.next_disk_check = now + 1.0
                        problem = self.disk_problem()
                        if problem:
                            self._drain(pool)
                            self.flush()
                            ctx.blocked(problem)
                            blocked = True
                            if not ctx.sleep(min(5.0, s.idle_poll_s)):
                                break
                            self.next_disk_check = 0.0
                            continue
                        if blocked:
                            ctx.unblocked()
                            blocked = False
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


@retry_on_busy
def _commit_results(conn: sqlite3.Connection, results: list[Result]) -> None:
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


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _int_or_none(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _short(exc: BaseException, limit: int = 160) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
