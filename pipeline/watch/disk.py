"""disk_low: the root's volume, or the volume of any configured backup target or mirror,
has less free space than its floor (watch.min_free_gb for the root, watch.backup_min_free_gb
or the target's backup.min_free_bytes for targets, watch.floors_gb per path over both).
Each volume is checked once (the highest floor of the paths on it counts)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from pipeline.core.fmt import size
from pipeline.watch.conditions import Condition
from pipeline.watch.context import WatchContext

KIND = "disk_low"
GB = 1e9


def _existing(path: Path) -> Path | None:
    """The path, or its nearest existing parent (a folder a backup will create)."""
    for p in (path, *path.parents):
        if p.exists():
            return p
    return None


def _mount_of(path: Path) -> Path:
    p = path.resolve()
    while not os.path.ismount(p) and p != p.parent:
        p = p.parent
    return p


def _floor(floors: dict[str, float], default: float, *paths: Path) -> float:
    """watch.floors_gb for the first of ``paths`` (or its volume's mount) it names, else ``default``."""
    for p in paths:
        for candidate in (str(p), str(_mount_of(p)) if p.exists() else None):
            if candidate in floors:
                return floors[candidate]
    return default


def volumes(ctx: WatchContext) -> list[tuple[str, Path, float]]:
    """(label, path to measure, floor in bytes) for the root and each configured target."""
    floors = {str(Path(k)): float(v) * GB for k, v in (ctx.cfg("watch.floors_gb") or {}).items()}
    root_path = Path(ctx.root.path)
    out = [("root", root_path, _floor(floors, float(ctx.cfg("watch.min_free_gb")) * GB, root_path))]
    reserve = float(ctx.cfg("backup.min_free_bytes"))
    target_floor = max(float(ctx.cfg("watch.backup_min_free_gb")) * GB, reserve)
    for b in ctx.snap.get("backups") or []:
        if not b.get("configured") or not b.get("path"):
            continue
        path = Path(b["path"])
        if not path.is_absolute():
            path = root_path / path
        where = _existing(path)
        if where is None:
            continue
        if b.get("target_kind") == "volume" and _mount_of(where) == Path("/"):
            continue  # the volume is not mounted: backup_overdue / volume_missing say so
        label = f"{'backup' if b['kind'] == 'snapshot' else b['kind']} {b['target']}"
        out.append((label, where, _floor(floors, target_floor, path, where)))
    return out


def check(ctx: WatchContext) -> list[Condition] | None:
    by_device: dict[int, list[tuple[str, Path, float]]] = {}
    for label, path, floor in volumes(ctx):
        try:
            dev = os.stat(path).st_dev
        except OSError:
            continue
        by_device.setdefault(dev, []).append((label, path, floor))
    out = []
    for entries in by_device.values():
        path = entries[0][1]
        floor = max(f for _, _, f in entries)
        try:
            free = shutil.disk_usage(path).free
        except OSError:
            continue
        if floor <= 0 or free >= floor:
            continue
        names = sorted({lab for lab, _, _ in entries})
        key = "watch.min_free_gb" if "root" in names else "watch.backup_min_free_gb"
        out.append(Condition(
            KIND, f"disk {_mount_of(path)}", ctx.host,
            f"{size(free)} free, floor {size(floor)} ({', '.join(names)})",
            f"free space there, or lower {key}",
            f"floors: watch.min_free_gb (root), watch.backup_min_free_gb (targets), "
            f"watch.floors_gb (per path)"))
    return out
