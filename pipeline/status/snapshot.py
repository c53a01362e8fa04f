"""The status snapshot: what `imageselector status --json` prints and the console shows.

Plain Python, light imports only (no torch, faiss, textual): the queue depths come from the
trigger-kept counters (O(1) at any size), the stages from their heartbeat files, the lock
holders from /proc/locks (or the F_GETLK probe), the backups from the DB."""
from __future__ import annotations

import sqlite3
import time
from typing import Callable

from pipeline.core.db import IMAGE_STATES, DBError, open_db, queue_depths
from pipeline.core.locks import LockTracker
from pipeline.core.stage import PIPELINE_ORDER, STAGES, stage_status

def runner_section(root, conn) -> dict | None:
    """The weekly run: the last summary and the recent alerts (for the console)."""
    if conn is None:
        return None
    from pipeline.core.alerts import recent_alerts
    from pipeline.stages.runner.runner import summary_json

    last = summary_json(conn)
    return {"last_run": None if last is None else {k: last[k] for k in ("started", "ended", "killed", "summary")},
            "alerts": recent_alerts(conn, 20)}


# Extra sections other parts add to the snapshot (e.g. the remote hosts' stages, backup
# schedule), as name -> function(root, conn) -> JSON-able value.
def _lazy(module: str, func: str) -> Callable:
    def section(root, conn):
        import importlib

        return getattr(importlib.import_module(module), func)(root, conn)

    return section


def workers_section(root, conn) -> list[dict]:
    """Each worker host as the orchestrator last saw it (look=False: no SSH from a status)."""
    from pipeline.stages.orchestrate import workers_status

    return workers_status(root, look=False)


SECTIONS: dict[str, Callable] = {
    "runner": runner_section,
    "workers": workers_section,
    "disk": _lazy("pipeline.core.housekeeping", "disk_section"),
    "schedule": _lazy("pipeline.core.schedule", "status_section"),
}


def local_stage_names(root) -> list[str]:
    names = [n for n in PIPELINE_ORDER if STAGES[n].where == "db_host"]
    if root.profile == "sandbox":
        names += [n for n in PIPELINE_ORDER if STAGES[n].where != "db_host"]
    else:
        names += ["worker"]  # the DB host is a worker too (the iMac)
    # any other stage that has run here (e.g. selftest) is shown too
    names += [n for n in STAGES if n not in names and root.heartbeat_path(n).exists()]
    return names


def snapshot(root, tracker: LockTracker | None = None, now: float | None = None,
             with_locks: bool = True) -> dict:
    now = time.time() if now is None else now
    result: dict = {"root": str(root.path), "profile": root.profile, "at": now, "errors": []}
    conn = None
    try:
        conn = open_db(root)
        result["queues"] = queue_depths(conn)
        from pipeline.stages.backup.backup import status_view

        result["backups"] = status_view(root, conn, now, result["errors"])
    except DBError as exc:
        result["queues"] = {state: None for state in IMAGE_STATES}
        result["backups"] = []
        result["errors"].append(str(exc))
    except sqlite3.OperationalError as exc:  # e.g. locked beyond busy_timeout
        result["queues"] = {state: None for state in IMAGE_STATES}
        result["backups"] = []
        result["errors"].append(f"DB {root.db_path}: {exc}")
    result["stages"] = [stage_status(root, name, now) for name in local_stage_names(root)]
    if with_locks:
        tracker = tracker or LockTracker(root.run_dir / "locks_seen.json")
        try:
            result["locks"] = [h.as_json() for h in tracker.holders(root.db_path, now=now)]
        except Exception as exc:  # never let the lock view take the status down
            result["locks"] = []
            result["errors"].append(f"lock holders: {exc}")
    for name, section in SECTIONS.items():
        try:
            result[name] = section(root, conn)
        except Exception as exc:
            result[name] = None
            result["errors"].append(f"{name}: {exc}")
    if conn is not None:
        conn.close()
    return result
