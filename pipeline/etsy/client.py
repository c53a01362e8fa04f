"""Etsy Open API v3 client: the key, the rate, the daily quota, retries.

- Base URL: ``etsy.base_url`` (default the real API); ``$ETSY_API_BASE_URL`` overrides it.
- Key: ``x-api-key: keystring:shared_secret`` from ``$ETSY_API_KEY`` or the 0600 file named
  by ``etsy.key_file``. It is never logged, printed or stored: every text this module logs
  or raises goes through ``redact``.
- Rate: one token bucket per base URL for the whole process (every thread shares it) at the
  configured QPS (the root's data/db/qps_config.json, or ``etsy.qps``), lowered to Etsy's
  ``x-limit-per-second`` when that is smaller, and to ``slow_factor`` of it once
  ``slowdown_fraction`` of the day's quota is used.
- Daily quota: planned against ``x-limit-per-day`` / ``x-remaining-today``; when only the
  floor is left (or Etsy answers 429 for the day) the call raises ``QuotaExhausted`` before
  spending anything more. A drop of the daily limit raises an alert.
- 429: waits ``retry-after``; 5xx, timeouts, dropped connections and bad bodies (not JSON,
  HTML, a 200 with an ``error``, a shape the caller's validator refuses): backoff with
  jitter, then ``RequestFailed``. Every problem is logged with Etsy's request id.
"""
from __future__ import annotations

import json
import os
import random
import threading
import time
from pathlib import Path
from typing import Any, Callable

from pipeline.core.errors import UserError

DEFAULT_BASE_URL = "https://api.etsy.com/v3/application"
ENV_BASE_URL = "ETSY_API_BASE_URL"
ENV_KEY = "ETSY_API_KEY"
REDACTED = "[REDACTED]"


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------
class EtsyError(Exception):
    def __init__(self, message: str, status: int | None = None, request_id: str | None = None,
                 path: str | None = None):
        super().__init__(message)
        self.status = status
        self.request_id = request_id
        self.path = path


class RequestFailed(EtsyError):
    """Retries spent on 5xx, network errors or bad bodies."""


class ClientError(EtsyError):
    """A 4xx other than 429 (bad request, not found): retrying would not help."""


class AuthError(ClientError):
    """401/403: the key is wrong or lacks the shared secret. Fatal for the run."""


class QuotaExhausted(EtsyError):
    """The day's quota is spent down to the floor; ``retry_after_s`` says when to look again."""

    def __init__(self, message: str, retry_after_s: float, **kw):
        super().__init__(message, **kw)
        self.retry_after_s = retry_after_s


class Stopped(Exception):
    """A stop was requested while the client was waiting."""


# ---------------------------------------------------------------------------
# Key and configuration
# ---------------------------------------------------------------------------
def read_api_key(config) -> str:
    """``keystring:shared_secret`` from $ETSY_API_KEY or the file named by etsy.key_file."""
    key = os.environ.get(ENV_KEY, "").strip()
    where = f"${ENV_KEY}"
    if not key:
        key_file = str(config.get("etsy.key_file") or "").strip()
        if not key_file:
            raise UserError("no Etsy API key: set ETSY_API_KEY=keystring:shared_secret or name a "
                            "file (mode 600) holding it in etsy.key_file")
        from pipeline.core.config import read_secret

        key = read_secret(key_file, "etsy.key_file")
        where = f"etsy.key_file ({key_file})"
    keystring, sep, secret = key.partition(":")
    if not sep or not keystring or not secret or any(c.isspace() for c in key):
        raise UserError(f"{where}: the Etsy key must be keystring:shared_secret (Etsy refuses "
                        f"the keystring alone since February 2026)")
    return key


def api_base_url(config) -> str:
    url = os.environ.get(ENV_BASE_URL, "").strip() or str(config.get("etsy.base_url"))
    if not url.startswith(("http://", "https://")):
        raise UserError(f"etsy.base_url must be an http(s) URL, got {url!r}")
    return url.rstrip("/")


