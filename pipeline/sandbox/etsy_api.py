"""The local Etsy API: a real HTTP server on loopback that behaves like Etsy Open API v3
for the calls the crawler makes (../shared/design/ETSY_API.md), over a synthetic catalogue.

Same paths under /v3/application, same parameters and JSON shapes, the 12,000 offset cap,
403 without the shared secret, the four rate-limit headers, 429 with retry-after when its
QPS (a token bucket holding one second of burst) or its daily limit (a sliding window of
``day_s`` seconds) is exceeded, ``x-etsy-request-uuid`` on every answer. The image URLs it
hands out point at itself (/img/...), in Etsy's CDN shape.

Fault switches (each a probability per API request, optionally lasting ``burst``
consecutive requests once triggered, like a storm): ``drop`` (close the connection with no
answer), ``slow`` (answer after ``slow_s``), ``429``, ``5xx``, ``html`` (a 200 HTML page),
``malformed`` (truncated JSON), ``error200`` (200 with an error body), ``bad_fields`` (one
listing with a missing field or a wrong type); ``fail_next(name, n)`` gives the next ``n``
requests a fault, for tests that need it exactly; and ``vanish``, a fraction of listings that
search still lists but the batch call no longer returns (sold in between). The catalogue
changes under the crawler (etsy_changes): ``end_listings``, ``delete_listings``,
``delete_shops``, ``end_per_search`` (listings ending during a crawl), and
``catalogue.advance_clock`` (new reviews arrive, old ones leave the past-year count).
``second_header`` spells the per-second remaining header (Etsy's docs page says
``x-remaining-this-secon``).

Tests use ``with LocalEtsyAPI(listings=N, port=0) as api: api.base_url, api.catalogue``;
the ``etsy-api`` stage uses ``serve()``. Admin calls (loopback, no key) under /_sandbox/:
``GET stats``, ``GET|POST faults``, ``POST limits``, ``POST reset``.

This module is the server's life cycle and state; the HTTP handler is in etsy_http, the
endpoints in etsy_endpoints, the fault switches in etsy_faults, the quotas in etsy_limits.
"""
from __future__ import annotations

import collections
import socket
import threading
import time
from typing import Callable

from pipeline.sandbox.catalogue import Catalogue
from pipeline.sandbox.etsy_changes import Changes
from pipeline.sandbox.etsy_endpoints import API_PREFIX
from pipeline.sandbox.etsy_faults import Faults, parse_fault
from pipeline.sandbox.etsy_http import ApiHandler, ApiServer
from pipeline.sandbox.etsy_limits import RateLimiter

try:  # the lead's sandbox package names the sandbox key
    from pipeline.sandbox import SANDBOX_ETSY_KEY as DEFAULT_KEY
except Exception:  # pragma: no cover - only while the package is being written
    DEFAULT_KEY = "sandboxkey:sandboxsecret"


class _Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with getattr(self, "lock", threading.Lock()):
            self.counters: collections.Counter = collections.Counter()
            self.search: collections.Counter = collections.Counter()
            self.batch: collections.Counter = collections.Counter()
            self.shops: collections.Counter = collections.Counter()
            self.reviews: collections.Counter = collections.Counter()
            self.first_at: float | None = None
            self.last_at: float | None = None

    def add(self, name: str, n: int = 1) -> None:
        with self.lock:
            self.counters[name] += n
            if name == "requests":  # API requests: their span gives the achieved rate
                now = time.time()
                self.first_at = self.first_at or now
                self.last_at = now

    def note(self, table: str, key: str) -> None:
        with self.lock:
            getattr(self, table)[key] += 1

    def as_dict(self) -> dict:
        with self.lock:
            return {"counters": dict(self.counters), "search": dict(self.search),
                    "batch": dict(self.batch), "shops": dict(self.shops),
                    "reviews": dict(self.reviews), "first_at": self.first_at, "last_at": self.last_at}


