"""One HTTP GET of an image body with the downloader's rules: redirect cap, connect / read /
total timeouts, the size limit (declared and counted), the length check. Shared by the
download stage and search's image-URL queries (issue 19); the bytes are then verified by
pipeline/core/imagecheck.py.

Failures raise ``FetchFailed(kind, reason)``: ``GONE`` (404/410), ``RETRY`` (transient:
timeouts, 5xx, 429, short bodies), ``FAIL`` (permanent: redirect loop, too large, other
statuses, bad URL), ``RELEASED`` (``abort`` said stop). The reason is one short line."""
from __future__ import annotations

import time
from typing import Callable, Protocol

GONE, RETRY, FAIL, RELEASED = "gone", "retry", "fail", "released"
_CHUNK = 128 * 1024


class FetchLimits(Protocol):
    """What ``get_body`` reads (the download stage's Settings has these)."""
    connect_timeout_s: float
    read_timeout_s: float
    total_timeout_s: float
    max_bytes: int
    max_redirects: int


class FetchFailed(Exception):
    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


def short_error(exc: BaseException, limit: int = 160) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def make_session(max_redirects: int, user_agent: str, pool_size: int = 1,
                 use_env_proxies: bool = False):
    """A pooled session: keep-alive connections, identity encoding (keeps the length check
    exact: images are already compressed)."""
    import requests
    from requests.adapters import HTTPAdapter

    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=16, pool_maxsize=max(pool_size, 1),
                          max_retries=0, pool_block=False)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.max_redirects = max_redirects
    session.trust_env = use_env_proxies
    session.headers.update({"User-Agent": user_agent, "Accept-Encoding": "identity",
                            "Accept": "image/*,*/*;q=0.5"})
    return session


def get_body(session, url: str, limits: FetchLimits,
             abort: Callable[[], bool] | None = None) -> tuple[bytes, str | None]:
    """(body, Content-Type) of a 200 response, or FetchFailed."""
    import requests
    import urllib3

    s = limits
    deadline = time.monotonic() + s.total_timeout_s
    try:
        response = session.get(url, stream=True, timeout=(s.connect_timeout_s, s.read_timeout_s))
    except requests.TooManyRedirects:
        raise FetchFailed(FAIL, f"redirect loop (more than {s.max_redirects} redirects)") from None
    except requests.Timeout:
        raise FetchFailed(RETRY, "timeout") from None
    except requests.ConnectionError as exc:
        raise FetchFailed(RETRY, f"connection error: {short_error(exc)}") from None
    except (requests.RequestException, ValueError) as exc:  # bad URL, bad scheme
        raise FetchFailed(FAIL, f"bad URL {url!r}: {short_error(exc)}") from None
    declared = None
    try:
        code = response.status_code
        if code in (404, 410):
            raise FetchFailed(GONE, f"HTTP {code}")
        if code in (408, 429) or code >= 500:
            raise FetchFailed(RETRY, f"HTTP {code}")
        if code != 200:
            raise FetchFailed(FAIL, f"HTTP {code}")
        headers = response.headers
        content_type = headers.get("Content-Type")
        declared = _int_or_none(headers.get("Content-Length"))
        encoded = headers.get("Content-Encoding", "identity").lower() not in ("identity", "")
        if declared is not None and declared > s.max_bytes:
            raise FetchFailed(FAIL, f"too large: {declared:,} bytes (limit {s.max_bytes:,})")
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
                raise FetchFailed(FAIL, f"too large: over {s.max_bytes:,} bytes")
            if abort is not None and abort():
                raise FetchFailed(RELEASED, "stopping")
            if time.monotonic() > deadline:
                raise FetchFailed(RETRY, f"timeout: body not complete after {s.total_timeout_s:g} s")
        if declared is not None and not encoded and size != declared:
            raise FetchFailed(RETRY, f"length mismatch: got {size:,} of {declared:,} bytes")
        return (chunks[0] if len(chunks) == 1 else b"".join(chunks)), content_type
    except FetchFailed:
        raise
    except (urllib3.exceptions.ReadTimeoutError, TimeoutError):
        raise FetchFailed(RETRY, "timeout: stalled mid-body") from None
    except urllib3.exceptions.ProtocolError as exc:
        # urllib3 enforces Content-Length: a short body is an IncompleteRead here.
        text = str(exc)
        if "IncompleteRead" in text or "incomplete" in text.lower():
            raise FetchFailed(RETRY, f"length mismatch: body ended before its Content-Length "
                                     f"of {declared:,} bytes" if declared is not None else
                              f"length mismatch: {short_error(exc)}") from None
        raise FetchFailed(RETRY, f"connection error: {short_error(exc)}") from None
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise FetchFailed(RETRY, f"connection error: {short_error(exc)}") from None
    finally:
        response.close()


def _int_or_none(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None