def load_rate_config(root) -> dict:
    """The root's data/db/qps_config.json, with etsy.* config values overriding it."""
    from pipeline.core.config import read_json

    path = Path(root.db_dir) / "qps_config.json"
    try:
        data = read_json(path)
    except FileNotFoundError:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object")
    cfg = root.config
    out = {}
    # etsy.<key> overrides the file unless it holds its "use the file" value
    for key, default, cast, use_file in (("qps", 5.0, float, 0), ("daily_floor", 50, int, -1),
                                         ("slowdown_fraction", 0.95, float, 0)):
        value = data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{path}: {key} must be a number, got {value!r}")
        override = cfg.get(f"etsy.{key}")
        out[key] = cast(value) if override == use_file else cast(override)
    if out["qps"] <= 0:
        raise UserError(f"{path}: qps must be > 0")
    if not 0 < out["slowdown_fraction"] <= 1:
        raise UserError(f"{path}: slowdown_fraction must be in (0, 1]")
    if out["daily_floor"] < 0:
        raise UserError(f"{path}: daily_floor must be >= 0")
    return out


class Redactor:
    """Removes the key (and each of its halves) from any text before it is logged."""

    def __init__(self, key: str):
        parts = [key] + [p for p in key.split(":") if len(p) >= 4]
        self.secrets = sorted(set(parts), key=len, reverse=True)

    def __call__(self, text: Any) -> str:
        text = str(text)
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return text


# ---------------------------------------------------------------------------
# Rate and quota
# ---------------------------------------------------------------------------
class TokenBucket:
    """Hands out request slots no closer than 1/rate apart (no burst), in order of asking,
    for every thread of the process."""

    def __init__(self, rate: float):
        self.lock = threading.Lock()
        self.rate = float(rate)
        self.next_free = 0.0

    def reserve(self, rate: float | None = None) -> float:
        """Book the next slot; returns how long to wait for it."""
        with self.lock:
            if rate is not None:
                self.rate = float(rate)
            now = time.monotonic()
            slot = max(now, self.next_free)
            self.next_free = slot + 1.0 / self.rate
            return slot - now

    def hold(self, seconds: float) -> None:
        """Push the next slot back (Etsy said nothing is left this second)."""
        with self.lock:
            self.next_free = max(self.next_free, time.monotonic() + seconds)


_BUCKETS: dict[str, TokenBucket] = {}
_BUCKETS_LOCK = threading.Lock()


def shared_bucket(base_url: str, rate: float) -> TokenBucket:
    with _BUCKETS_LOCK:
        bucket = _BUCKETS.get(base_url)
        if bucket is None:
            bucket = _BUCKETS[base_url] = TokenBucket(rate)
        return bucket


def _header_int(headers, name: str) -> int | None:
    value = headers.get(name)
    try:
        return int(float(value)) if value is not None else None
    except (TypeError, ValueError):
        return None


class Quota:
    """What Etsy's headers say about the day, and the plan against it."""

    def __init__(self, floor: int, slowdown_fraction: float, known_limit: int | None,
                 alert: Callable[[str, str], None], recheck_s: float = 1800.0):
        self.lock = threading.Lock()
        self.recheck_s = recheck_s
        self.floor = floor
        self.slowdown_fraction = slowdown_fraction
        self.alert = alert
        self.known_limit = known_limit          # the largest limit seen before (for alerts)
        self.limit_per_day: int | None = None
        self.remaining_today: int | None = None
        self.limit_per_second: int | None = None
        self.remaining_this_second: int | None = None
        self.in_flight = 0
        self.updated_at: float | None = None

    def require(self, n: int, path: str) -> None:
        """Raise QuotaExhausted unless ``n`` more requests fit above the floor (so a unit
        of work that needs several requests is not started only to be cut in half)."""
        with self.lock:
            self._check(n, path)

    def _check(self, n: int, path: str) -> None:
        if self.remaining_today is not None and self.remaining_today - self.in_flight - n < self.floor:
            raise QuotaExhausted(
                f"Etsy daily quota spent: {self.remaining_today} of {self.limit_per_day} left, "
                f"floor {self.floor}", retry_after_s=self.recheck_s, path=path)

    def before(self, path: str) -> None:
        with self.lock:
            self._check(1, path)
            self.in_flight += 1

    def after(self, headers) -> None:
        with self.lock:
            self.in_flight = max(0, self.in_flight - 1)
            if headers is None:
                return
            limit = _header_int(headers, "x-limit-per-day")
            remaining = _header_int(headers, "x-remaining-today")
            per_second = _header_int(headers, "x-limit-per-second")
            left_second = _header_int(headers, "x-remaining-this-second")
            if limit is not None:
                old = self.known_limit
                self.limit_per_day = limit
                if old is not None and limit < old:
                    self.alert("quota_dropped",
                               f"Etsy lowered the daily request limit from {old} to {limit}")
                self.known_limit = limit
            if remaining is not None:
                self.remaining_today = remaining
            if per_second is not None:
                self.limit_per_second = per_second
            self.remaining_this_second = left_second
            self.updated_at = time.time()

    def forget(self) -> None:
        """After waiting for the quota: let the next request find out what is left."""
        with self.lock:
            self.remaining_today = None

    def used_fraction(self) -> float:
        with self.lock:
            if not self.limit_per_day or self.remaining_today is None:
                return 0.0
            return 1.0 - self.remaining_today / self.limit_per_day

    def info(self) -> dict:
        with self.lock:
            used = (None if self.limit_per_day is None or self.remaining_today is None
                    else self.limit_per_day - self.remaining_today)
            return {"limit_per_day": self.limit_per_day, "remaining_today": self.remaining_today,
                    "requests_today": used, "limit_per_second": self.limit_per_second,
                    "daily_floor": self.floor}


