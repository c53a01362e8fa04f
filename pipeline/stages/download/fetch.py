"""Fetch one image: its HTTP GET with every check (status, length, timeouts, per-host cap),
verification, and the temp-file-then-rename into place (or adoption of a file already there)."""
from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

from pipeline.core.imagecheck import ImageRejected, verify_image
from pipeline.stages.download.files import final_name, temp_name
from pipeline.stages.download.jobs import DONE, FAIL, GONE, LOCAL_ERROR, RELEASED, RETRY, Job, Result, short_error
from pipeline.stages.download.settings import Settings

_CHUNK = 128 * 1024


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
            raise _Outcome(RETRY, f"connection error: {short_error(exc)}") from None
        except (requests.RequestException, ValueError) as exc:  # bad URL, bad scheme
            raise _Outcome(FAIL, f"bad URL {url!r}: {short_error(exc)}") from None
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
                               f"length mismatch: {short_error(exc)}") from None
            raise _Outcome(RETRY, f"connection error: {short_error(exc)}") from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise _Outcome(RETRY, f"connection error: {short_error(exc)}") from None
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

