"""A loopback TCP proxy for fault injection: listens on 127.0.0.1 and forwards each
connection to a target port. ``cut()`` closes every open connection (a dropped network);
``stall()`` stops forwarding without closing anything (a host that stops answering) until
``resume()`` or ``cut()``. Threads only; stopped by ``close()``.
"""
from __future__ import annotations

import socket
import threading


class TCPProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1"):
        self.target = (target_host, target_port)
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.flowing = threading.Event()
        self.flowing.set()
        self.closed = False
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True, name=f"proxy:{self.port}").start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.pairs.append((client, upstream))
                self.accepted += 1
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                self.flowing.wait()          # a stall holds the bytes, closing nothing
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self._forget(src, dst)

    def _forget(self, *socks) -> None:
        with self.lock:
            self.pairs = [p for p in self.pairs if p[0] not in socks and p[1] not in socks]

    def open_connections(self) -> int:
        with self.lock:
            return len(self.pairs)

    def cut(self) -> int:
        """Close every open connection (RST-like: both sides see it end). How many."""
        with self.lock:
            pairs, self.pairs = self.pairs, []
        for pair in pairs:
            for s in pair:
                try:
                    s.shutdown(socket.SHUT_RDWR)     # wakes the pump threads blocked in recv
                except OSError:
                    pass
                s.close()
        self.flowing.set()
        return len(pairs)

    def stall(self) -> int:
        self.flowing.clear()
        return self.open_connections()

    def resume(self) -> None:
        self.flowing.set()

    def close(self) -> None:
        self.closed = True
        self.flowing.set()
        try:
            self.listener.close()
        except OSError:
            pass
        self.cut()
