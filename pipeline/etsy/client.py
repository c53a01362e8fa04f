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

This module is the request loop and the calls; the parts: errors.py (what it raises),
settings.py (key, base URL, rate settings, redaction), quota.py (token bucket, daily quota),
shapes.py (the validators).
"""
from __future__ import annotations

import json
import random
import threading
import time
from typing import Any, Callable

from pipeline.etsy.errors import AuthError, ClientError, QuotaExhausted, RequestFailed, Stopped
from pipeline.etsy.quota import Quota, header_int, shared_bucket
from pipeline.etsy.settings import REDACTED, Redactor, api_base_url, load_rate_config, read_api_key
from pipeline.etsy.shapes import validate_listing_page, validate_review_page, validate_shop, validate_taxonomy


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
                retry_after = header_int(resp.headers, "retry-after")
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