# ---------------------------------------------------------------------------
# The client
# ---------------------------------------------------------------------------
class EtsyClient:
    """Thread-safe: any number of threads may call it; they share the rate and the quota."""

    def __init__(self, base_url: str, api_key: str, qps: float = 5.0, daily_floor: int = 50,
                 slowdown_fraction: float = 0.95, slow_factor: float = 0.2,
                 timeout_s: float = 30.0, connect_timeout_s: float = 10.0, max_attempts: int = 6,
                 retry_base_s: float = 2.0, retry_max_s: float = 60.0, max_429: int = 30,
                 day_retry_after_s: float = 600.0, quota_recheck_s: float = 1800.0,
                 user_agent: str = "imageselector-sync/1", log=None,
                 alert: Callable[[str, str], None] | None = None,
                 stop_check: Callable[[], bool] | None = None, known_daily_limit: int | None = None):
        import logging

        self.base_url = base_url.rstrip("/")
        self._key = api_key
        self.redact = Redactor(api_key)
        self.qps = float(qps)
        self.slow_factor = slow_factor
        self.timeout = (connect_timeout_s, timeout_s)
        self.max_attempts = max(1, max_attempts)
        self.retry_base_s = retry_base_s
        self.retry_max_s = retry_max_s
        self.max_429 = max_429
        self.day_retry_after_s = day_retry_after_s
        self.quota_recheck_s = quota_recheck_s
        self.user_agent = user_agent
        self.log = log or logging.getLogger("imageselector.etsy")
        self._alert = alert
        self.stop_check = stop_check or (lambda: False)
        self.bucket = shared_bucket(self.base_url, self.qps)
        self.quota = Quota(daily_floor, slowdown_fraction, known_daily_limit, self.alert,
                           quota_recheck_s)
        self._local = threading.local()
        self._stats_lock = threading.Lock()
        self.stats: dict[str, int] = {}
        self.last_request_id: str | None = None

    @classmethod
    def from_root(cls, root, log=None, alert=None, stop_check=None, known_daily_limit=None,
                  **overrides) -> "EtsyClient":
        cfg = root.config
        rates = load_rate_config(root)
        kwargs = dict(
            qps=rates["qps"], daily_floor=rates["daily_floor"],
            slowdown_fraction=rates["slowdown_fraction"],
            slow_factor=cfg.get("etsy.slow_factor"), timeout_s=cfg.get("etsy.timeout_s"),
            connect_timeout_s=cfg.get("etsy.connect_timeout_s"),
            max_attempts=cfg.get("etsy.max_attempts"), retry_base_s=cfg.get("etsy.retry_base_s"),
            retry_max_s=cfg.get("etsy.retry_max_s"), max_429=cfg.get("etsy.max_429"),
            day_retry_after_s=cfg.get("etsy.day_retry_after_s"),
            quota_recheck_s=cfg.get("etsy.quota_recheck_s"), user_agent=cfg.get("etsy.user_agent"))
        kwargs.update(overrides)
        return cls(api_base_url(cfg), read_api_key(cfg), log=log, alert=alert,
                   stop_check=stop_check, known_daily_limit=known_daily_limit, **kwargs)

    def __repr__(self) -> str:  # never the key
        return f"EtsyClient({self.base_url!r}, key={REDACTED})"

    # ---- bookkeeping ---------------------------------------------------------------------
    def count(self, name: str, n: int = 1) -> None:
        with self._stats_lock:
            self.stats[name] = self.stats.get(name, 0) + n

    def stats_snapshot(self) -> dict:
        with self._stats_lock:
            return dict(self.stats)

    def alert(self, kind: str, text: str) -> None:
        text = self.redact(text)
        self.log.warning("ALERT %s: %s", kind, text)
        if self._alert:
            try:
                self._alert(kind, text)
            except Exception:
                self.log.exception("alert hook failed")

    def _session(self):
        session = getattr(self._local, "session", None)
        if session is None:
            import requests

            session = requests.Session()
            session.trust_env = False  # no proxy or netrc surprises; the URL is the URL
            session.headers["x-api-key"] = self._key
            session.headers["User-Agent"] = self.user_agent
            session.headers["Accept"] = "application/json"
            self._local.session = session
        return session

    def close(self) -> None:
        session = getattr(self._local, "session", None)
        if session is not None:
            session.close()
            self._local.session = None

    def _wait(self, seconds: float) -> None:
        """Sleep, waking for a stop request."""
        deadline = time.monotonic() + max(0.0, seconds)
        while True:
            if self.stop_check():
                raise Stopped()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(0.1, left))

    def _rate(self) -> float:
        rate = self.qps
        per_second = self.quota.limit_per_second
        if per_second:
            rate = min(rate, float(per_second))
        if self.quota.used_fraction() >= self.quota.slowdown_fraction:
            rate *= self.slow_factor
        return max(rate, 0.01)

    def _backoff(self, attempt: int) -> float:
        return min(self.retry_max_s, self.retry_base_s * 2 ** attempt) * random.uniform(0.5, 1.5)

    # ---- the request loop -------------------------------------------------------------
    def get(self, path: str, params: dict | None = None,
            validate: Callable[[Any], list[str]] | None = None) -> Any:
        """GET base_url + path; the parsed JSON. ``validate(data)`` returns problems with
        items (the page is retried while attempts last, then returned as it is, for the
        caller to drop what is bad) or raises ValueError for a body that cannot be used."""
        import requests

        url = self.base_url + path
        attempt = 0
        throttled = 0
        while True:
            if self.stop_check():
                raise Stopped()
            self.quota.before(path)
            headers = None
            try:
                self._wait(self.bucket.reserve(self._rate()))
                self.count("requests")
                try:
                    resp = self._session().get(url, params=params, timeout=self.timeout)
                except (requests.Timeout, requests.ConnectionError) as exc:
                    problem = f"{type(exc).__name__}: {self.redact(exc)}"
                    self.count("network_errors")
                    request_id, status = None, None
                else:
                    headers = resp.headers
                    request_id = resp.headers.get("x-etsy-request-uuid", "-")
                    self.last_request_id = request_id
                    status = resp.status_code
                    problem = None
            finally:
                self.quota.after(headers)
            if status is not None:
                self.count(f"status_{status}")
                if self.quota.remaining_this_second == 0 and self.quota.limit_per_second:
                    self.bucket.hold(1.0 / self.quota.limit_per_second)
            if problem is None and status == 429:
                retry_after = _header_int(resp.headers, "retry-after")
                retry_after = 1 if retry_after is None or retry_after < 0 else retry_after
                self.count("throttled")
                message = self.redact(_error_text(resp))
                if retry_after >= self.day_retry_after_s or self.quota.remaining_today == 0:
                    self.count("quota_stops")
                    raise QuotaExhausted(f"Etsy daily quota spent (429, retry-after {retry_after} s, "
                                         f"request {request_id}): {message}",
                                         retry_after_s=float(retry_after), status=429,
                                         request_id=request_id, path=path)
                throttled += 1
                if throttled > self.max_429:
                    raise RequestFailed(f"GET {path}: still throttled after {throttled} 429s "
                                        f"(request {request_id})", status=429,
                                        request_id=request_id, path=path)
                self.log.warning("GET %s: 429 (request %s), waiting %s s: %s", path, request_id,
                                 retry_after, message)
                self._wait(retry_after)
                continue
            data = None
            if problem is None:
                if status >= 500:
                    problem = f"HTTP {status}: {self.redact(_error_text(resp))}"
                elif status in (401, 403):
                    raise AuthError(f"Etsy refused the key (HTTP {status}, request {request_id}): "
                                    f"{self.redact(_error_text(resp))}", status=status,
                                    request_id=request_id, path=path)
                elif status >= 400:
                    raise ClientError(f"GET {path}: HTTP {status} (request {request_id}): "
                                      f"{self.redact(_error_text(resp))}", status=status,
                                      request_id=request_id, path=path)
                else:
                    data, problem = self._parse(resp, validate)
            if problem is None:
                return data
            attempt += 1
            self.count("retries")
            if data is not None and attempt >= self.max_attempts:
                # items the validator refused, and no attempts left: the caller drops them
                self.log.warning("GET %s: giving up on clean data (request %s): %s", path,
                                 request_id, problem)
                return data
            if attempt >= self.max_attempts:
                raise RequestFailed(f"GET {path}: failed after {attempt} attempts; last: {problem} "
                                    f"(request {request_id or '-'})", status=status,
                                    request_id=request_id, path=path)
            delay = self._backoff(attempt - 1)
            self.log.warning("GET %s: %s (request %s); retry %d/%d in %.2f s", path, problem,
                             request_id or "-", attempt, self.max_attempts - 1, delay)
            self._wait(delay)

    def _parse(self, resp, validate) -> tuple[Any, str | None]:
        """(data, problem). data is set only when the problem is with items."""
        ctype = resp.headers.get("Content-Type", "")
        if "json" not in ctype.lower():
            self.count("bad_responses")
            return None, f"not JSON ({ctype or 'no content type'}): {self.redact(resp.text[:80])!r}"
        try:
            data = json.loads(resp.content)
        except (ValueError, UnicodeDecodeError) as exc:
            self.count("bad_responses")
            return None, f"malformed JSON ({exc})"
        if isinstance(data, dict) and "error" in data and "results" not in data and "listing_id" not in data \
                and "shop_id" not in data:
            self.count("bad_responses")
            return None, f"error body with HTTP 200: {self.redact(data.get('error'))!r}"
        if validate is not None:
            try:
                problems = validate(data)
            except ValueError as exc:
                self.count("bad_responses")
                return None, f"unusable body: {self.redact(exc)}"
            if problems:
                self.count("bad_items", len(problems))
                return data, f"{len(problems)} bad item(s): {self.redact('; '.join(problems[:3]))}"
        return data, None

    # ---- the calls the crawler makes -----------------------------------------------------
    def taxonomy_nodes(self) -> list[dict]:
        data = self.get("/seller-taxonomy/nodes", validate=validate_taxonomy)
        return data["results"]

    def find_active(self, taxonomy_id: int | None, min_price: float | None, max_price: float | None,
                    offset: int = 0, limit: int = 100, validate=None) -> dict:
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if taxonomy_id is not None:
            params["taxonomy_id"] = taxonomy_id
        if min_price is not None:
            params["min_price"] = f"{min_price:.2f}"
        if max_price is not None:
            params["max_price"] = f"{max_price:.2f}"
        return self.get("/listings/active", params, validate=validate or validate_listing_page)

    def listings_batch(self, listing_ids: list[int], includes: str = "Images", validate=None) -> dict:
        if not 1 <= len(listing_ids) <= 100:
            raise ValueError("listings_batch takes 1 to 100 ids")
        params = {"listing_ids": ",".join(str(int(i)) for i in listing_ids), "includes": includes}
        return self.get("/listings/batch", params, validate=validate or validate_listing_page)

    def shop(self, shop_id: int) -> dict:
        return self.get(f"/shops/{int(shop_id)}", validate=validate_shop)

    def shop_reviews(self, shop_id: int, offset: int = 0, limit: int = 100,
                     min_created: int | None = None) -> dict:
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if min_created is not None:
            params["min_created"] = int(min_created)
        return self.get(f"/shops/{int(shop_id)}/reviews", params, validate=validate_review_page)


