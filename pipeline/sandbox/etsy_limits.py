"""Rate limiting for the local Etsy API: Etsy's per-second and per-day quotas, and the four
rate-limit headers every answer carries.
"""
from __future__ import annotations

import collections
import math
import threading
import time


class RateLimiter:
    """Per-second token bucket (capacity one second of requests) and a sliding daily window."""

    # Real answers say x-remaining-this-second; Etsy's docs page spells it x-remaining-this-secon.
    second_header = "x-remaining-this-second"

    def __init__(self, qps: float | None = None, qpd: int | None = None, day_s: float = 86400.0):
        self.lock = threading.Lock()
        self.configure(qps, qpd, day_s)

    def configure(self, qps: float | None, qpd: int | None, day_s: float = 86400.0) -> None:
        with getattr(self, "lock", threading.Lock()):
            self.qps = qps if qps and qps > 0 else None
            self.qpd = qpd if qpd and qpd > 0 else None
            self.day_s = float(day_s)
            self.tokens = float(self.qps or 0)
            self.last = time.monotonic()
            self.window: collections.deque = collections.deque()

    def admit(self) -> tuple[bool, str, int, dict]:
        """(admitted, reason, retry_after_s, headers)."""
        with self.lock:
            now = time.monotonic()
            if self.qps:
                self.tokens = min(self.qps, self.tokens + (now - self.last) * self.qps)
            self.last = now
            while self.window and self.window[0] <= now - self.day_s:
                self.window.popleft()
            ok, reason, retry = True, "", 0
            if self.qpd and len(self.window) >= self.qpd:
                ok, reason = False, "qpd"
                retry = max(1, math.ceil(self.window[0] + self.day_s - now))
            elif self.qps and self.tokens < 1:
                ok, reason, retry = False, "qps", 1
            else:
                if self.qps:
                    self.tokens -= 1
                self.window.append(now)
            headers = {
                "x-limit-per-second": str(int(self.qps) if self.qps else 10000),
                self.second_header: str(int(self.tokens) if self.qps else 10000),
                "x-limit-per-day": str(self.qpd or 10_000_000),
                "x-remaining-today": str((self.qpd or 10_000_000) - len(self.window)),
            }
            return ok, reason, retry, headers

