"""Copying for backups: files with sha256, fsync and a byte budget, the live DB through
SQLite's online backup API, and the size and removal of copied trees."""
from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
from pathlib import Path

from pipeline.stages.backup.targets import BackupError

CHUNK = 1024 * 1024


class Budget:
    """Bytes this snapshot may still write (a target's quota, or free space less the reserve)."""

    def __init__(self, limit: int | None, what: str):
        self.left = limit
        self.what = what

    def take(self, n: int) -> None:
        if self.left is None:
            return
        self.left -= n
        if self.left < 0:
            raise BackupError(f"{self.what}: target full (quota or reserve reached)")


def copy_file(src: Path, dst: Path, budget: Budget | None = None) -> tuple[int, str]:
    """Copy with sha256 and fsync; returns (bytes, sha256)."""
    h = hashlib.sha256()
    n = 0
    with open(src, "rb") as fi, open(dst, "xb") as fo:
        while True:
            chunk = fi.read(CHUNK)
            if not chunk:
                break
            if budget is not None:
                budget.take(len(chunk))
            fo.write(chunk)
            h.update(chunk)
            n += len(chunk)
        fo.flush()
        os.fsync(fo.fileno())
    return n, h.hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(CHUNK)
            if not chunk:
                return h.hexdigest()
            h.update(chunk)


def backup_db(src_db: Path, dst: Path, busy_timeout_s: float = 60.0, flush_every_s: float = 0.2) -> None:
    """SQLite's online backup API in one step, then a self-contained rollback-journal file.

    The step runs without the GIL; meanwhile a thread flushes the copy every
    ``flush_every_s``, so the disk never holds gigabytes of dirty pages whose final flush
    would stall the live writers' commits (their fsync queues behind it)."""
    import threading

    src = sqlite3.connect(f"file:{src_db}?mode=ro", uri=True, timeout=busy_timeout_s)
    done = threading.Event()
    flusher = None
    try:
        src.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        dst_conn = sqlite3.connect(str(dst), isolation_level=None)
        try:
            dst_conn.execute("PRAGMA synchronous = OFF")
            fd = os.open(dst, os.O_RDONLY | os.O_CREAT, 0o644)

            def flush() -> None:
                while not done.wait(flush_every_s):
                    try:
                        os.fdatasync(fd)
                    except OSError:
                        return

            flusher = threading.Thread(target=flush, name="backup-flush", daemon=True)
            flusher.start()
            try:
                src.backup(dst_conn, pages=-1)
            finally:
                done.set()
                flusher.join()
                os.close(fd)
            dst_conn.execute("PRAGMA journal_mode = DELETE")
        finally:
            dst_conn.close()
    finally:
        done.set()
        src.close()
    fd = os.open(dst, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def tree_bytes(path: Path) -> int:
    total = 0
    seen = set()
    for dirpath, _, filenames in os.walk(path):
        for f in filenames:
            try:
                st = os.lstat(os.path.join(dirpath, f))
            except FileNotFoundError:
                continue
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            total += st.st_size
    return total


def _make_writable(path: Path) -> None:
    for dirpath, dirnames, _ in os.walk(path):
        os.chmod(dirpath, 0o755)


def remove_tree(path: Path) -> None:
    if path.exists():
        _make_writable(path)
        shutil.rmtree(path)
