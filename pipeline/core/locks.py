"""Who holds the state DB: the writer, the readers, and the processes that just have it open.

SQLite in WAL mode takes POSIX byte-range locks on the ``-shm`` file: byte 120 held WRITE
while a write transaction is open, one of bytes 123-127 held READ by each open read
transaction (a writer also holds one), byte 128 held READ by every connection that has
mapped the WAL index. A connection that never queried holds no lock, only a descriptor.

- Linux: one read of ``/proc/locks`` gives every lock with its pid; descriptors come from
  ``/proc/<pid>/fd``. No descriptor on the DB is ever opened here.
- macOS (the iMac): a helper process with no SQLite connection (``python -m
  pipeline.core.lockprobe``) asks ``fcntl(F_GETLK)`` who holds each byte; it must be a separate
  process because closing any descriptor on a file drops the POSIX locks the process holds
  on it. Open holders come from psutil. Both paths give the same list.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.core.procs import describe

WAL_WRITE_BYTE = 120
WAL_READ_BYTES = range(123, 128)
WAL_DMS_BYTE = 128
MODES = ("writer", "reader", "open")
_RANK = {"writer": 0, "reader": 1, "open": 2}


@dataclass
class Holder:
    pid: int
    mode: str            # writer, reader, open
    name: str = ""
    cmdline: str = ""
    since: float | None = None
    source: str = ""     # proc-locks, getlk, fd

    def as_json(self) -> dict:
        return asdict(self)


def db_files(db_path: Path) -> list[Path]:
    db_path = Path(db_path)
    return [db_path, Path(f"{db_path}-wal"), Path(f"{db_path}-shm")]


def _file_key(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)


def parse_proc_locks(text: str) -> list[dict]:
    """Parse /proc/locks into dicts (kind, mode, pid, dev, ino, start, end); waiters skipped."""
    locks = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 8 or "->" in parts[:2]:
            continue
        try:
            kind, mode, pid, dev_ino, start, end = parts[1], parts[3], int(parts[4]), parts[5], parts[6], parts[7]
            major, minor, ino = dev_ino.split(":")
            locks.append({
                "kind": kind, "mode": mode, "pid": pid,
                "dev": (int(major, 16), int(minor, 16)), "ino": int(ino),
                "start": int(start), "end": None if end == "EOF" else int(end),
            })
        except (ValueError, IndexError):
            continue
    return locks


def _covers(lock: dict, byte: int) -> bool:
    return lock["start"] <= byte and (lock["end"] is None or byte <= lock["end"])


def holders_from_proc_locks(db_path: Path, text: str | None = None) -> dict[int, str]:
    """pid -> strongest mode, from the POSIX locks on the DB's -shm and main file."""
    if text is None:
        try:
            text = Path("/proc/locks").read_text()
        except OSError:
            return {}
    db_key = _file_key(db_path)
    shm_key = _file_key(Path(f"{db_path}-shm"))
    modes: dict[int, str] = {}

    def better(pid: int, mode: str) -> None:
        if pid <= 0:
            return
        if pid not in modes or _RANK[mode] < _RANK[modes[pid]]:
            modes[pid] = mode

    for lock in parse_proc_locks(text):
        key = (*lock["dev"], lock["ino"])
        if shm_key and key == shm_key:
            if lock["mode"] == "WRITE" and _covers(lock, WAL_WRITE_BYTE):
                better(lock["pid"], "writer")
            elif any(_covers(lock, b) for b in WAL_READ_BYTES):
                better(lock["pid"], "reader")
            else:
                better(lock["pid"], "open")
        elif db_key and key == db_key:
            # a lock on the DB file itself (WAL start-up, checkpoints): the process has it open
            better(lock["pid"], "open")
    return modes


def open_holders_from_proc(db_path: Path, exclude: set[int] | None = None) -> set[int]:
    """pids with a descriptor on the DB, its -wal or its -shm (Linux /proc/<pid>/fd)."""
    targets = {str(p) for p in db_files(db_path)}
    targets |= {os.path.realpath(p) for p in targets}
    found: set[int] = set()
    exclude = exclude or set()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit():
            continue
        pid = int(entry)
        if pid in exclude:
            continue
        fd_dir = f"/proc/{entry}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"{fd_dir}/{fd}") in targets:
                    found.add(pid)
                    break
            except OSError:
                continue
    return found


