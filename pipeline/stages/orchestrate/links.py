"""One thread per worker host doing all I/O with it, so a slow or dead host never blocks the
others nor the imports. The main loop sends it commands and reads its events; the thread
never touches the DB.

Two ways to move batches, one interface:
  * ``tar``: a batch travels as ONE tar (one verified upload, one remote command to unpack),
    a result comes back as one tar packed on the host (one verified download). Used for SSH
    workers, and for the local one when ``orchestrate.local_direct`` is off.
  * ``direct`` (the local worker): the batch folder is built in the worker's inbox from hard
    links to the downloaded files; the result is read in place in its outbox.
Host-side steps are pipeline/stages/orchestrate/hostops.py: run as one remote command over SSH,
called in-process for the local worker.
"""
from __future__ import annotations

import inspect
import io
import json
import logging
import os
import queue
import shutil
import tarfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.batches import batchfile, results
from pipeline.batches.batchfile import ManifestRow
from pipeline.core.fsutil import fsync_dir
from pipeline.stages.orchestrate import hostops
from remote.commands import ROOT_MISSING, python_c_loader
from remote.errors import (AuthFailed, CommandFailed, ConnectionLost, HostKeyError,
                           HostsConfigError, RemoteError, RemoteFileMissing, RemoteTimeout)
from remote.transport import LocalTransport, Transport

# The worker's folders (batchfile's names) plus ours for tars in transit.
LAYOUT = {"inbox": batchfile.INBOX, "outbox": batchfile.OUTBOX, "rejected": batchfile.REJECTED,
          "incoming": "worker/incoming", "results": "worker/results",
          "heartbeat": "run/worker.json", "kill_file": "KILL_WORKER"}
KILL_MARKER = "orchestrator"
_LONG_OPS = ("unpack", "pack", "cleanup", "drop")
ALREADY_RUNNING_EXIT = 3       # pipeline.core.errors.AlreadyRunning.exit_code
_LOADER = None

# Link states (the connection, not the worker process).
CONNECTING, OK, UNREACHABLE, ERROR = "connecting", "ok", "unreachable", "error"


def _loader() -> str:
    global _LOADER
    if _LOADER is None:
        _LOADER = python_c_loader(inspect.getsource(hostops))
    return _LOADER


class OpFailed(RemoteError):
    """A host-side step refused (bad tar, missing result...)."""


class RootMissing(RemoteFileMissing):
    pass


def permanent(exc: BaseException) -> bool:
    """Errors that retrying soon will not fix: they need the operator (key, root, config)."""
    return isinstance(exc, (HostKeyError, AuthFailed, HostsConfigError, RootMissing,
                            CommandFailed, OpFailed))


@dataclass
class Event:
    kind: str                 # polled, shipped, ship_failed, fetched, fetch_failed, cleaned,
    worker: str               # started, start_failed, link_error, stopped_worker
    data: dict = field(default_factory=dict)


@dataclass
class ShipOrder:
    batch_id: int
    name: str
    rows: list[ManifestRow]


