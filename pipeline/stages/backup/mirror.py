"""Mirrors: rsync copies of folders of the root to a destination; a source that holds the DB
is mirrored with the writers paused (the pause protocol) while the DB is copied through
SQLite's backup API, the rest of that source by rsync without the live DB files."""
from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from pipeline.core.fsutil import fsync_dir
from pipeline.stages.backup.copying import backup_db, tree_bytes
from pipeline.stages.backup.records import MIRROR, Outcome, describe, finish_row, start_row
from pipeline.stages.backup.targets import BackupError, Mirror, check_destination, dir_lock


def below_floor(root, conn, path: Path, what: str, log=None) -> None:
    """The destination's volume below its disk floor (disk.backup_min_free_gb, disk.floors_gb):
    this target fails now, with the reason, instead of waiting (a scheduled --once run must
    end; the next run tries again); disk_low goes out once per episode (pipeline/core/diskfloor.py)."""
    from pipeline.core.diskfloor import DiskFloor

    low = DiskFloor(root, [path], stage="backup", backup=True, conn=lambda: conn, log=log).refuse()
    if low:
        raise BackupError(f"{what}: {low}; nothing copied (the last good copy is unchanged)")


def mirror_pairs(root, mirror: Mirror) -> list[tuple[Path, Path, bool]]:
    """(source, destination, holds_the_db) per source of a mirror."""
    pairs = []
    for s in mirror.sources:
        p = Path(os.path.expanduser(s))
        if p.is_absolute():
            src, dst = p, mirror.dest / p.name
        else:
            src, dst = root.path / p, mirror.dest / p
        if mirror.exact:
            dst = mirror.dest       # the original's form: SRC/ into DEST/ itself
        holds_db = _is_within(root.db_path, src)
        pairs.append((src, dst, holds_db))
    return pairs


# An exact mirror's destination is rsync's own target: its lock file stays out of --delete.
LOCK_EXCLUDE = "/.backup.lock"


def mirror_excludes(m: Mirror) -> list[str]:
    return list(m.excludes) + ([LOCK_EXCLUDE] if m.exact else [])


def excluded(rel: str, is_dir: bool, patterns: list[str]) -> bool:
    """rsync's --exclude for the simple patterns mirrors use: "name/" (a folder of that name
    at any depth), "name" (a file or folder), "/path" (anchored at the transfer's root); a
    pattern with an inner slash matches the end of the path; * ? [] as fnmatch."""
    from fnmatch import fnmatchcase

    rel = rel.strip("/")
    for pat in patterns:
        if pat.endswith("/") and not is_dir:
            continue
        core = pat.strip("/")
        if not core:
            continue
        if pat.startswith("/"):
            if fnmatchcase(rel, core):
                return True
        elif "/" in core:
            parts = rel.split("/")
            n = core.count("/") + 1
            if len(parts) >= n and fnmatchcase("/".join(parts[-n:]), core):
                return True
        elif fnmatchcase(rel.rsplit("/", 1)[-1], core):
            return True
    return False


def _is_within(path: Path, folder: Path) -> bool:
    try:
        Path(path).absolute().relative_to(Path(folder).absolute())
        return True
    except ValueError:
        return False


def _rsync(root, src: Path, dst: Path, excludes: list[str], what: str) -> None:
    prog = root.config.get("backup.rsync")
    exe = shutil.which(prog)
    if exe is None:
        raise BackupError(f"{what}: rsync is not installed (looked for {prog!r}); install it "
                          f"(Debian/Ubuntu: apt-get install rsync; macOS ships one)")
    dst.mkdir(parents=True, exist_ok=True)
    argv = [exe, *root.config.get("backup.rsync_args")]
    for e in excludes:
        argv += ["--exclude", e]
    argv += [f"{src}/", f"{dst}/"]
    proc = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or [""]
        raise BackupError(f"{what}: rsync {src} -> {dst} failed (exit {proc.returncode}): {tail[0]}")


def _db_excludes(root, src: Path) -> list[str]:
    rel = "/" + str(root.db_path.relative_to(src))
    return [rel, rel + "-wal", rel + "-shm", rel + "-journal", "/" + str(Path(rel).parent)[1:] + "/.*.tmp"]


@contextmanager
def writers_paused(root, timeout_s: float, log=None) -> Iterator[None]:
    """Pause every pausable stage (the pause protocol) and wait until each live one has
    acknowledged; resume on exit. Pause files the operator made are left in place."""
    from pipeline.core.stage import PAUSABLE, STAGES
    from pipeline.core.stage_control import all_writers_paused, pause_acknowledged, pause_stages, resume_stages

    ours = [n for n in PAUSABLE if not root.file(STAGES[n].pause_file).exists()]
    pause_stages(root, ours)
    try:
        deadline = time.monotonic() + timeout_s
        while not all_writers_paused(root):
            if time.monotonic() >= deadline:
                waiting = [n for n in PAUSABLE if pause_acknowledged(root, n) is False]
                raise BackupError(f"writers did not pause within {timeout_s:.0f} s "
                                  f"({', '.join(waiting)}); mirror not taken")
            time.sleep(0.1)
        if log:
            log.info("writers paused")
        yield
    finally:
        resume_stages(root, ours)


def mirror(root, conn, m: Mirror, log=None) -> Outcome:
    row = start_row(conn, m.name, MIRROR)
    what = f"mirror {m.name}"
    try:
        if m.source_mount is not None and not os.path.ismount(m.source_mount):
            # an empty mount point as the source would delete the whole mirror (--delete)
            raise BackupError(f"{what}: the source volume {m.source_mount} is not mounted; "
                              f"nothing copied, nothing deleted")
        check_destination(m.kind, m.dest, m.mount, m.create, what)
        below_floor(root, conn, m.dest, what, log)    # fails this mirror, never waits
        pairs = mirror_pairs(root, m)
        for src, _, _ in pairs:
            if not src.exists():
                raise BackupError(f"{what}: source {src} does not exist")
        with dir_lock(m.dest, what):
            db_pairs = [p for p in pairs if p[2]]
            if db_pairs:
                with writers_paused(root, float(root.config.get("backup.pause_timeout_s")), log):
                    for src, dst, _ in db_pairs:
                        db_dst = dst / root.db_path.relative_to(src)
                        db_dst.parent.mkdir(parents=True, exist_ok=True)
                        tmp = db_dst.with_name(f".{db_dst.name}.tmp")
                        _unlink(tmp)
                        backup_db(root.db_path, tmp)
                        os.replace(tmp, db_dst)
                        fsync_dir(db_dst.parent)
                        _rsync(root, src, dst, _db_excludes(root, src) + mirror_excludes(m), what)
            for src, dst, holds in pairs:
                if not holds:
                    _rsync(root, src, dst, mirror_excludes(m), what)
        size = sum(tree_bytes(dst) for _, dst, _ in pairs)
        finish_row(conn, row, True, size=size, path=str(m.dest))
        out = Outcome(m.name, MIRROR, True, str(m.dest), size)
    except (BackupError, OSError, sqlite3.Error) as exc:
        msg = describe(exc, m.name) if not isinstance(exc, BackupError) else str(exc)
        if log:
            log.error("%s failed: %s", what, msg)
        finish_row(conn, row, False, error=msg)
        return Outcome(m.name, MIRROR, False, error=msg)
    return out


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
