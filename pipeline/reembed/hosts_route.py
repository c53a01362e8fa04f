"""The re-embed's compute on the home lab's workers (``--workers NAME[,NAME...]`` naming SSH or
local workers of hosts.toml): on each, a server (serve.py) with the model loaded once; here,
one thread per host that drops a slice into its inbox, waits for the vectors in its outbox
and fetches them. Only this process writes the index (the caller's loop).

A host that drops its connection, stops answering, or whose server dies: the slice in hand
goes to another host (or back to the same one once it answers again), and a result that
arrives twice is used once. A host that cannot work at all (refused key, no root, the model
will not load) is left out with one warning; when no host is left, one error names each.
"""
from __future__ import annotations

import json
import logging
import queue
import threading
import time

from pipeline.core.errors import UserError
from pipeline.reembed import serve
from remote.errors import AuthFailed, HostKeyError, HostsConfigError, RemoteError, RemoteFileMissing

MAX_TRIES = 3          # hosts a slice may be lost on before the run stops with an error
PER_HOST = 2           # slices out per host: one embedding, one waiting in its inbox
STALE_S = 20.0         # a server whose heartbeat has not moved for this long is gone
log = logging.getLogger("imageselector.reembed")


class HostDown(RemoteError):
    """This host cannot take the slice now (its server stopped answering, a timeout)."""


class HostUnusable(RemoteError):
    """This host cannot take part in this re-embed at all (said once, with the reason)."""


def slice_name(work) -> str:
    return f"s{work.shard.number:05d}_b{work.slice.seq:06d}"


