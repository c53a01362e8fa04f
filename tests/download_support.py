"""Test support for the downloader: a real threaded HTTP/1.1 server on loopback that serves
generated images and every kind of bad response, plus image generators and DB seeding."""
from __future__ import annotations

import hashlib
import io
import os
import socket
import struct
import threading
import time
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from PIL import Image

# ---------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------


def noise_rgb(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / max(width, 1), y * 255 / max(height, 1),
                     np.full_like(x, seed % 256, dtype=float)], -1)
    arr = base + rng.normal(0, 25, (height, width, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def jpeg_bytes(width: int = 96, height: int = 64, seed: int = 0, quality: int = 90,
               progressive: bool = False) -> bytes:
    out = io.BytesIO()
    noise_rgb(width, height, seed).save(out, "JPEG", quality=quality, progressive=progressive)
    return out.getvalue()


def cmyk_jpeg(seed: int = 1) -> bytes:
    out = io.BytesIO()
    noise_rgb(96, 64, seed).convert("CMYK").save(out, "JPEG", quality=90)
    return out.getvalue()


def png16(seed: int = 2) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 65535, (64, 96), dtype=np.uint16)
    out = io.BytesIO()
    Image.fromarray(arr).save(out, "PNG")  # mode I;16
    return out.getvalue()


def palette_png(seed: int = 3) -> bytes:
    out = io.BytesIO()
    noise_rgb(96, 64, seed).convert("P", palette=Image.Palette.ADAPTIVE).save(out, "PNG")
    return out.getvalue()


def palette_gif(seed: int = 4) -> bytes:
    out = io.BytesIO()
    noise_rgb(96, 64, seed).convert("P", palette=Image.Palette.ADAPTIVE).save(out, "GIF")
    return out.getvalue()


def exif_rotated_jpeg(seed: int = 5) -> bytes:
    """Stored 120x80, EXIF orientation 6 (shown 80x120)."""
    image = noise_rgb(120, 80, seed)
    exif = Image.Exif()
    exif[0x0112] = 6
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90, exif=exif.tobytes())
    return out.getvalue()