class WorkerLink:
    def __init__(self, name: str, transport: Transport, mode: str, spool: Path,
                 download_dir: Path, events: "queue.Queue[Event]", poll_s: float,
                 error_retry_s: float, log: logging.Logger, marker: str):
        self.name = name
        self.transport = transport
        self.mode = mode
        self.spool = Path(spool)
        self.download_dir = Path(download_dir)
        self.events = events
        self.poll_s = poll_s
        self.error_retry_s = error_retry_s
        self.log = log
        self.marker = marker
        self.local = isinstance(transport, LocalTransport)
        self.commands: queue.Queue = queue.Queue()
        self._queued: set[tuple[str, str]] = set()
        self._qlock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._poll_now = True
        self.state = CONNECTING
        self.error: str | None = None
        self.error_at: float | None = None
        self.failures = 0
        self.tidied = False
        self.ship_s: float | None = None
        self._retry_at = 0.0
        self._busy = False
        self.down_since: float | None = None
        if hasattr(transport, "on_retry"):
            transport.on_retry = self._retrying
        self.thread = threading.Thread(target=self._run, name=f"link-{name}", daemon=True)

    # ---- the main loop's side ---------------------------------------------------------------
    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def join(self, timeout: float) -> bool:
        self.thread.join(timeout)
        return not self.thread.is_alive()

    def submit(self, op: str, key: str = "", **payload) -> bool:
        """Queue an operation; a duplicate of one still queued is ignored (False)."""
        with self._qlock:
            if (op, key) in self._queued:
                return False
            self._queued.add((op, key))
        self.commands.put((op, key, payload))
        self._wake.set()
        return True

    def poll_soon(self) -> None:
        self._poll_now = True
        self._wake.set()

    @property
    def parallel(self) -> int:
        """Batches the worker runs at once (a Ray worker: one per actor)."""
        return 1

    @property
    def usable(self) -> bool:
        return self.state == OK

    def idle(self) -> bool:
        """Nothing queued and nothing running (a poll may start any moment)."""
        return self.commands.empty() and not self._busy

    # ---- the thread -------------------------------------------------------------------------
    def _emit(self, kind: str, **data) -> None:
        self.events.put(Event(kind, self.name, data))

    def _run(self) -> None:
        next_poll = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            if self.state in (UNREACHABLE, ERROR) and now < self._retry_at:
                self._wake.wait(min(1.0, self._retry_at - now))
                self._wake.clear()
                continue
            if self.state in (UNREACHABLE, ERROR) or self._poll_now:
                self._poll_now = False
                next_poll = now + self.poll_s
                self._guarded("poll", "", {})
                continue
            # queued work first; a poll when there is none (or it is long overdue)
            try:
                op, key, payload = self.commands.get_nowait()
            except queue.Empty:
                op = None
            if op is None or now >= next_poll + 2 * self.poll_s:
                if op is not None:
                    self.commands.put((op, key, payload))   # after this poll
                    op = None
                if now >= next_poll:
                    next_poll = now + self.poll_s
                    self._guarded("poll", "", {})
                    continue
                self._wake.wait(min(0.25, max(0.01, next_poll - now)))
                self._wake.clear()
                continue
            with self._qlock:
                self._queued.discard((op, key))
            self._guarded(op, key, payload)
        self._close()

    def _guarded(self, op: str, key: str, payload: dict) -> None:
        t0 = time.monotonic()
        self._busy = op != "poll"
        try:
            getattr(self, f"_op_{op}")(key, **payload)
            self.log.debug("%s: %s %s took %.2f s", self.name, op, key, time.monotonic() - t0)
        except (RemoteError, OSError, tarfile.TarError, ValueError) as exc:
            self._failed(op, key, payload, exc)
        except Exception as exc:  # a bug must not kill the link silently
            self.log.exception("%s: %s %s failed", self.name, op, key)
            self._failed(op, key, payload, exc)
        finally:
            self._busy = False

    def _failed(self, op: str, key: str, payload: dict, exc: BaseException) -> None:
        text = f"{type(exc).__name__}: {exc}" if not isinstance(exc, RemoteError) else str(exc)
        connection = isinstance(exc, RemoteError) and not isinstance(exc, OpFailed)
        if op == "ship":
            self._emit("ship_failed", batch_id=payload["order"].batch_id,
                       name=payload["order"].name, error=text)
        elif op == "fetch":
            self._emit("fetch_failed", name=key, error=text, bad_result=not connection)
        elif op == "start":
            self._emit("start_failed", error=text, permanent=permanent(exc))
        if op == "poll" or connection:
            self._link_down(exc, text)
        else:
            self.log.warning("%s: %s %s failed: %s", self.name, op, key, text)

    def _link_down(self, exc: BaseException, text: str) -> None:
        perm = permanent(exc)
        self.failures += 1
        if self.state in (OK, CONNECTING):
            self.down_since = time.time()
        self.state = ERROR if perm else UNREACHABLE
        self.error, self.error_at = text, time.time()
        delay = self.error_retry_s if perm else min(60.0, self.poll_s * 2 ** min(self.failures - 1, 5))
        self._retry_at = time.monotonic() + delay
        self.tidied = False
        # what was queued cannot go out now: ships are handed back, the rest re-derived later
        dropped = []
        while True:
            try:
                op, key, payload = self.commands.get_nowait()
            except queue.Empty:
                break
            with self._qlock:
                self._queued.discard((op, key))
            if op == "ship":
                dropped.append(payload["order"])
        for order in dropped:
            self._emit("ship_failed", batch_id=order.batch_id, name=order.name,
                       error=f"not sent: {text}")
        self._emit("link_error", error=text, permanent=perm)
        self._close()

    def _close(self) -> None:
        try:
            self.transport.close()
        except Exception:
            pass

    def _retrying(self, exc: BaseException) -> None:
        # the first failure of a step retried once: without it a failure reported after
        # two time limits looks like one limit enforced late
        text = str(exc)
        if not text.startswith(f"{self.name}:"):
            text = f"{self.name}: {text}"
        self.log.warning("%s; once more on a fresh connection", text)

    # ---- host-side steps --------------------------------------------------------------------
    def hostop(self, op: str, **spec) -> dict:
        spec = {"root": self.transport.root, "layout": LAYOUT, **spec}
        if self.local:
            try:
                return hostops.call(op, spec)
            except hostops.RootMissing:
                raise RootMissing(f"{self.name}: root {self.transport.root} does not exist") from None
            except hostops.OpError as exc:
                raise OpFailed(f"{self.name}: {op}: {exc}") from None
        python = getattr(self.transport, "python", None) or self.transport.host.python
        argv = [python, "-c", _loader(), op, json.dumps(spec)]
        # unpacking or packing a whole batch may take minutes on a slow disk
        settings = getattr(getattr(self.transport, "conn", None), "settings", None)
        timeout = settings.transfer_timeout if settings and op in _LONG_OPS else None
        try:
            result = self.transport.run(argv, timeout=timeout)
        except (ConnectionLost, RemoteTimeout) as exc:
            self._close()      # every step is idempotent: once more on a fresh connection
            self._retrying(exc)
            result = self.transport.run(argv, timeout=timeout)
        if result.exit_status == ROOT_MISSING:
            raise RootMissing(f"{self.name}: root {self.transport.root} does not exist on that host")
        if not result.ok:
            last = (result.stderr.strip().splitlines() or [""])[-1]
            if result.exit_status == 1 and last:
                raise OpFailed(f"{self.name}: {op}: {last}")
            raise CommandFailed(f"{self.name}: {op} exited {result.exit_status}"
                                + (f": {last}" if last else "") + f" (python {python})",
                                result.exit_status, result.stdout, result.stderr)
        try:
            return json.loads(result.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise OpFailed(f"{self.name}: {op} printed no JSON ({result.stdout.strip()[:200]!r})") from None

    # ---- operations -------------------------------------------------------------------------
    def _op_poll(self, key: str) -> None:
        t0 = time.time()
        st = self.hostop("state")
        if not self.tidied:
            if st.get("leftovers"):
                self.hostop("tidy")
            self.tidied = True
        if self.state != OK:
            self.log.info("%s: connected (%s)", self.name, self.transport.host.describe())
        self.state, self.failures = OK, 0
        self.error = None
        self._emit("polled", state=st, asked_at=t0)

    def _op_ship(self, key: str, order: ShipOrder) -> None:
        t0 = time.monotonic()
        if self.mode == "direct":
            self._ship_direct(order)
        else:
            self._ship_tar(order)
        seconds = time.monotonic() - t0
        self.ship_s = seconds if self.ship_s is None else 0.5 * self.ship_s + 0.5 * seconds
        self._emit("shipped", batch_id=order.batch_id, name=order.name, seconds=seconds)

    def _source(self, row: ManifestRow) -> Path:
        return self.download_dir / batchfile.image_name(row.listing_id, row.image_id)

    def _ship_direct(self, order: ShipOrder) -> None:
        inbox = Path(self.transport.join(batchfile.INBOX))
        outbox = Path(self.transport.join(batchfile.OUTBOX))
        inbox.mkdir(parents=True, exist_ok=True)
        final = inbox / order.name
        if final.is_dir() or (outbox / order.name).is_dir():
            return
        staging = inbox / (order.name + batchfile.PARTIAL_SUFFIX)
        if staging.exists():
            shutil.rmtree(staging)
        (staging / batchfile.IMAGES).mkdir(parents=True)
        for row in order.rows:
            src, dst = self._source(row), staging / batchfile.IMAGES / row.image_name
            try:
                os.link(src, dst)          # no copy: the download stays until import
            except OSError as exc:
                if isinstance(exc, FileNotFoundError):
                    raise
                shutil.copyfile(src, dst)
        data = json.dumps(batchfile.manifest_dict(order.name, order.rows), indent=1,
                          ensure_ascii=False).encode("utf-8")
        with open(staging / batchfile.MANIFEST, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(staging / batchfile.IMAGES)
        fsync_dir(staging)
        os.replace(staging, final)
        fsync_dir(inbox)

    def _ship_tar(self, order: ShipOrder) -> None:
        out_dir = self.spool / "out"
        out_dir.mkdir(parents=True, exist_ok=True)
        tar_path = out_dir / f"{order.name}.tar"
        tmp = out_dir / f".{order.name}.tar.tmp"
        with open(tmp, "wb") as f:
            write_batch_tar(f, order, self._source)
        os.replace(tmp, tar_path)
        try:
            remote_tar = self.transport.join(LAYOUT["incoming"], f"{order.name}.tar")
            self.transport.put_file(tar_path, remote_tar)     # verified size and sha256
            self.hostop("unpack", name=order.name)
        finally:
            tar_path.unlink(missing_ok=True)

    def _op_fetch(self, key: str) -> None:
        t0 = time.monotonic()
        path = self._fetch_direct(key) if self.mode == "direct" else self._fetch_tar(key)
        self._emit("fetched", name=key, path=str(path), seconds=time.monotonic() - t0)

    def _fetch_direct(self, name: str) -> Path:
        path = Path(self.transport.join(batchfile.OUTBOX, name))
        if not (path / results.RESULT).is_file():
            raise OpFailed(f"{self.name}: no result for {name} in {path.parent}")
        return path

    def _fetch_tar(self, name: str) -> Path:
        in_dir = self.spool / "in"
        in_dir.mkdir(parents=True, exist_ok=True)
        final = in_dir / name
        if (final / results.RESULT).is_file():
            return final                      # fetched before a restart: complete (renamed)
        packed = self.hostop("pack", name=name)
        local_tar = in_dir / f"{name}.tar"
        try:
            self.transport.get_file(packed["file"], local_tar, expected_sha256=packed["sha256"])
            install_result(local_tar, name, in_dir)
        finally:
            local_tar.unlink(missing_ok=True)
        return final

    def _op_cleanup(self, key: str, inbox: bool = False) -> None:
        self.hostop("cleanup", name=key, inbox=inbox)
        self._emit("cleaned", name=key)

    def _op_drop(self, key: str) -> None:
        out = self.hostop("drop", name=key)
        self._emit("dropped", name=key, removed=out.get("removed"), in_hand=out.get("in_hand"))

    def _op_start(self, key: str) -> None:
        result = self.transport.start_stage("worker")
        if result.ok or result.exit_status == ALREADY_RUNNING_EXIT:
            self.log.info("%s: worker stage %s", self.name,
                          "started" if result.ok else "was already running")
            self._emit("started", already=not result.ok)
        elif result.exit_status == ROOT_MISSING:
            raise RootMissing(f"{self.name}: root {self.transport.root} does not exist on that host")
        else:
            text = (result.stderr.strip().splitlines() or [f"exit {result.exit_status}"])[-1]
            self._emit("start_failed", error=f"{self.name}: cannot start the worker: {text}",
                       permanent=True)
        self.poll_soon()

    def _op_stop_worker(self, key: str) -> None:
        self.transport.stop("KILL_WORKER", f"{KILL_MARKER} {self.marker}: stop after the run")
        self._emit("stopped_worker")

    def _op_clear_kill(self, key: str) -> None:
        out = self.hostop("clear_kill", marker=KILL_MARKER + " ")
        self._emit("kill_cleared", removed=bool(out.get("removed")))
        self.poll_soon()


def write_batch_tar(fileobj, order: ShipOrder, source) -> None:
    """The batch as one tar (manifest, then images/): what a worker's ``unpack`` accepts.
    ``source(row)``: the downloaded file of a row."""
    manifest = json.dumps(batchfile.manifest_dict(order.name, order.rows), indent=1,
                          ensure_ascii=False).encode("utf-8")
    with tarfile.open(fileobj=fileobj, mode="w:", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(f"{order.name}/{batchfile.MANIFEST}")
        info.size, info.mtime, info.mode = len(manifest), int(time.time()), 0o644
        tar.addfile(info, io.BytesIO(manifest))
        for row in order.rows:
            tar.add(str(source(row)), arcname=f"{order.name}/{batchfile.IMAGES}/{row.image_name}",
                    recursive=False)


def install_result(tar_path: Path, name: str, in_dir: Path) -> Path:
    """A result tar -> ``in_dir/name`` (checked member by member, renamed into place whole)."""
    final = in_dir / name
    staging = in_dir / f".{name}.tmp"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    _extract_result(tar_path, name, staging)
    fsync_dir(staging)
    os.replace(staging / name, final)
    shutil.rmtree(staging, ignore_errors=True)
    fsync_dir(in_dir)
    return final


def _extract_result(tar_path: Path, name: str, dest: Path) -> None:
    """Only plain files under ``name/`` (images/ one level down): nothing can land outside."""
    with tarfile.open(tar_path, "r:") as tar:
        for member in tar:
            parts = member.name.split("/")
            ok = (member.isfile() and parts[0] == name and 2 <= len(parts) <= 3
                  and all(p and p not in (".", "..") and "\\" not in p for p in parts)
                  and (len(parts) == 2 or parts[1] == batchfile.IMAGES))
            if not ok:
                raise OpFailed(f"result tar of {name}: unexpected member {member.name!r}")
            target = dest.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            src = tar.extractfile(member)
            with open(target, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
                if not hasattr(os, "sync"):
                    out.flush()
                    os.fsync(out.fileno())
    if hasattr(os, "sync"):
        os.sync()   # one flush for the whole result instead of one fsync per image
    for sub in (dest / name / batchfile.IMAGES, dest / name):
        if sub.is_dir():
            fsync_dir(sub)