class LocalEtsyAPI:
    """The server. ``port=0`` picks a free port; ``qps``/``qpd`` None lift the limits."""

    def __init__(self, listings: int = 200, port: int = 0, host: str = "127.0.0.1", seed: int = 0,
                 api_key: str = DEFAULT_KEY, qps: float | None = None, qpd: int | None = None,
                 day_s: float = 86400.0, faults: dict | list | None = None, fault_seed: int = 0,
                 slow_s: float = 2.0, retry_after_s: int = 1, catalogue: Catalogue | None = None,
                 log: Callable[[str], None] | None = None, end_per_search: int = 0,
                 second_header: str = "x-remaining-this-second", **catalogue_kwargs):
        if ":" not in api_key:
            raise ValueError("api_key must be keystring:shared_secret")
        self.api_key = api_key
        self.keystring = api_key.split(":", 1)[0]
        self.host = host
        self.requested_port = port
        self.log = log
        self.limits = RateLimiter(qps, qpd, day_s)
        self.limits.second_header = second_header
        self.changes = Changes(fault_seed)
        self.changes.end_per_search = int(end_per_search)
        self.faults = Faults(fault_seed)
        self.faults.slow_s = slow_s
        self.faults.retry_after_s = retry_after_s
        for item in (faults.items() if isinstance(faults, dict) else (faults or [])):
            if isinstance(item, str):
                self.faults.set(*parse_fault(item))
            else:
                name, value = item
                p, burst = (value if isinstance(value, (list, tuple)) else (value, 1))
                self.faults.set(name, float(p), int(burst))
        self.stats_ = _Stats()
        self._catalogue = catalogue
        self._catalogue_kwargs = dict(listings=listings, seed=seed, **catalogue_kwargs)
        self._search_cache: collections.OrderedDict = collections.OrderedDict()
        self._cache_lock = threading.Lock()
        self.server: ApiServer | None = None
        self.thread: threading.Thread | None = None
        self._conns: set = set()
        self._conns_lock = threading.Lock()

    # ---- life cycle -----------------------------------------------------------------
    def start(self) -> "LocalEtsyAPI":
        api = self

        class Handler(ApiHandler):
            pass

        Handler.api = api
        self.server = ApiServer((self.host, self.requested_port), Handler)
        self.port = self.server.server_address[1]
        image_base = f"http://{self.host}:{self.port}/img"
        if self._catalogue is None:
            self._catalogue = Catalogue(image_base=image_base, **self._catalogue_kwargs)
        else:
            self._catalogue.image_base = image_base
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1},
                                       name=f"etsy-api-{self.port}", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.server is None:
            return
        self.server.shutdown()
        self.server.server_close()
        with self._conns_lock:
            for conn in list(self._conns):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self.server = None
        if self.thread:
            self.thread.join(timeout=5)

    def __enter__(self) -> "LocalEtsyAPI":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- what tests use ----------------------------------------------------------------
    @property
    def catalogue(self) -> Catalogue:
        return self._catalogue

    @property
    def root_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return self.root_url + API_PREFIX

    def stats(self) -> dict:
        out = self.stats_.as_dict()
        out["faults"] = self.faults.as_dict()
        out["changes"] = self.changes.as_dict()
        return out

    def reset_stats(self) -> None:
        self.stats_.reset()

    def set_fault(self, name: str, p: float, burst: int = 1) -> None:
        self.faults.set(name, p, burst)

    def fail_next(self, name: str, n: int) -> None:
        self.faults.next(name, n)

    def clear_faults(self) -> None:
        self.faults.clear()

    def set_limits(self, qps: float | None = None, qpd: int | None = None, day_s: float = 86400.0) -> None:
        self.limits.configure(qps, qpd, day_s)

    def end_listings(self, listing_ids) -> None:
        self.changes.end(listing_ids)

    def delete_listings(self, listing_ids) -> None:
        self.changes.delete_listings(listing_ids)

    def delete_shops(self, shop_ids) -> None:
        self.changes.delete_shops(shop_ids)

    def ended_ids(self) -> set[int]:
        with self.changes.lock:
            return set(self.changes.ended)

    def vanished_ids(self) -> set[int]:
        cat = self.catalogue
        return {cat.listing_id(i) for i in range(cat.n) if self.faults.vanished(cat.listing_id(i))}

    # ---- answers ---------------------------------------------------------------------------
    def search_indexes(self, key: tuple) -> list[int]:
        with self._cache_lock:
            if key in self._search_cache:
                self._search_cache.move_to_end(key)
                return self._search_cache[key]
        tax, lo, hi, sort_on, sort_order, keywords = key
        found = self.catalogue.search(tax, lo, hi, sort_on, sort_order)
        if keywords:
            words = keywords.lower().split()
            found = [i for i in found
                     if any(w in self.catalogue.listing(i)["title"].lower() for w in words)]
        with self._cache_lock:
            self._search_cache[key] = found
            while len(self._search_cache) > 32:
                self._search_cache.popitem(last=False)
        return found


def serve(port: int = 0, host: str = "127.0.0.1", stop: Callable[[], bool] | None = None,
          on_ready: Callable[[LocalEtsyAPI], None] | None = None, poll_s: float = 0.5, **kwargs) -> None:
    """Serve until ``stop()`` returns True (the etsy-api stage passes its kill-file check)."""
    with LocalEtsyAPI(port=port, host=host, **kwargs) as api:
        if on_ready:
            on_ready(api)
        while not (stop and stop()):
            time.sleep(poll_s)
