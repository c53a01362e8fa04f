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
search still lists but the batch call no longer returns (sold in between).

Tests use ``with LocalEtsyAPI(listings=N, port=0) as api: api.base_url, api.catalogue``;
the ``etsy-api`` stage uses ``serve()``. Admin calls (loopback, no key) under /_sandbox/:
``GET stats``, ``GET|POST faults``, ``POST limits``, ``POST reset``.
"""
from __future__ import annotations

import collections
import json
import math
import random
import re
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import parse_qs, urlsplit

from pipeline.sandbox.catalogue import Catalogue

try:  # the lead's sandbox package names the sandbox key
    from pipeline.sandbox import SANDBOX_ETSY_KEY as DEFAULT_KEY
except Exception:  # pragma: no cover - only while the package is being written
    DEFAULT_KEY = "sandboxkey:sandboxsecret"

API_PREFIX = "/v3/application"
MAX_OFFSET = 12000
FAULT_NAMES = ("drop", "slow", "429", "5xx", "html", "malformed", "error200", "bad_fields")
_IMG_RE = re.compile(r"^/img/(\d+)/r/il/([0-9a-f]{6})/(\d+)/il_(75x75|170x135|570xN|fullxfull)"
                     r"\.(\d+)_([a-z0-9]{4})\.(jpg|png)$")


def parse_fault(text: str) -> tuple[str, float, int]:
    """``NAME=P[:BURST]`` (``5xx=0.1:3``) -> (name, probability, burst)."""
    name, _, rest = text.partition("=")
    name = name.strip()
    if name not in FAULT_NAMES + ("vanish",):
        raise ValueError(f"unknown fault {name!r} (faults: {', '.join(FAULT_NAMES + ('vanish',))})")
    p_text, _, burst_text = rest.partition(":")
    try:
        p = float(p_text)
        burst = int(burst_text) if burst_text else 1
    except ValueError:
        raise ValueError(f"fault {text!r}: expected NAME=PROBABILITY[:BURST]") from None
    if not 0 <= p <= 1 or burst < 1:
        raise ValueError(f"fault {text!r}: probability must be 0..1 and burst >= 1")
    return name, p, burst


class Faults:
    """The fault switches, drawn from a seeded generator (deterministic for one client)."""

    def __init__(self, seed: int = 0):
        self.lock = threading.Lock()
        self.seed = seed
        self.rng = random.Random(seed)
        self.spec: dict[str, tuple[float, int]] = {}
        self.storm: dict[str, int] = {}
        self.vanish = 0.0
        self.slow_s = 2.0
        self.retry_after_s = 1
        self.injected: collections.Counter = collections.Counter()
        self.queued: collections.Counter = collections.Counter()

    def next(self, name: str, n: int) -> None:
        """The next ``n`` API requests get this fault (deterministic, for tests)."""
        if name not in FAULT_NAMES:
            raise ValueError(f"unknown fault {name!r}")
        with self.lock:
            self.queued[name] = n

    def set(self, name: str, p: float, burst: int = 1) -> None:
        with self.lock:
            if name == "vanish":
                self.vanish = p
            elif p <= 0:
                self.spec.pop(name, None)
                self.storm.pop(name, None)
            else:
                self.spec[name] = (p, burst)

    def clear(self) -> None:
        with self.lock:
            self.spec.clear()
            self.storm.clear()
            self.queued.clear()
            self.vanish = 0.0

    def draw(self) -> list[str]:
        """The faults that hit this request."""
        hit = []
        with self.lock:
            for name in FAULT_NAMES:
                if self.queued.get(name, 0) > 0:
                    self.queued[name] -= 1
                    hit.append(name)
                    continue
                if name not in self.spec:
                    continue
                p, burst = self.spec[name]
                if self.storm.get(name, 0) > 0:
                    self.storm[name] -= 1
                    hit.append(name)
                elif self.rng.random() < p:
                    self.storm[name] = burst - 1
                    hit.append(name)
            for name in hit:
                self.injected[name] += 1
        return hit

    def vanished(self, listing_id: int) -> bool:
        if self.vanish <= 0:
            return False
        return random.Random(f"vanish:{self.seed}:{listing_id}").random() < self.vanish

    def as_dict(self) -> dict:
        with self.lock:
            return {"faults": {k: [p, b] for k, (p, b) in self.spec.items()},
                    "vanish": self.vanish, "slow_s": self.slow_s,
                    "retry_after_s": self.retry_after_s, "injected": dict(self.injected)}


class RateLimiter:
    """Per-second token bucket (capacity one second of requests) and a sliding daily window."""

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
                "x-remaining-this-second": str(int(self.tokens) if self.qps else 10000),
                "x-limit-per-day": str(self.qpd or 10_000_000),
                "x-remaining-today": str((self.qpd or 10_000_000) - len(self.window)),
            }
            return ok, reason, retry, headers


class BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


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
                 log: Callable[[str], None] | None = None, **catalogue_kwargs):
        if ":" not in api_key:
            raise ValueError("api_key must be keystring:shared_secret")
        self.api_key = api_key
        self.keystring = api_key.split(":", 1)[0]
        self.host = host
        self.requested_port = port
        self.log = log
        self.limits = RateLimiter(qps, qpd, day_s)
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
        self.server: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None
        self._conns: set = set()
        self._conns_lock = threading.Lock()

    # ---- life cycle -----------------------------------------------------------------
    def start(self) -> "LocalEtsyAPI":
        api = self

        class Handler(_Handler):
            pass

        Handler.api = api
        self.server = _Server((self.host, self.requested_port), Handler)
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


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64


def _int(params: dict, name: str, default=None, lo=None, hi=None):
    values = params.get(name)
    if not values or values[0] == "":
        return default
    try:
        value = int(values[0])
    except ValueError:
        raise BadRequest(400, f"Expected int for {name}, got {values[0]!r}") from None
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise BadRequest(400, f"{name} must be between {lo} and {hi}")
    return value


def _cents(params: dict, name: str):
    values = params.get(name)
    if not values or values[0] == "":
        return None
    try:
        value = float(values[0])
    except ValueError:
        raise BadRequest(400, f"Expected float for {name}, got {values[0]!r}") from None
    if value < 0 or not math.isfinite(value):
        raise BadRequest(400, f"{name} must be a non-negative number")
    return int(round(value * 100))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "LocalEtsy/1"
    timeout = 30
    api: LocalEtsyAPI

    def log_message(self, fmt, *args):  # quiet: tests and the sandbox log their own way
        if self.api.log:
            self.api.log(fmt % args)

    def setup(self):
        super().setup()
        # headers and body leave in two writes: without this, Nagle and the client's
        # delayed ACK add ~40 ms to every answer
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.api._conns_lock:
            self.api._conns.add(self.connection)

    def finish(self):
        try:
            super().finish()
        except OSError:
            pass
        with self.api._conns_lock:
            self.api._conns.discard(self.connection)

    # ---- plumbing -----------------------------------------------------------------------
    def _send(self, status: int, body: bytes, ctype: str, headers: dict | None = None) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            self.close_connection = True

    def _json(self, status: int, value, headers: dict | None = None) -> None:
        self._send(status, json.dumps(value, separators=(",", ":")).encode(), "application/json", headers)

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        path = urlsplit(self.path).path
        if path.startswith("/img/"):
            return self._image(path)
        if path.startswith("/_sandbox/"):
            return self._admin(path, None)
        if path.startswith(API_PREFIX + "/"):
            return self._api(path[len(API_PREFIX):])
        self._json(404, {"error": "Resource not found"})

    def do_POST(self):
        path = urlsplit(self.path).path
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if path.startswith("/_sandbox/"):
            return self._admin(path, body)
        self._json(405, {"error": "Method not allowed"})

    # ---- images (the CDN: no key, no limits) -----------------------------------------
    def _image(self, path: str) -> None:
        api = self.api
        m = _IMG_RE.match(path)
        cat = api.catalogue
        api.stats_.add("images")
        if not m or m.group(3) != m.group(5):
            api.stats_.add("images_404")
            return self._send(404, b"Not Found", "text/plain")
        shop_id, image_id, size, key, ext = int(m.group(1)), int(m.group(3)), m.group(4), m.group(6), m.group(7)
        where = cat.locate_image(image_id)
        meta = cat.image(*where) if where else None
        if not meta or not meta["url_570xN"].endswith(f"il_570xN.{image_id}_{key}.{ext}") \
                or cat.shop_id(cat.shop_of[where[0]]) != shop_id:
            api.stats_.add("images_404")
            return self._send(404, b"Not Found", "text/plain")
        rendered = cat.render(image_id, size)
        if rendered is None:
            api.stats_.add("images_404")
            return self._send(404, b"Not Found", "text/plain")
        data, ctype = rendered
        self._send(200, data, ctype, {"Cache-Control": "max-age=31536000"})

    # ---- admin --------------------------------------------------------------------------
    def _admin(self, path: str, body: bytes | None) -> None:
        api = self.api
        name = path[len("/_sandbox/"):]
        try:
            data = json.loads(body) if body else {}
        except json.JSONDecodeError:
            return self._json(400, {"error": "body must be JSON"})
        if name == "stats":
            return self._json(200, api.stats())
        if name == "faults":
            if body is not None:
                if data.get("clear"):
                    api.clear_faults()
                for fname, value in (data.get("faults") or {}).items():
                    p, burst = value if isinstance(value, list) else (value, 1)
                    api.set_fault(fname, float(p), int(burst))
                if "vanish" in data:
                    api.set_fault("vanish", float(data["vanish"]))
                for fname, n in (data.get("next") or {}).items():
                    api.faults.next(fname, int(n))
                if "slow_s" in data:
                    api.faults.slow_s = float(data["slow_s"])
                if "retry_after_s" in data:
                    api.faults.retry_after_s = int(data["retry_after_s"])
            return self._json(200, api.faults.as_dict())
        if name == "limits" and body is not None:
            api.set_limits(data.get("qps"), data.get("qpd"), float(data.get("day_s", 86400.0)))
            return self._json(200, {"ok": True})
        if name == "reset" and body is not None:
            api.reset_stats()
            return self._json(200, {"ok": True})
        if name == "vanished":
            return self._json(200, sorted(api.vanished_ids()))
        self._json(404, {"error": "unknown admin call"})

    # ---- the API ------------------------------------------------------------------------
    def _api(self, path: str) -> None:
        api = self.api
        request_id = str(uuid.uuid4())
        base_headers = {"x-etsy-request-uuid": request_id}
        api.stats_.add("requests")
        key = self.headers.get("x-api-key")
        if key != api.api_key:
            api.stats_.add("status_403")
            if key is not None and key == api.keystring:
                message = "Shared secret is required in x-api-key header."
            elif not key:
                message = "Missing x-api-key header."
            else:
                message = "Invalid API key"
            return self._json(403, {"error": message}, base_headers)
        ok, reason, retry, limit_headers = api.limits.admit()
        headers = {**base_headers, **limit_headers}
        if not ok:
            api.stats_.add(f"limited_{reason}")
            api.stats_.add("status_429")
            headers["retry-after"] = str(retry)
            text = ("You have exceeded your daily request quota." if reason == "qpd"
                    else "You have exceeded your request rate limit.")
            return self._json(429, {"error": text}, headers)
        faults = api.faults.draw()
        if "drop" in faults:
            api.stats_.add("dropped")
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        if "slow" in faults:
            time.sleep(api.faults.slow_s)
        if "429" in faults:
            api.stats_.add("status_429")
            headers["retry-after"] = str(api.faults.retry_after_s)
            return self._json(429, {"error": "You have exceeded your request rate limit."}, headers)
        if "5xx" in faults:
            status = random.choice((500, 502, 503, 504))
            api.stats_.add(f"status_{status}")
            return self._json(status, {"error": "Internal server error"}, headers)
        if "html" in faults:
            api.stats_.add("html")
            page = (b"<!DOCTYPE html><html><head><title>Etsy - Temporarily unavailable</title>"
                    b"</head><body><h1>Uh oh!</h1><p>We'll be right back.</p></body></html>")
            return self._send(200, page, "text/html; charset=utf-8", headers)
        if "error200" in faults:
            api.stats_.add("error200")
            return self._json(200, {"error": "An unexpected error occurred."}, headers)
        try:
            status, value = self._route(path, parse_qs(urlsplit(self.path).query))
        except BadRequest as exc:
            api.stats_.add(f"status_{exc.status}")
            return self._json(exc.status, {"error": str(exc)}, headers)
        api.stats_.add(f"status_{status}")
        if status == 200 and "bad_fields" in faults:
            value = _corrupt(value, random.Random(request_id))
        if status == 200 and "malformed" in faults:
            api.stats_.add("malformed")
            body = json.dumps(value, separators=(",", ":")).encode()
            return self._send(200, body[: max(1, len(body) // 2)], "application/json", headers)
        self._json(status, value, headers)

    def _route(self, path: str, params: dict) -> tuple[int, object]:
        api = self.api
        cat = api.catalogue
        parts = [p for p in path.split("/") if p]
        if parts == ["seller-taxonomy", "nodes"]:
            api.stats_.add("taxonomy")
            tree = cat.taxonomy_tree()
            return 200, {"count": len(tree), "results": tree}
        if parts == ["listings", "active"]:
            return 200, self._search(params)
        if parts == ["listings", "batch"]:
            return 200, self._batch(params)
        if len(parts) in (2, 3) and parts[0] == "listings" and parts[1].isdigit():
            index = cat.index_of_listing(int(parts[1]))
            if index is None or api.faults.vanished(cat.listing_id(index)):
                raise BadRequest(404, f"Listing {parts[1]} not found.")
            if len(parts) == 3 and parts[2] == "images":
                imgs = cat.images(index)
                return 200, {"count": len(imgs), "results": imgs}
            if len(parts) == 2:
                return 200, cat.listing(index)
        if len(parts) in (2, 3) and parts[0] == "shops" and parts[1].isdigit():
            s = cat.index_of_shop(int(parts[1]))
            if s is None:
                raise BadRequest(404, f"Shop with shop_id {parts[1]} not found.")
            if len(parts) == 2:
                api.stats_.add("shop")
                api.stats_.note("shops", parts[1])
                return 200, cat.shop(s)
            if parts[2] == "reviews":
                return 200, self._reviews(s, params)
        raise BadRequest(404, "Resource not found")

    def _search(self, params: dict) -> dict:
        api = self.api
        cat = api.catalogue
        limit = _int(params, "limit", 25, 1, 100)
        offset = _int(params, "offset", 0, 0)
        if offset > MAX_OFFSET:
            raise BadRequest(400, "Offset provided is greater than the maximum offset allowed.")
        tax = _int(params, "taxonomy_id")
        lo, hi = _cents(params, "min_price"), _cents(params, "max_price")
        sort_on = (params.get("sort_on") or ["created"])[0]
        sort_order = (params.get("sort_order") or ["desc"])[0]
        if sort_on not in ("created", "price", "updated", "score"):
            raise BadRequest(400, f"sort_on must be one of created, price, updated, score")
        if sort_order not in ("asc", "ascending", "desc", "descending", "up", "down"):
            raise BadRequest(400, "sort_order must be asc or desc")
        order = "asc" if sort_order in ("asc", "ascending", "up") else "desc"
        keywords = (params.get("keywords") or [""])[0]
        found = api.search_indexes((tax, lo, hi, sort_on, order, keywords))
        api.stats_.add("search")
        api.stats_.note("search", f"{tax}|{params.get('min_price', [''])[0]}|"
                                  f"{params.get('max_price', [''])[0]}|{offset}")
        return {"count": len(found), "results": [cat.listing(i) for i in found[offset:offset + limit]]}

    def _batch(self, params: dict) -> dict:
        api = self.api
        cat = api.catalogue
        raw = ",".join(params.get("listing_ids") or [])
        if not raw:
            raise BadRequest(400, "listing_ids is required")
        try:
            ids = [int(x) for x in raw.split(",") if x.strip()]
        except ValueError:
            raise BadRequest(400, "listing_ids must be a list of integers") from None
        if not 1 <= len(ids) <= 100:
            raise BadRequest(400, "listing_ids must have between 1 and 100 ids")
        includes = {x.strip().lower() for x in ",".join(params.get("includes") or []).split(",") if x.strip()}
        api.stats_.add("batch")
        api.stats_.note("batch", ",".join(map(str, ids)))
        results = []
        for lid in ids:
            index = cat.index_of_listing(lid)
            if index is None or api.faults.vanished(lid):
                continue
            item = cat.listing(index)
            if "images" in includes:
                item["images"] = cat.images(index)
            if "shop" in includes:
                item["shop"] = cat.shop(cat.shop_of[index])
            results.append(item)
        return {"count": len(results), "results": results}

    def _reviews(self, s: int, params: dict) -> dict:
        api = self.api
        limit = _int(params, "limit", 25, 1, 100)
        offset = _int(params, "offset", 0, 0)
        min_created = _int(params, "min_created")
        max_created = _int(params, "max_created")
        found = [r for r in api.catalogue.reviews(s)
                 if (min_created is None or r["create_timestamp"] >= min_created)
                 and (max_created is None or r["create_timestamp"] <= max_created)]
        api.stats_.add("reviews")
        api.stats_.note("reviews", f"{api.catalogue.shop_id(s)}|{min_created}|{offset}")
        return {"count": len(found), "results": found[offset:offset + limit]}


def _corrupt(value, rng: random.Random):
    """One listing (or review) with a field missing or of the wrong type."""
    if not isinstance(value, dict) or not value.get("results"):
        return value
    item = rng.choice(value["results"])
    if "listing_id" in item and "price" in item:
        choice = rng.choice(("no_id", "price_text", "title_number", "image_rank_text"))
        if choice == "no_id":
            del item["listing_id"]
        elif choice == "price_text":
            item["price"] = "12.50"
        elif choice == "title_number":
            item["title"] = 12345
        elif item.get("images"):
            item["images"][0]["rank"] = "first"
        else:
            item["listing_id"] = str(item["listing_id"]) + "x"
    elif "rating" in item:
        item["create_timestamp"] = "yesterday"
    return value


def serve(port: int = 0, host: str = "127.0.0.1", stop: Callable[[], bool] | None = None,
          on_ready: Callable[[LocalEtsyAPI], None] | None = None, poll_s: float = 0.5, **kwargs) -> None:
    """Serve until ``stop()`` returns True (the etsy-api stage passes its kill-file check)."""
    with LocalEtsyAPI(port=port, host=host, **kwargs) as api:
        if on_ready:
            on_ready(api)
        while not (stop and stop()):
            time.sleep(poll_s)