def open_holders_from_psutil(db_path: Path, exclude: set[int] | None = None) -> set[int]:
    """The portable (macOS) way; slower than /proc."""
    import psutil

    targets = {os.path.realpath(p) for p in db_files(db_path)}
    found: set[int] = set()
    for proc in psutil.process_iter(["pid"]):
        if exclude and proc.pid in exclude:
            continue
        try:
            if any(os.path.realpath(f.path) in targets for f in proc.open_files()):
                found.add(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, OSError):
            continue
    return found


# ---------------------------------------------------------------------------
# The F_GETLK probe (macOS production path; also run on Linux by the tests)
# ---------------------------------------------------------------------------
def _flock_struct(lock_type: int, start: int, length: int) -> tuple[str, bytes]:
    import fcntl
    import struct

    if sys.platform == "darwin" or "bsd" in sys.platform:
        fmt = "qqihh"  # l_start, l_len, l_pid, l_type, l_whence
        return fmt, struct.pack(fmt, start, length, 0, lock_type, os.SEEK_SET)
    fmt = "hhqqi"      # Linux: l_type, l_whence, l_start, l_len, l_pid
    return fmt, struct.pack(fmt, lock_type, os.SEEK_SET, start, length, 0) + b"\0" * 8


def getlk(fd: int, byte: int) -> tuple[str, int] | None:
    """Who would block a write lock on ``byte``: (READ|WRITE, pid) or None."""
    import fcntl
    import struct

    fmt, packed = _flock_struct(fcntl.F_WRLCK, byte, 1)
    result = fcntl.fcntl(fd, fcntl.F_GETLK, packed)
    size = struct.calcsize(fmt)
    if fmt == "qqihh":
        _start, _len, pid, ltype, _wh = struct.unpack(fmt, result[:size])
    else:
        ltype, _wh, _start, _len, pid = struct.unpack(fmt, result[:size])
    if ltype == fcntl.F_UNLCK:
        return None
    return ("WRITE" if ltype == fcntl.F_WRLCK else "READ", pid)


def probe_shm(shm_path: Path) -> dict[int, str]:
    """Run in a process WITHOUT an SQLite connection: pid -> mode from F_GETLK on -shm."""
    modes: dict[int, str] = {}
    try:
        fd = os.open(shm_path, os.O_RDONLY)
    except OSError:
        return modes
    try:
        hit = getlk(fd, WAL_WRITE_BYTE)
        if hit and hit[0] == "WRITE":
            modes[hit[1]] = "writer"
        for byte in WAL_READ_BYTES:
            hit = getlk(fd, byte)
            if hit and hit[1] not in modes:
                modes[hit[1]] = "reader"
        hit = getlk(fd, WAL_DMS_BYTE)
        if hit and hit[1] not in modes:
            modes[hit[1]] = "open"
    finally:
        os.close(fd)  # this process holds no locks, so closing drops nothing
    return modes


