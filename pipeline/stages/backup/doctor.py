"""The backup volumes in `imageselector doctor`: every snapshot target and mirror destination
there and writable (the same write test a backup does first), room on each target for the
next snapshot, and on macOS each volume kept out of Spotlight."""
from __future__ import annotations

import os

from pipeline.core import diskfloor
from pipeline.core.fmt import size
from pipeline.doctor.check import Check, passed, problem
from pipeline.doctor.registry import doctor_check
from pipeline.doctor.spotlight import spotlight_check
from pipeline.stages.backup.snapshot import bytes_needed, space_available
from pipeline.stages.backup.targets import BackupError, check_destination, load_mirrors, load_targets

AREA = "volumes"


@doctor_check(AREA, order=30)
def volume_checks(ctx) -> list[Check]:
    out: list[Check] = []
    mounts: dict[str, str] = {}
    items = [("target", t.name, t.kind, t.path, t.mount, t.create, t) for t in load_targets(ctx.root)]
    items += [("mirror", m.name, m.kind, m.dest, m.mount, m.create, None)
              for m in load_mirrors(ctx.root)]
    for what, name, kind, path, mount, create, target in items:
        label = f"{what} {name}"
        table = f"backup.{what}s.{name}"
        try:
            check_destination(kind, path, mount, create, f"backup {label}")
        except BackupError as exc:
            fix = (f"mount the volume at {mount or path} (or correct {table}.mount in "
                   f"{ctx.config_path})" if kind == "volume" and not os.path.ismount(mount or path)
                   else f"create {path} (or set {table}.create = true) in {ctx.config_path}"
                   if "does not exist" in str(exc) else f"make {path} writable, or correct {table}.path")
            out.append(problem(AREA, label, str(exc), fix))
            continue
        out.append(passed(AREA, label, f"{path} is there and writable ({kind})"))
        if kind == "volume":
            mounts.setdefault(str(mount or path), label)
        if target is not None:
            out.append(_space(ctx, label, table, target))
    for mount, label in mounts.items():
        out.append(spotlight_check(AREA, label, mount))
    return out


def _space(ctx, label: str, table: str, target) -> Check:
    try:
        need = bytes_needed(ctx.root, target)
    except BackupError as exc:
        return passed(AREA, f"{label} space", f"not measured: {exc}")
    room = space_available(ctx.root, target)
    low = diskfloor.read(ctx.root.config, target.path, backup=True)
    text = (f"the next snapshot needs {size(need)}, {size(max(room, 0))} available at "
            f"{target.path}, floor {size(low.floor.bytes)}")
    if need > room:
        return problem(AREA, f"{label} space", text,
                       f"free space there, lower {table}.generations, or raise {table}.max_bytes")
    if low.low or low.free - need < low.floor.bytes:
        return problem(AREA, f"{label} space", text + ": the snapshot would go below the floor",
                       f"free space there, or lower {low.floor.key} in {ctx.config_path}")
    return passed(AREA, f"{label} space", text)
