"""Snapshots of data/: timestamped read-only generations on the backup targets (mirrors are
in mirror.py, verification in verify.py, restore in restore.py, status in status.py).

A snapshot generation on a target is a folder `data_YYYYmmdd_HHMMSS/` shaped like a root:

    data/db/etsy_data.db        SQLite's online backup API in ONE step (pages=-1: an
                                incremental backup restarts on every write and never
                                finishes under steady writes), then journal_mode=DELETE so
                                the copy is one self-contained file
    data/...                    every other file of data/ (index shards included)
    config/                     imageselector.toml and hosts.toml, when present
    MANIFEST.json               every file with size, sha256 and the source's mtime

It is built under `.data_....tmp`, checked (PRAGMA quick_check on the DB copy, index
alignment of the copy against the copied DB, every file fsynced), made read-only and only
then renamed into place; older generations beyond the retention are removed after that.
A failure or a kill at any moment leaves the last good generation as it was and records
a failure (a killed run's row is closed as failed by the next run).

A file whose size and mtime equal the previous generation's record is hard-linked from it
instead of copied (rsync's --link-dest idea), so finalized index shards and the index
store's immutable per-batch parts are copied once; the active files and the DB every time.
Targets are `volume` (must be a mount point, on the same device as the path, and pass a
write test: never write into an empty mount point) or `folder` (DECISIONS.md).
"""
from __future__ import annotations

import json
import os
import sqlite3
import stat
import time
from pathlib import Path
from typing import Callable

from pipeline.core.fsutil import fsync_dir, read_json_or_none
from pipeline.stages.backup.copying import Budget, backup_db, copy_file, remove_tree, sha256_file, tree_bytes
from pipeline.stages.backup.generations import (DB_REL, MANIFEST, cleanup_temps, generations, make_readonly,
                                                new_gen_name)
from pipeline.stages.backup.mirror import below_floor
from pipeline.stages.backup.records import SNAPSHOT, Outcome, describe, finish_row, start_row
from pipeline.stages.backup.targets import BackupAborted, BackupError, Target, check_destination, dir_lock
from pipeline.stages.backup.verify import check_alignment, quick_check


def _data_files(root) -> list[tuple[str, os.stat_result]]:
    """Every file of data/ except the live DB and its WAL/SHM, in a safe copy order: within
    an index shard, manifests first, then parts, then derived files (an index store commits
    a batch by its manifest line, so a copy taken in this order is never ahead of itself)."""
    out = []
    base = root.path
    skip = {root.db_path, Path(str(root.db_path) + "-wal"), Path(str(root.db_path) + "-shm"),
            Path(str(root.db_path) + "-journal")}
    for dirpath, dirnames, filenames in os.walk(root.data_dir):
        dirnames.sort()
        for f in filenames:
            p = Path(dirpath) / f
            if p in skip or f.startswith(".") and (f.endswith(".tmp") or f.endswith(".lock")):
                continue
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            if stat.S_ISREG(st.st_mode):
                out.append((str(p.relative_to(base)), st))

    def order(item):
        # within a shard: derived files, then the manifest, then the parts, so the copy is a
        # state a crash can leave (derived <= manifest <= parts), which the store recovers
        parts = item[0].split("/")
        if len(parts) >= 4 and parts[1] == "embeddings":
            rank = 1 if parts[3].startswith("manifest") else (2 if len(parts) > 4 else 0)
            return ("/".join(parts[:3]), rank, item[0])
        return ("/".join(parts[:-1]), 0, item[0])

    return sorted(out, key=order)


def _free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def snapshot(root, conn, target: Target, between: Callable[[], bool] | None = None,
             log=None, now: float | None = None) -> Outcome:
    """One snapshot generation on ``target``; records its row; never raises for a failure of
    the target (the Outcome says it), only for a bug."""
    row = start_row(conn, target.name, SNAPSHOT)
    checked = False
    try:
        check_destination(target.kind, target.path, target.mount, target.create,
                          f"backup target {target.name}")
        checked = True
        below_floor(root, conn, target.path, f"backup target {target.name}", log)
        with dir_lock(target.path, f"backup target {target.name}"):
            cleanup_temps(target.path)
            out = _write_generation(root, target, between, log, now)
        finish_row(conn, row, True, verified=True, size=out.size, path=out.path)
        return out
    except (BackupError, OSError, sqlite3.Error) as exc:
        msg = describe(exc, target.name)
        if log:
            log.error("snapshot to %s failed: %s", target.name, msg)
        try:
            if checked:  # never touch a destination that failed its checks
                with dir_lock(target.path, target.name):
                    cleanup_temps(target.path)
        except (OSError, BackupError):
            pass
        finish_row(conn, row, False, error=msg)
        return Outcome(target.name, SNAPSHOT, False, error=msg)
    except BaseException as exc:
        finish_row(conn, row, False, error=f"{type(exc).__name__}: {exc}")
        raise


def _plan(root, target: Target) -> tuple[Path | None, dict, list, int]:
    """(previous generation, its manifest's files, the files of data/, bytes the next
    generation will write: the DB and every file that cannot be linked from the previous)."""
    tpath = target.path
    prev = generations(tpath)
    prev_gen = prev[-1] if prev else None
    prev_files = {}
    if prev_gen is not None:
        prev_files = (read_json_or_none(prev_gen / MANIFEST) or {}).get("files", {})
    files = _data_files(root)
    try:
        db_size = root.db_path.stat().st_size + _size_or_zero(Path(str(root.db_path) + "-wal"))
    except FileNotFoundError:
        raise BackupError(f"backup target {target.name}: no DB at {root.db_path}") from None
    # files that are one inode under several names (an adopted shard's part and its derived
    # index) are copied once per generation and linked under their other names
    seen_inodes: set[tuple[int, int]] = set()
    need = db_size
    for rel, st in files:
        if _linkable(prev_files.get(rel), st):
            continue
        if st.st_nlink > 1:
            if (st.st_dev, st.st_ino) in seen_inodes:
                continue
            seen_inodes.add((st.st_dev, st.st_ino))
        need += st.st_size
    return prev_gen, prev_files, files, need


