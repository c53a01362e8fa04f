"""Fetch one image: its HTTP GET with every check (status, length, timeouts, per-host cap),
verification, and the temp-file-then-rename into place (or adoption of a file already there)."""
from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from urllib.parse import urlsplit

from pipeline.core import httpfetch
from pipeline.core.imagecheck import ImageRejected, verify_image
from pipeline.stages.download.files import final_name, temp_name
from pipeline.stages.download.jobs import DONE, FAIL, GONE, LOCAL_ERROR, RELEASED, RETRY, Job, Result
from pipeline.stages.download.settings import Settings


class _Outcome(Exception):
    def __init__(self, kind: str, reason: str = ""):
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


def make_session(settings: Settings):
    """One pooled session: keep-alive connections, a pool as big as the worker count."""
    return httpfetch.make_session(settings.max_redirects, settings.user_agent,
                                  settings.workers, settings.use_env_proxies)


# pipeline/core/httpfetch.py's failure kinds -> this stage's result kinds
_KINDS = {httpfetch.GONE: GONE, httpfetch.RETRY: RETRY, httpfetch.FAIL: FAIL,
          httpfetch.RELEASED: RELEASED}


class Fetcher:
    """Download, verify and place one image. Thread-safe; used by every worker."""

    def __init__(self, download_dir: Path, settings: Settings, abort: threading.Event):
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
        try:
            return httpfetch.get_body(self.session, url, self.settings, self.abort.is_set)
        except httpfetch.FetchFailed as exc:
            raise _Outcome(_KINDS[exc.kind], exc.reason) from None

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


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
