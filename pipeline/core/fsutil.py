"""Small file helpers: atomic writes (temp name, fsync, rename) and tolerant JSON reads."""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, durable: bool = True, mode: int = 0o644) -> None:
    """Write ``data`` so that readers see the old file or the new one, never a part."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if durable:
        fsync_dir(path.parent)


def remove_write_leftovers(folder: Path, name: str = "*") -> int:
    """Remove the temp files atomic_write_bytes leaves when its writer is SIGKILLed mid-write
    (``.NAME.XXXX.tmp`` beside NAME). Only the files' sole writer may call this, at its start
    (e.g. a stage under its instance lock): another live writer's temp would vanish under it."""
    removed = 0
    for tmp in Path(folder).glob(f".{name}.*.tmp"):
        try:
            tmp.unlink()
            removed += 1
        except (FileNotFoundError, IsADirectoryError, PermissionError):
            pass
    return removed


def atomic_write_json(path: Path, value: Any, durable: bool = False) -> None:
    """Heartbeats and control files: atomic, but not fsynced (they are rewritten every few
    seconds and a lost one is harmless)."""
    atomic_write_bytes(Path(path), json.dumps(value, indent=1, default=str).encode(), durable=durable)


def read_json_or_none(path: Path) -> Any:
    """A JSON file, or None when it is missing or unreadable (never half-read: writers rename)."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    except OSError:
        return None


# what a lock held by another process raises: flock's EWOULDBLOCK; msvcrt's EACCES/EDEADLK
_LOCK_HELD = OSError if os.name == "nt" else BlockingIOError


def try_flock(path: Path) -> int | None:
    """An exclusive flock on ``path`` (created if missing), without waiting: the descriptor
    that holds it, or None when another process holds it. The kernel releases it when the
    process dies, so a crash never leaves a lock behind; close the descriptor to release it.
    On Windows (a worker host: its re-embed server) a byte-range lock does the same."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if os.name == "nt":
            import msvcrt

            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except _LOCK_HELD:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextmanager
def exclusive_lock(path: Path) -> Iterator[bool]:
    """``with exclusive_lock(p) as held:`` held is False when another process has it."""
    fd = try_flock(path)
    try:
        yield fd is not None
    finally:
        if fd is not None:
            os.close(fd)