def holders_from_probe(db_path: Path, timeout_s: float = 10.0) -> dict[int, str]:
    """Run the F_GETLK probe in a helper process and read its answer."""
    out = subprocess.run([sys.executable, "-m", "pipeline.core.lockprobe", f"{db_path}-shm"],
                         capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
    if out.returncode != 0:
        raise RuntimeError(f"lock probe failed: {out.stderr.strip()}")
    return {int(pid): mode for pid, mode in json.loads(out.stdout).items()}


# ---------------------------------------------------------------------------
# The combined view
# ---------------------------------------------------------------------------
class LockTracker:
    """Remembers since when each (pid, mode) has been seen, across snapshots.

    ``open_scan_s``: the writer and readers come from one cheap read of /proc/locks every
    time, but the scan of every process's descriptors (the holders that merely have the DB
    open; ~20 us per process) and, on macOS, the F_GETLK helper process run at most that
    often; a live display polling every second sets it to a few seconds. ``persist``: write
    the since-times to ``seen_path`` when they change (the CLI and the console both do, and
    both merge what the other wrote), or only read them from it."""

    def __init__(self, seen_path: Path | None = None, open_scan_s: float = 0.0, persist: bool = True):
        self.seen_path = seen_path
        self.open_scan_s = open_scan_s
        self.persist = persist
        self.first_seen: dict[str, float] = {}
        self._open_pids: set[int] = set()
        self._probe_modes: dict[int, str] = {}
        self._scanned_at: float | None = None
        self._file_sig: tuple | None = None      # (mtime_ns, size) of seen_path when last read
        self._file_view: dict[str, float] = {}   # what seen_path holds, as last read or written
        self._merge_seen()

    def _merge_seen(self) -> None:
        """Take the since-times another process wrote (the CLI, the status, a console): the
        earliest of both wins, so `imageselector locks` and the console show the same held
        time for a holder, whichever saw it first. Re-read only when the file changed."""
        if self.seen_path is None:
            return
        try:
            st = os.stat(self.seen_path)
            sig = (st.st_mtime_ns, st.st_size)
            if sig == self._file_sig:
                return
            theirs = json.loads(Path(self.seen_path).read_text())
        except (OSError, ValueError):
            return
        if not isinstance(theirs, dict):
            return
        self._file_sig = sig
        self._file_view = {k: v for k, v in theirs.items() if isinstance(v, (int, float))}
        for key, since in self._file_view.items():
            self.first_seen[key] = min(since, self.first_seen.get(key, since))

    def _scan_due(self) -> bool:
        now = time.monotonic()
        if self._scanned_at is None or now - self._scanned_at >= self.open_scan_s:
            self._scanned_at = now
            return True
        return False

    def holders(self, db_path: Path, method: str = "auto", now: float | None = None) -> list[Holder]:
        now = time.time() if now is None else now
        me = os.getpid()
        if method == "auto":
            method = "proc" if os.path.exists("/proc/locks") else "probe"
        scan = self._scan_due()
        if method == "proc":
            modes = holders_from_proc_locks(db_path)
            if scan:
                self._open_pids = open_holders_from_proc(db_path, exclude={me})
            source = "proc-locks"
        else:
            if scan:
                self._probe_modes = holders_from_probe(db_path) if Path(f"{db_path}-shm").exists() else {}
                self._open_pids = open_holders_from_psutil(db_path, exclude={me})
            modes = dict(self._probe_modes)
            source = "getlk"
        self._merge_seen()
        open_pids = self._open_pids
        for pid in open_pids:
            modes.setdefault(pid, "open")
        modes.pop(me, None)  # this process's own read connection (status) is not news
        result = []
        live_keys = set()
        for pid, mode in modes.items():
            key = f"{pid}:{mode}"
            live_keys.add(key)
            since = self.first_seen.setdefault(key, now)
            info = describe(pid)
            if not info["name"] and not info["cmdline"] and info["started"] is None:
                continue  # gone between the lock read and now
            result.append(Holder(pid=pid, mode=mode, name=info["name"], cmdline=info["cmdline"],
                                 since=since, source=source))
        self.first_seen = {k: v for k, v in self.first_seen.items() if k in live_keys}
        if self.seen_path is not None and self.persist and self.first_seen != self._file_view:
            try:  # only when it differs: a display polling every second writes rarely
                from pipeline.core.fsutil import atomic_write_json

                atomic_write_json(self.seen_path, self.first_seen)
                st = os.stat(self.seen_path)
                self._file_sig = (st.st_mtime_ns, st.st_size)
                self._file_view = dict(self.first_seen)
            except OSError:
                pass
        result.sort(key=lambda h: (_RANK[h.mode], h.pid))
        return result


def lock_holders(db_path: Path, method: str = "auto", seen_path: Path | None = None) -> list[dict]:
    """The JSON list of `imageselector locks --json`."""
    return [h.as_json() for h in LockTracker(seen_path).holders(db_path, method)]


def writer_pid(holders: list[dict]) -> int | None:
    for holder in holders:
        if holder["mode"] == "writer":
            return holder["pid"]
    return None
