"""backup_overdue: a configured backup target or mirror with no good snapshot within its
configured age (the snapshot's ``backups`` section decides ``overdue``: its job's interval
times backup.overdue_factor; never succeeded counts as overdue)."""
from __future__ import annotations

from pipeline.core.fmt import duration
from pipeline.watch.conditions import Condition
from pipeline.watch.context import WatchContext

KIND = "backup_overdue"


def check(ctx: WatchContext) -> list[Condition] | None:
    if ctx.section_failed("backups"):
        return None
    out = []
    for b in ctx.snap["backups"]:
        if not b.get("configured") or not b.get("overdue"):
            continue
        what = "backup" if b["kind"] == "snapshot" else b["kind"]
        if b.get("last_success") is None:
            problem = f"no good {b['kind']} yet"
        else:
            problem = f"last good {b['kind']} {duration(b.get('age_s'))} ago"
        if b.get("interval_s"):
            problem += f" (due every {duration(b['interval_s'])})"
        if b.get("last_error"):
            problem += ", last try failed"
        fix = (f"imageselector run backup --once --job {b['job']}" if b.get("job")
               else "imageselector backup status")
        detail = "\n".join(line for line in (
            f"path: {b.get('path')}",
            f"last error: {b['last_error']}" if b.get("last_error") else "",
            "then check the schedule: imageselector schedule show") if line)
        out.append(Condition(KIND, f"{what} {b['target']}", ctx.host, problem, fix, detail))
    return out
