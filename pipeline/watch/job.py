"""One pass of the watch: the status snapshot, every check, then the alerts (under a lock,
so two overlapping `watch --once` runs never both alert)."""
from __future__ import annotations

import time

from pipeline.watch import backups, disk, schedule, stages, weekly
from pipeline.core.alerts import local_host
from pipeline.watch.context import WatchContext

# (key prefix the check answers for, check). A check returns its conditions, or None when it
# could not look (then the open conditions under its prefix stay as they are).
CHECKS = (
    (f"{backups.KIND}:", backups.check),
    (f"{disk.KIND}:", disk.check),
    (f"{stages.KIND}:stage ", stages.check_stages),
    (f"{stages.KIND}:worker@", stages.check_workers),
    (f"{schedule.KIND}:", schedule.check),
    (f"{weekly.KIND}:", weekly.check),
)


class WatchBusy(Exception):
    """Another watch run holds run/watch.lock."""


def evaluate(ctx: WatchContext) -> dict[str, list | None]:
    """Every check's conditions now ({prefix: list or None}); a check that raises could not
    look, and says why in ``ctx.snap['errors']``."""
    results: dict[str, list | None] = {}
    for prefix, fn in CHECKS:
        try:
            results[prefix] = fn(ctx)
        except Exception as exc:  # one broken check never silences the others
            results[prefix] = None
            ctx.snap.setdefault("errors", []).append(f"watch {prefix.rstrip(':@ ')}: {exc}")
    return results


def watch_once(root, now: float | None = None, alerter=None) -> dict:
    """One pass. Returns {"at", "host", "since", "conditions": [...], "report": [...], "errors"}."""
    from pipeline.core.alerts import Alerter
    from pipeline.core.db import open_db
    from pipeline.core.fsutil import exclusive_lock
    from pipeline.status.snapshot import snapshot
    from pipeline.watch.notify import reconcile
    from pipeline.watch.store import watching_since

    now = time.time() if now is None else now
    root.run_dir.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(root.run_dir / "watch.lock") as held:
        if not held:
            raise WatchBusy(f"another watch run holds {root.run_dir / 'watch.lock'}")
        conn = open_db(root)
        try:
            alerter = alerter or Alerter(root, conn=conn)
            since = watching_since(conn, now)
            snap = snapshot(root, now=now, with_locks=False)
            ctx = WatchContext(root, snap, conn, now, local_host(), since)
            results = evaluate(ctx)
            report = reconcile(conn, alerter, results, now)
        finally:
            conn.close()
    conditions = [{"key": c.key, "kind": c.kind, "text": c.text()}
                  for conds in results.values() for c in conds or []]
    return {"at": now, "host": ctx.host, "since": since, "conditions": conditions,
            "report": report, "errors": list(snap.get("errors", []))}
