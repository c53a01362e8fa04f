"""Housekeeping: rotation of every stage's log, and disk use per folder for the console.

Rotation: `logs/<name>.log` over backup.log_max_bytes is renamed `<name>.log.1` (older ones
shift up to backup.log_keep, the oldest is removed). Never copy-and-truncate, which loses
whatever a running writer appends between the copy and the truncation: a running stage's
log handler sees the rename at its next line and opens a new `<name>.log`
(pipeline.core.stage_log.ReopeningLogHandler); anything written before that lands in `<name>.log.1`.

Disk use walks each folder of the root once and caches the result in run/disk_usage.json;
the console reads the cache (`disk_section`), never walks millions of files itself.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from pipeline.core.fsutil import atomic_write_json, read_json_or_none


def rotate_logs(root, max_bytes: int | None = None, keep: int | None = None) -> list[str]:
    """Rotate every log in logs/ that is over max_bytes. Returns the logs rotated."""
    max_bytes = int(root.config.get("backup.log_max_bytes") if max_bytes is None else max_bytes)
    keep = int(root.config.get("backup.log_keep") if keep is None else keep)
    logs = root.logs_dir
    if not logs.is_dir():
        return []
    rotated = []
    for name in sorted(os.listdir(logs)):
        if not name.endswith(".log"):
            continue
        path = logs / name
        try:
            if path.stat().st_size <= max_bytes:
                continue
        except FileNotFoundError:
            continue
        for i in range(keep, 0, -1):
            older = logs / f"{name}.{i}"
            if not older.exists():
                continue
            if i == keep:
                older.unlink()
            else:
                os.replace(older, logs / f"{name}.{i + 1}")
        if keep < 1:  # no history wanted: the operator accepts losing lines
            with open(path, "r+b") as fh:
                fh.truncate(0)
        else:
            os.replace(path, logs / f"{name}.1")
        rotated.append(name)
    return rotated


def _walk_size(path: Path) -> tuple[int, int]:
    total = files = 0
    seen: set[tuple[int, int]] = set()
    for dirpath, _, filenames in os.walk(path):
        for f in filenames:
            try:
                st = os.lstat(os.path.join(dirpath, f))
            except FileNotFoundError:
                continue
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1:
                if key in seen:
                    continue
                seen.add(key)
            total += st.st_blocks * 512 if hasattr(st, "st_blocks") else st.st_size
            files += 1
    return total, files


def folders(root) -> dict[str, Path]:
    return {"data/db": root.db_dir, "data/embeddings": root.embeddings_dir,
            "images/imagedownload": root.download_dir, "images/imageall_new": root.bgremoved_dir,
            "images/imageall_tars": root.tars_dir, "images/imageprimary": root.primary_dir,
            "logs": root.logs_dir, "run": root.run_dir}


def disk_usage(root, now: float | None = None) -> dict:
    """Bytes and files per folder, and free space of the volume each folder is on."""
    now = time.time() if now is None else now
    out = {"at": now, "folders": []}
    for label, path in folders(root).items():
        entry = {"folder": label, "path": str(path), "bytes": None, "files": None,
                 "free_bytes": None, "total_bytes": None, "error": None}
        real = path.resolve() if path.is_symlink() else path
        if not real.exists():
            entry["error"] = "missing" if not path.is_symlink() else f"{os.readlink(path)} not there"
        else:
            entry["bytes"], entry["files"] = _walk_size(real)
            du = shutil.disk_usage(real)
            entry["free_bytes"], entry["total_bytes"] = du.free, du.total
        out["folders"].append(entry)
    return out


def cache_path(root) -> Path:
    return root.run_dir / "disk_usage.json"


def refresh_disk_usage(root, max_age_s: float | None = None) -> dict:
    """The cached figure if fresh enough, else a new walk (written to the cache)."""
    max_age = float(root.config.get("backup.disk_usage_max_age_s") if max_age_s is None else max_age_s)
    cached = read_json_or_none(cache_path(root))
    if cached and time.time() - float(cached.get("at", 0)) <= max_age:
        return cached
    fresh = disk_usage(root)
    root.run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(cache_path(root), fresh)
    return fresh


def disk_section(root, conn) -> dict | None:
    """For the snapshot's "disk" section: the cached figure only (cheap), with its age."""
    cached = read_json_or_none(cache_path(root))
    if cached:
        cached["age_s"] = round(time.time() - float(cached.get("at", 0)), 1)
    return cached
