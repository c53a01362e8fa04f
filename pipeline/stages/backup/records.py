"""The backups table (one row per snapshot, mirror or verification: started, finished, ok,
size, error), what each of those operations returns (Outcome), and the backup stage's
instance lock."""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

from pipeline.core.fsutil import exclusive_lock
from pipeline.stages.backup.targets import BackupError

SNAPSHOT, MIRROR, MIRROR_VERIFY, SNAPSHOT_VERIFY = "snapshot", "mirror", "mirror-verify", "snapshot-verify"


@dataclass
class Outcome:
    target: str
    kind: str
    ok: bool
    path: str | None = None
    size: int | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)


def describe(exc: BaseException, name: str) -> str:
    if isinstance(exc, BackupError):
        return str(exc)
    if isinstance(exc, OSError):
        import errno

        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return f"backup target {name}: target full ({exc.strerror}) while writing {exc.filename or ''}".rstrip()
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            return f"backup target {name}: not writable ({exc.strerror})"
        return f"backup target {name}: {exc.strerror or exc} ({exc.filename or ''})"
    return f"backup target {name}: {exc}"


# ---------------------------------------------------------------------------
# The backups table
# ---------------------------------------------------------------------------
def db_write(conn, fn):
    from pipeline.core.db import retry_on_busy, transaction

    @retry_on_busy
    def run():
        with transaction(conn):
            return fn()

    return run()


def start_row(conn, target: str, kind: str, now: float | None = None) -> int:
    now = time.time() if now is None else now
    return db_write(conn, lambda: conn.execute(
        "INSERT INTO backups(target, kind, started_at) VALUES (?, ?, ?)", (target, kind, now)).lastrowid)


def finish_row(conn, row_id: int, ok: bool, verified: bool = False, size: int | None = None,
               path: str | None = None, error: str | None = None) -> None:
    db_write(conn, lambda: conn.execute(
        "UPDATE backups SET finished_at = ?, ok = ?, verified = ?, size_bytes = ?, path = ?, "
        "error = ? WHERE backup_id = ?",
        (time.time(), 1 if ok else 0, 1 if verified else 0, size, path, error, row_id)))


def close_interrupted(conn) -> int:
    """Rows of a backup that died without finishing: recorded as failed (call holding the
    backup lock, so no live backup owns them)."""
    return db_write(conn, lambda: conn.execute(
        "UPDATE backups SET finished_at = ?, ok = 0, error = COALESCE(error, "
        "'interrupted: the backup process died before finishing') WHERE finished_at IS NULL",
        (time.time(),)).rowcount)


@contextmanager
def backup_lock(root) -> Iterator[None]:
    """The backup stage's instance lock (run/backup.lock), also taken by `backup verify`."""
    with exclusive_lock(root.lock_path("backup")) as held:
        if not held:
            raise BackupError("the backup stage is running on this root; try again when it ends")
        yield