class HostLane:
    """One worker host: its transport, its server, a thread taking slices from the route."""

    def __init__(self, route: "HostsRoute", host, transport):
        self.route, self.host, self.transport = route, host, transport
        self.name = host.name
        self.fingerprint: str | None = None
        self.unusable: str | None = None
        self.slices = 0
        self.down_until = 0.0
        self._beat: tuple[int | None, float] = (None, time.monotonic())
        self.thread = threading.Thread(target=self._run, name=f"reembed-{self.name}", daemon=True)

    def path(self, *parts: str) -> str:
        return self.transport.join(serve.serve_relpath(self.route.model, *parts))

    # ---- the server ---------------------------------------------------------------------
    def heartbeat(self) -> dict:
        # a file read (SFTP, the io timeout), not a command: a host that stops answering
        # shows within seconds
        try:
            return json.loads(self.transport.read_bytes(self.path(serve.HEARTBEAT_NAME)))
        except RemoteFileMissing:
            return {}
        except ValueError:
            return {}             # being replaced: read again at the next poll

    def _alive(self, hb: dict) -> bool:
        """The beat moved within the route's stale_s (this machine's clock only)."""
        now = time.monotonic()
        beat, since = self._beat
        if hb.get("beat") != beat:
            self._beat = (hb.get("beat"), now)
            return True
        return now - since < self.route.stale_s

    def start_server(self) -> None:
        r = self.route
        args = ["reembed-serve", r.model, "--root", self.transport.root, "--detach",
                "--idle-exit-s", str(r.idle_exit_s)]
        if r.batch_size:
            args += ["--batch-size", str(r.batch_size)]
        result = self.transport.imageselector(args, timeout=r.start_timeout_s)
        if result.exit_status not in (0, serve.ALREADY_RUNNING_EXIT):
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise HostUnusable(f"{self.name}: reembed-serve did not start (exit "
                               f"{result.exit_status}): {last}")
        self._beat = (None, time.monotonic())

    def ready(self, timeout_s: float) -> str:
        """Wait for the server's model to load (starting the server if none answers);
        returns its fingerprint."""
        deadline = time.monotonic() + timeout_s
        started = 0
        while True:
            if self.route.should_stop():
                raise UserError(f"stopped while {self.name} loaded the model: nothing was "
                                f"computed; run the same command to start again")
            hb = self.heartbeat()
            state = hb.get("state")
            if state == "error":
                raise HostUnusable(f"{self.name}: {hb.get('error')}")
            if state in ("ready", "busy") and self._alive(hb):
                self.fingerprint = hb["fingerprint"]
                return self.fingerprint
            if state in (None, "stopped") or not self._alive(hb):
                if started >= 2:
                    raise HostUnusable(f"{self.name}: reembed-serve started twice and does not "
                                       f"answer (see its logs/reembed-serve.log)")
                self.start_server()
                started += 1
            if time.monotonic() > deadline:
                raise HostDown(f"{self.name}: the model did not load within {timeout_s:.0f} s")
            time.sleep(self.route.poll_s)

    def clear_slices(self) -> None:
        """Remove slice and result files: ours at the end, an earlier run's at the start (a
        result left by a stopped run must not be taken for this run's)."""
        for folder in ("inbox", "outbox"):
            try:
                names = self.transport.list_dir(self.path(folder))
            except RemoteFileMissing:
                continue
            for name in names:
                if name.startswith("s") and name.split(".")[-1] in ("slice", "npz", "error"):
                    self.transport.remove(self.path(folder, name))

    def stop_server(self) -> None:
        """Ask the server to exit and take our leftover slices back."""
        try:
            self.transport.write_bytes_atomic(self.path(serve.KILL_NAME), b"reembed ended\n")
            self.clear_slices()
        except RemoteError as exc:
            log.warning("%s: could not stop reembed-serve (%s); it exits after %.0f s idle",
                        self.name, exc, self.route.idle_exit_s)
        finally:
            self.transport.close()

    # ---- one slice --------------------------------------------------------------------------
    def embed(self, work, payload: bytes) -> dict:
        r = self.route
        if self.fingerprint is None or not self._alive(self.heartbeat()):
            if self.ready(r.slice_timeout_s) != r.fingerprint_value:
                raise HostUnusable(f"{self.name}: its weights changed during the re-embed "
                                   f"(fingerprint {self.fingerprint}, the column's "
                                   f"{r.fingerprint_value})")
        name = slice_name(work)
        self.transport.write_bytes_atomic(self.path("inbox", f"{name}.slice"), payload)
        deadline = time.monotonic() + r.slice_timeout_s
        while True:
            if r.done.is_set():
                raise HostDown(f"{self.name}: the re-embed is ending")
            names = set(self.transport.list_dir(self.path("outbox")))
            if f"{name}.npz" in names:
                data = self.transport.read_bytes(self.path("outbox", f"{name}.npz"), 1 << 30)
                self.transport.remove(self.path("outbox", f"{name}.npz"))
                vectors, meta = serve.unpack_result(data, len(work.ids))
                if meta.get("fingerprint") != r.fingerprint_value:
                    self.fingerprint = None        # its server was restarted with other weights
                    raise HostDown(f"{self.name}: a result with fingerprint "
                                   f"{meta.get('fingerprint')}, not the column's")
                self.slices += 1
                r.compute_s.append(float(meta.get("seconds", 0.0)))
                return vectors
            if f"{name}.error" in names:
                text = self.transport.read_text(self.path("outbox", f"{name}.error")).strip()
                self.transport.remove(self.path("outbox", f"{name}.error"))
                raise UserError(f"{self.name}: shard {work.shard.number} batch line "
                                f"{work.slice.seq}: {text}")
            hb = self.heartbeat()
            if hb.get("state") in ("stopped", "error", None) or not self._alive(hb):
                self.fingerprint = None            # started again before the next slice
                raise HostDown(f"{self.name}: reembed-serve stopped answering")
            if time.monotonic() > deadline:
                raise HostDown(f"{self.name}: no vectors within {r.slice_timeout_s:.0f} s")
            time.sleep(r.poll_s)

    def _take_back(self, work) -> None:
        try:
            self.transport.remove(self.path("inbox", f"{slice_name(work)}.slice"))
        except RemoteError:
            pass

    def _run(self) -> None:
        r = self.route
        while not r.done.is_set():
            if self.unusable or time.monotonic() < self.down_until:
                time.sleep(0.1)
                continue
            try:
                key, work, payload, tries = r.todo.get(timeout=0.2)
            except queue.Empty:
                continue
            if key in r.finished:
                continue
            try:
                r.results.put((key, work, self.embed(work, payload), self.name))
            except UserError as exc:
                r.results.put((key, work, exc, self.name))
            except (HostKeyError, AuthFailed, HostsConfigError, RemoteFileMissing, HostUnusable) as exc:
                self.unusable = str(exc)
                log.warning("re-embed goes on without %s: %s", self.name, exc)
                r.give_back(key, work, payload, tries, exc, counted=False)
            except RemoteError as exc:
                self.down_until = time.monotonic() + r.retry_s
                self.transport.close()
                log.warning("%s: %s; its slice goes back to the queue", self.name, exc)
                self._take_back(work)
                r.give_back(key, work, payload, tries, exc, counted=True)