def bytes_needed(root, target: Target) -> int:
    """What the next snapshot on ``target`` would write (the doctor compares it with
    ``space_available``)."""
    return _plan(root, target)[3]


def space_available(root, target: Target) -> int:
    """Free bytes on the target less backup.min_free_bytes, within its max_bytes quota."""
    tpath = target.path
    limit = _free_bytes(tpath) - int(root.config.get("backup.min_free_bytes"))
    if target.max_bytes:
        limit = min(limit, target.max_bytes - tree_bytes(tpath))
    return limit


def _write_generation(root, target: Target, between, log, now) -> Outcome:
    now = time.time() if now is None else now
    tpath = target.path
    name = new_gen_name(tpath, now)
    tmp = tpath / f".{name}.tmp"
    prev_gen, prev_files, files, need = _plan(root, target)
    limit = space_available(root, target)
    if need > limit:
        raise BackupError(f"backup target {target.name}: target full: needs {need:,} bytes, "
                          f"{max(limit, 0):,} available at {tpath}")
    budget = Budget(limit, f"backup target {target.name}")
    manifest_files: dict[str, list] = {}
    try:
        (tmp / "data" / "db").mkdir(parents=True)
        # 1. the DB, first: index files copied after it can only be ahead of it
        db_copy = tmp / DB_REL
        backup_db(root.db_path, db_copy, float(root.config.get("db.busy_timeout_s")) * 6)
        db_bytes = db_copy.stat().st_size
        budget.take(db_bytes)
        manifest_files[DB_REL] = [db_bytes, sha256_file(db_copy), None]
        # 2. the rest of data/, linked from the previous generation where unchanged
        linked = copied = 0
        copied_inodes: dict[tuple[int, int], str] = {}
        for rel, st in files:
            if between is not None and not between():
                raise BackupAborted(f"backup target {target.name}: stopped (kill file or signal) "
                                    f"before finishing; the last good backup is unchanged")
            dst = tmp / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            rec = prev_files.get(rel)
            if _linkable(rec, st):
                try:
                    os.link(prev_gen / rel, dst)
                    manifest_files[rel] = list(rec)
                    linked += 1
                    continue
                except OSError:
                    pass  # a filesystem without hard links: copy
            twin = copied_inodes.get((st.st_dev, st.st_ino)) if st.st_nlink > 1 else None
            if twin is not None:
                try:
                    os.link(tmp / twin, dst)
                    manifest_files[rel] = list(manifest_files[twin][:2]) + [st.st_mtime_ns]
                    linked += 1
                    continue
                except OSError:
                    pass
            try:
                n, digest = copy_file(root.path / rel, dst, budget)
            except FileNotFoundError:
                continue  # removed since the walk (e.g. an orphan part cleaned up)
            manifest_files[rel] = [n, digest, st.st_mtime_ns]
            if st.st_nlink > 1:
                copied_inodes[(st.st_dev, st.st_ino)] = rel
            copied += 1
        # 3. the root's config (no secrets by design)
        for cfg_name in ("imageselector.toml", "hosts.toml"):
            src = root.path / cfg_name
            if src.is_file():
                (tmp / "config").mkdir(exist_ok=True)
                n, digest = copy_file(src, tmp / "config" / cfg_name, budget)
                manifest_files[f"config/{cfg_name}"] = [n, digest, None]
        # 4. checks on the copy before it may replace anything
        qc = quick_check(db_copy)
        if qc != "ok":
            raise BackupError(f"backup target {target.name}: quick_check of the DB copy failed: {qc}")
        problems, notes = check_alignment(tmp / "data", db_copy)
        if problems:
            raise BackupError(f"backup target {target.name}: index alignment of the copy failed: "
                              f"{problems[0]}")
        size = sum(v[0] for v in manifest_files.values())
        manifest = {"format": 1, "generation": name, "created": now, "finished": time.time(),
                    "root": str(root.path), "files": manifest_files, "bytes": size,
                    "linked": linked, "copied": copied,
                    "checks": {"quick_check": qc, "alignment_notes": notes}}
        with open(tmp / MANIFEST, "x", encoding="utf-8") as fh:
            json.dump(manifest, fh, indent=0)
            fh.flush()
            os.fsync(fh.fileno())
        for dirpath, _, _ in os.walk(tmp):
            fsync_dir(Path(dirpath))
        make_readonly(tmp)
        final = tpath / name
        os.replace(tmp, final)
        fsync_dir(tpath)
    except BaseException:
        remove_tree(tmp)
        raise
    # 5. retention, only after a new good generation is in place
    for old in generations(tpath)[:-target.generations]:
        remove_tree(old)
        if log:
            log.info("retention: removed %s", old)
    if log:
        log.info("snapshot %s on %s: %d files copied, %d linked, %d bytes",
                 name, target.name, copied, linked, size)
    return Outcome(target.name, SNAPSHOT, True, str(final), size, notes=notes)


def _size_or_zero(p: Path) -> int:
    try:
        return p.stat().st_size
    except FileNotFoundError:
        return 0


def _linkable(rec, st) -> bool:
    return bool(rec) and rec[2] is not None and rec[0] == st.st_size and rec[2] == st.st_mtime_ns