def png_bomb(width: int = 60000, height: int = 60000) -> bytes:
    """A PNG whose header claims an enormous size (Pillow refuses it at open)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = zlib.compress(b"\x00" * (width + 1) * 4)  # a few rows; the header is the bomb
    # A text chunk pads it well past the placeholder size (1,000 bytes).
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"tEXt", b"Comment\x00" + b"x" * 3000)
            + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def jpeg_claiming_size(width: int, height: int, seed: int = 6) -> bytes:
    """A real JPEG whose SOF header is rewritten to claim width x height."""
    data = bytearray(jpeg_bytes(96, 64, seed))
    i = 2
    while i < len(data):
        marker = data[i + 1]
        length = struct.unpack(">H", data[i + 2:i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            data[i + 5:i + 9] = struct.pack(">HH", height, width)
            return bytes(data)
        i += 2 + length
    raise AssertionError("no SOF marker")


def html_page() -> bytes:
    return (b"<!DOCTYPE html><html><head><title>Not found</title></head><body>"
            + b"<p>This is an error page, not an image.</p>" * 40 + b"</body></html>")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------
@dataclass
class Route:
    body: bytes = b""
    status: int = 200
    content_type: str | None = "image/jpeg"
    mode: str = "normal"          # normal, lie, stall, redirect, flaky
    location: str | None = None   # redirect target path
    fail_first: int = 0           # flaky: this many 503s first
    delay_s: float = 0.0
    served: int = field(default=0)


class ImageServer:
    """ThreadingHTTPServer on 127.0.0.1 (HTTP/1.1 keep-alive). Counts requests, connections
    and the most requests it ever had at once."""

    def __init__(self, delay_s: float = 0.0):
        self.routes: dict[str, Route] = {}
        self.delay_s = delay_s
        self.lock = threading.Lock()
        self.requests = 0
        self.connections = 0
        self.active = 0
        self.max_active = 0
        self.stopping = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                super().setup()
                with server.lock:
                    server.connections += 1

            def log_message(self, *args):  # quiet (and no stderr lock held across fork)
                pass

            def do_GET(self):
                with server.lock:
                    server.requests += 1
                    server.active += 1
                    server.max_active = max(server.max_active, server.active)
                    route = server.routes.get(self.path.split("?")[0])
                    if route is not None:
                        route.served += 1
                try:
                    server._serve(self, route)
                finally:
                    with server.lock:
                        server.active -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                       daemon=True)

    def __enter__(self) -> "ImageServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def add(self, path: str, body: bytes = b"", **kwargs) -> str:
        self.routes[path] = Route(body=body, **kwargs)
        return self.url(path)

    def _serve(self, h: BaseHTTPRequestHandler, route: Route | None) -> None:
        delay = route.delay_s if route and route.delay_s else self.delay_s
        if delay:
            time.sleep(delay)
        if route is None or route.status == 404:
            self._send(h, 404, b"not found", "text/plain")
            return
        if route.mode == "redirect":
            h.send_response(302)
            h.send_header("Location", route.location)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        if route.mode == "flaky" and route.served <= route.fail_first:
            self._send(h, 503, b"busy", "text/plain")
            return
        if route.mode == "lie":  # declares more than it sends, then hangs up
            h.send_response(200)
            h.send_header("Content-Type", route.content_type)
            h.send_header("Content-Length", str(len(route.body) * 2))
            h.send_header("Connection", "close")
            h.end_headers()
            h.wfile.write(route.body)
            h.wfile.flush()
            h.close_connection = True
            return
        if route.mode == "stall":  # half the body, then silence until the server stops
            h.send_response(200)
            h.send_header("Content-Type", route.content_type)
            h.send_header("Content-Length", str(len(route.body)))
            h.end_headers()
            h.wfile.write(route.body[: len(route.body) // 2])
            h.wfile.flush()
            self.stopping.wait(120)
            h.close_connection = True
            return
        self._send(h, route.status, route.body, route.content_type)

    @staticmethod
    def _send(h, status: int, body: bytes, content_type: str | None) -> None:
        h.send_response(status)
        if content_type:
            h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        try:
            h.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass


# ---------------------------------------------------------------------------
# DB seeding and checks
# ---------------------------------------------------------------------------


def seed(root, rows) -> None:
    """rows: (listing_id, image_id, url) -> images + image_status(discovered)."""
    from pipeline.core.db import add_discovered_images, open_db, transaction

    conn = open_db(root)
    try:
        with transaction(conn):
            conn.executemany("INSERT INTO images(listing_id, image_id, rank, is_primary, url) "
                             "VALUES (?, ?, 1, 1, ?)", [(l, i, u) for l, i, u in rows])
            add_discovered_images(conn, [(l, i) for l, i, _ in rows], now=1000.0)
    finally:
        conn.close()


def write_config(root, **download) -> None:
    """The root's imageselector.toml [download] section (fast timeouts for tests)."""
    values = {"read_timeout_s": 1.0, "connect_timeout_s": 2.0, "max_tries": 2,
              "backoff_s": 0.05, "backoff_max_s": 0.1,
              "commit_interval_s": 0.2, "idle_poll_s": 0.3, "stop_grace_s": 1.0}
    values.update(download)
    lines = ["[download]"]
    for key, value in values.items():
        if isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        elif isinstance(value, str):
            lines.append(f'{key} = "{value}"')
        else:
            lines.append(f"{key} = {value}")
    lines += ["[disk]", "min_free_gb = 0.0"]      # no disk floor (tests/test_disk_floors.py has them)
    root.config_path.write_text("\n".join(lines) + "\n")


def db_rows(root) -> dict[tuple[int, int], dict]:
    from pipeline.core.db import connect

    conn = connect(root.db_path)
    try:
        rows = conn.execute(
            "SELECT s.listing_id, s.image_id, s.state, s.reason, s.attempts, i.bytes, i.width, "
            "i.height, i.sha256 FROM image_status s JOIN images i USING (listing_id, image_id)"
        ).fetchall()
    finally:
        conn.close()
    keys = ("state", "reason", "attempts", "bytes", "width", "height", "sha256")
    return {(r[0], r[1]): dict(zip(keys, r[2:])) for r in rows}


def disk_files(root) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in Path(root.download_dir).iterdir()
            if not p.name.startswith(".")}


def temp_files(root) -> list[str]:
    return [p.name for p in Path(root.download_dir).iterdir() if p.name.startswith(".")]


def check_db_matches_disk(root, sources: dict[tuple[int, int], bytes] | None = None) -> dict:
    """DB and disk agree: each downloaded row has its complete file (size and sha256), every
    file belongs to a downloaded row, no temp file. Returns the rows."""
    rows = db_rows(root)
    files = disk_files(root)
    downloaded = {f"{l}_{i}.jpg" for (l, i), r in rows.items() if r["state"] == "downloaded"}
    assert set(files) == downloaded, (sorted(set(files) ^ downloaded)[:10], len(files), len(downloaded))
    for (l, i), r in rows.items():
        if r["state"] != "downloaded":
            continue
        data = files[f"{l}_{i}.jpg"]
        assert len(data) == r["bytes"] and sha256(data) == r["sha256"], (l, i)
        if sources is not None:
            assert data == sources[(l, i)], (l, i)
    assert temp_files(root) == []
    return rows


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_for(root, **extra) -> dict:
    env = dict(os.environ)
    env.pop("IMAGESELECTOR_ROOT", None)
    env.update({k: str(v) for k, v in extra.items()})
    return env
