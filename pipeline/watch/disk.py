"""disk_low: the root's volume, or the volume of any configured backup target or mirror,
has less free space than its floor; or a worker host says it waits for disk (its heartbeat
is ``blocked`` on a floor: the worker has no DB and cannot alert itself).

The floors are the stages' own (pipeline/core/diskfloor.py: disk.min_free_gb for the root,
disk.backup_min_free_gb or a target's backup.min_free_bytes for targets, disk.floors_gb per
path or mount), so the watch and the stages agree, and the condition key is the one the
stages open when they block first: one alert per episode, whoever sees it first. Each volume
is checked once (the highest floor of the paths on it counts)."""
from __future__ import annotations

import os
from pathlib import Path

from pipeline.core.diskfloor import INFO_KEY, KIND, existing, floor_of, free_bytes, mount_of
from pipeline.core.fmt import size
from pipeline.watch.conditions import Condition
from pipeline.watch.context import WatchContext

FLOORS = "floors: disk.min_free_gb (root), disk.backup_min_free_gb (targets), disk.floors_gb (per path)"


def volumes(ctx: WatchContext) -> list[tuple[str, Path, int, str]]:
    """(label, path to measure, floor in bytes, the setting that gives it) for the root and
    each configured target."""
    cfg = ctx.root.config
    root_path = Path(ctx.root.path)
    f = floor_of(cfg, root_path)
    out = [("root", root_path, f.bytes, f.key)]
    for b in ctx.snap.get("backups") or []:
        if not b.get("configured") or not b.get("path"):
            continue
        path = Path(b["path"])
        if not path.is_absolute():
            path = root_path / path
        where = existing(path)
        if where is None:
            continue
        if b.get("target_kind") == "volume" and mount_of(where) == Path("/"):
            continue  # the volume is not mounted: backup_overdue / volume_missing say so
        label = f"{'backup' if b['kind'] == 'snapshot' else b['kind']} {b['target']}"
        f = floor_of(cfg, path, backup=True)
        out.append((label, where, f.bytes, f.key))
    return out


def _volume_conditions(ctx: WatchContext) -> list[Condition]:
    by_device: dict[int, list[tuple[str, Path, int, str]]] = {}
    for entry in volumes(ctx):
        try:
            dev = os.stat(entry[1]).st_dev
        except OSError:
            continue
        by_device.setdefault(dev, []).append(entry)
    out = []
    for entries in by_device.values():
        path = entries[0][1]
        _, _, floor, key = max(entries, key=lambda e: e[2])
        try:
            free = free_bytes(path)
        except OSError:
            continue
        if floor <= 0 or free >= floor:
            continue
        names = sorted({lab for lab, _, _, _ in entries})
        out.append(Condition(
            KIND, f"disk {mount_of(path)}", ctx.host,
            f"{size(free)} free, floor {size(floor)} ({', '.join(names)})",
            f"free space there, or lower {key}", FLOORS))
    return out


def _worker_conditions(ctx: WatchContext) -> list[Condition]:
    """Worker hosts whose worker stage waits below a floor (its heartbeat's info, as the
    snapshot's ``workers`` section carries it)."""
    out = []
    for w in ctx.snap.get("workers") or []:
        low = w.get(INFO_KEY)
        if not isinstance(low, dict):
            continue
        host = ctx.host if w.get("local") else w["name"]
        out.append(Condition(
            KIND, f"disk {low.get('mount')}", host,
            f"{size(low.get('free'))} free, floor {size(low.get('floor'))} (worker {w['name']} waits)",
            f"free space on {w['name']}, or lower {low.get('key') or 'disk.min_free_gb'} there",
            f"folder: {low.get('path')}\n{FLOORS}"))
    return out


def check(ctx: WatchContext) -> list[Condition] | None:
    return _volume_conditions(ctx) + _worker_conditions(ctx)
