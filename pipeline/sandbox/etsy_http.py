"""The local Etsy API's HTTP side: the threaded server and the request handler, which serves
the images (the CDN), the /_sandbox/ admin calls, and the API: the key check, the rate
limits, the injected faults, then the endpoint's answer.
"""
from __future__ import annotations

import json
import random
import re
import socket
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from pipeline.sandbox.etsy_endpoints import API_PREFIX, BadRequest, route
from pipeline.sandbox.etsy_faults import corrupt

_IMG_RE = re.compile(r"^/img/(\d+)/r/il/([0-9a-f]{6})/(\d+)/il_(75x75|170x135|570xN|fullxfull)"
                     r"\.(\d+)_([a-z0-9]{4})\.(jpg|png)$")


class ApiServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64


class ApiHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "LocalEtsy/1"
    timeout = 30
    api = None  # the LocalEtsyAPI served: LocalEtsyAPI.start sets it on a subclass

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
                if "end_per_search" in data:
                    api.changes.end_per_search = int(data["end_per_search"])
                api.end_listings(data.get("end") or [])
                api.delete_listings(data.get("delete_listings") or [])
                api.delete_shops(data.get("delete_shops") or [])
            return self._json(200, {**api.faults.as_dict(), "changes": api.changes.as_dict()})
        if name == "limits" and body is not None:
            api.set_limits(data.get("qps"), data.get("qpd"), float(data.get("day_s", 86400.0)))
            return self._json(200, {"ok": True})
        if name == "reset" and body is not None:
            api.reset_stats()
            return self._json(200, {"ok": True})
        if name == "vanished":
            return self._json(200, sorted(api.vanished_ids()))
        if name == "ended":
            return self._json(200, sorted(api.ended_ids()))
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
            status, value = route(api, path, parse_qs(urlsplit(self.path).query))
        except BadRequest as exc:
            api.stats_.add(f"status_{exc.status}")
            return self._json(exc.status, {"error": str(exc)}, headers)
        api.stats_.add(f"status_{status}")
        if status == 200 and "bad_fields" in faults:
            value = corrupt(value, random.Random(request_id))
        if status == 200 and "malformed" in faults:
            api.stats_.add("malformed")
            body = json.dumps(value, separators=(",", ":")).encode()
            return self._send(200, body[: max(1, len(body) // 2)], "application/json", headers)
        self._json(status, value, headers)