def _error_text(resp) -> str:
    try:
        data = resp.json()
        if isinstance(data, dict) and "error" in data:
            return str(data["error"])[:200]
    except ValueError:
        pass
    return resp.text[:120].replace("\n", " ")


# ---------------------------------------------------------------------------
# Shapes: what a usable answer looks like (ETSY_API.md, "Objects")
# ---------------------------------------------------------------------------
def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _page(data) -> list:
    if not isinstance(data, dict) or not _is_int(data.get("count")) or not isinstance(data.get("results"), list):
        raise ValueError("expected {count: int, results: [...]}")
    return data["results"]


def listing_problem(item) -> str | None:
    """Why a ShopListing (with its images, if any) cannot be stored, or None."""
    if not isinstance(item, dict):
        return "listing is not an object"
    lid = item.get("listing_id")
    if not _is_int(lid):
        return f"listing_id missing or not an integer ({lid!r})"
    for name in ("shop_id",):
        if not _is_int(item.get(name)):
            return f"listing {lid}: {name} missing or not an integer"
    if not isinstance(item.get("title"), str):
        return f"listing {lid}: title missing or not text"
    price = item.get("price")
    if not isinstance(price, dict) or not _is_int(price.get("amount")) or not _is_int(price.get("divisor")) \
            or not isinstance(price.get("currency_code"), str):
        return f"listing {lid}: price is not {{amount, divisor, currency_code}}"
    for name in ("taxonomy_id", "quantity", "num_favorers", "views", "creation_timestamp",
                 "last_modified_timestamp", "ending_timestamp"):
        value = item.get(name)
        if value is not None and not _is_int(value):
            return f"listing {lid}: {name} is not an integer ({value!r})"
    for name in ("tags", "materials", "style"):
        value = item.get(name)
        if value is not None and (not isinstance(value, list) or not all(isinstance(x, str) for x in value)):
            return f"listing {lid}: {name} is not a list of text"
    for name in ("item_length", "item_width", "item_height", "item_weight"):
        value = item.get(name)
        if value is not None and not _is_num(value):
            return f"listing {lid}: {name} is not a number"
    images = item.get("images")
    if images is not None:
        if not isinstance(images, list):
            return f"listing {lid}: images is not a list"
        for image in images:
            problem = image_problem(image, lid)
            if problem:
                return problem
    return None