class HostsRoute:
    name = "hosts"

    def __init__(self, lanes: list, model: str, batch_size: int, slice_timeout_s: float = 1800.0,
                 poll_s: float = 0.5, retry_s: float = 5.0, idle_exit_s: float = 600.0,
                 start_timeout_s: float = 120.0, stale_s: float = STALE_S):
        self.model, self.batch_size = model, batch_size
        self.stale_s = stale_s
        self.slice_timeout_s, self.poll_s, self.retry_s = slice_timeout_s, poll_s, retry_s
        self.idle_exit_s, self.start_timeout_s = idle_exit_s, start_timeout_s
        self.lanes = [HostLane(self, host, transport) for host, transport in lanes]
        self.todo: queue.Queue = queue.Queue()
        self.results: queue.Queue = queue.Queue()
        self.finished: set = set()
        self.done = threading.Event()
        self.fingerprint_value: str | None = None
        self.retried = 0
        self.compute_s: list[float] = []    # seconds inside the servers, per slice
        self.should_stop = lambda: False

    def _usable(self) -> list[HostLane]:
        return [lane for lane in self.lanes if not lane.unusable]

    def _none_left(self) -> UserError:
        return UserError("no worker can re-embed: " + "; ".join(
            lane.unusable or f"{lane.name}: not ready" for lane in self.lanes))

    def fingerprint(self) -> str:
        """Start every host's server and wait for its model; they must run the same weights."""
        if self.fingerprint_value:
            return self.fingerprint_value
        for lane in self.lanes:
            try:
                lane.start_server()
            except RemoteError as exc:
                lane.unusable = str(exc)
        for lane in self._usable():
            try:
                lane.ready(self.start_timeout_s + self.slice_timeout_s)
                lane.clear_slices()
            except RemoteError as exc:
                lane.unusable = str(exc)
                log.warning("re-embed goes on without %s: %s", lane.name, exc)
        lanes = self._usable()
        if not lanes:
            raise self._none_left()
        prints = {lane.fingerprint for lane in lanes}
        if len(prints) > 1:
            raise UserError("the workers run different weights for " + self.model + ": " + ", ".join(
                f"{lane.name} {lane.fingerprint}" for lane in lanes) + " (one column, one set of weights)")
        self.fingerprint_value = prints.pop()
        return self.fingerprint_value

    def give_back(self, key, work, payload, tries: int, exc, counted: bool) -> None:
        if counted:
            self.retried += 1
            tries += 1
        if tries >= MAX_TRIES:
            self.results.put((key, work, UserError(
                f"shard {work.shard.number} batch line {work.slice.seq} was lost {MAX_TRIES} "
                f"times (last: {exc})"), None))
        else:
            self.todo.put((key, work, payload, tries))

    def run(self, work, load):
        """(work, vectors) as slices finish (not in order); returns early when asked to stop."""
        self.fingerprint()
        for lane in self.lanes:
            if not lane.thread.is_alive() and not lane.unusable:
                lane.thread.start()
        out: dict = {}
        todo = iter(work)
        exhausted = False
        while True:
            while not exhausted and len(out) < PER_HOST * max(1, len(self._usable())):
                w = next(todo, None)
                if w is None:
                    exhausted = True
                    break
                out[w.key] = w
                self.todo.put((w.key, w, serve.pack_slice(*load(w)), 0))
            if not out or self.should_stop():
                return
            try:
                key, w, got, _who = self.results.get(timeout=0.5)
            except queue.Empty:
                if not self._usable():
                    raise self._none_left() from None
                continue
            if key not in out:
                continue                      # a slice given back, then finished twice
            if isinstance(got, Exception):
                raise got
            del out[key]
            self.finished.add(key)
            yield w, got

    def close(self) -> None:
        self.done.set()
        for lane in self.lanes:
            if lane.thread.is_alive():
                lane.thread.join(self.slice_timeout_s)
        for lane in self.lanes:
            lane.stop_server()
