"""Rate and quota bookkeeping: the process-wide token bucket per base URL, and the day's quota
as Etsy's headers report it (with the floor that stops spending)."""
from __future__ import annotations

import threading
import time
from typing import Callable

from pipeline.etsy.errors import QuotaExhausted


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


def header_int(headers, name: str) -> int | None:
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
            limit = header_int(headers, "x-limit-per-day")
            remaining = header_int(headers, "x-remaining-today")
            per_second = header_int(headers, "x-limit-per-second")
            left_second = header_int(headers, "x-remaining-this-second")
            if left_second is None:  # the spelling on Etsy's current docs page
                left_second = header_int(headers, "x-remaining-this-secon")
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
                    "remaining_this_second": self.remaining_this_second,
                    "daily_floor": self.floor}