def image_problem(image, listing_id) -> str | None:
    if not isinstance(image, dict):
        return f"listing {listing_id}: image is not an object"
    iid = image.get("listing_image_id")
    if not _is_int(iid):
        return f"listing {listing_id}: listing_image_id missing or not an integer"
    if not _is_int(image.get("rank")):
        return f"listing {listing_id} image {iid}: rank missing or not an integer"
    for name in ("url_570xN", "url_fullxfull"):
        value = image.get(name)
        if not isinstance(value, str) or not value.startswith(("http://", "https://")):
            return f"listing {listing_id} image {iid}: {name} is not a URL"
    for name in ("full_width", "full_height", "created_timestamp"):
        value = image.get(name)
        if value is not None and not _is_int(value):
            return f"listing {listing_id} image {iid}: {name} is not an integer"
    return None


def validate_listing_page(data) -> list[str]:
    return [p for p in (listing_problem(item) for item in _page(data)) if p]


def review_problem(item) -> str | None:
    if not isinstance(item, dict):
        return "review is not an object"
    for name in ("shop_id", "listing_id", "create_timestamp"):
        if not _is_int(item.get(name)):
            return f"review: {name} missing or not an integer ({item.get(name)!r})"
    rating = item.get("rating")
    if rating is not None and not _is_int(rating):
        return f"review of listing {item.get('listing_id')}: rating is not an integer"
    return None


def validate_review_page(data) -> list[str]:
    return [p for p in (review_problem(item) for item in _page(data)) if p]


def validate_shop(data) -> list[str]:
    if not isinstance(data, dict) or not _is_int(data.get("shop_id")):
        raise ValueError("expected a Shop with an integer shop_id")
    problems = []
    for name in ("review_count", "listing_active_count", "num_favorers", "transaction_sold_count"):
        value = data.get(name)
        if value is not None and not _is_int(value):
            problems.append(f"shop {data['shop_id']}: {name} is not an integer")
    if data.get("review_average") is not None and not _is_num(data.get("review_average")):
        problems.append(f"shop {data['shop_id']}: review_average is not a number")
    if problems:
        raise ValueError("; ".join(problems))
    return []


def validate_taxonomy(data) -> list[str]:
    nodes = _page(data)

    def check(node) -> None:
        if not isinstance(node, dict) or not _is_int(node.get("id")) or not isinstance(node.get("name"), str):
            raise ValueError("taxonomy node without an integer id and a name")
        for child in node.get("children") or []:
            check(child)

    for node in nodes:
        check(node)
    return []
