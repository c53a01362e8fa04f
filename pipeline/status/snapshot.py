"""The status snapshot: what `imageselector status --json` prints and the console shows.

Plain Python, light imports only (no torch, faiss, textual): the queue depths come from the
trigger-kept counters (O(1) at any size), the stages from their heartbeat files, the lock
holders from /proc/locks (or the F_GETLK probe), the backups from the DB."""
from __future__ import annotations

import sqlite3
import time

from pipeline.core.db import IMAGE_STATES, DBError, open_db, queue_depths
from pipeline.core.locks import LockTracker
from pipeline.core.stage import PIPELINE_ORDER, STAGES
from pipeline.core.stage_observe import stage_status
from pipeline.core import housekeeping, schedule
from pipeline.status.registry import providers, status_provider
from pipeline.status import queue_reasons  # noqa: F401  (registers its section)

# The core's own sections (stages add theirs from their status modules, see registry.py).
@status_provider("disk", order=80)
def disk_section(root, conn, now, errors):
    return housekeeping.disk_section(root, conn)


@status_provider("schedule", order=90)
def schedule_section(root, conn, now, errors):
    return schedule.status_section(root, conn)


@status_provider("safety", order=5)
def safety_section(root, conn, now, errors):
    """The safe-default failures (no backup target, alerts off): red in status and the console."""
    from pipeline.core.safety import safety_problems

    return [p.as_json() for p in safety_problems(root)]


@status_provider("alerts_last_sent", order=95)
def alerts_last_sent_section(root, conn, now, errors):
    """Each alert kind with when it was last delivered (None: never)."""
    if conn is None:
        return None
    from pipeline.core.alerts import last_sent_by_kind

    return last_sent_by_kind(conn)


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
    except DBError as exc:
        result["queues"] = {state: None for state in IMAGE_STATES}
        result["errors"].append(str(exc))
    except sqlite3.OperationalError as exc:  # e.g. locked beyond busy_timeout
        if conn is not None:
            conn.close()
            conn = None
        result["queues"] = {state: None for state in IMAGE_STATES}
        result["errors"].append(f"DB {root.db_path}: {exc}")
    result["stages"] = [stage_status(root, name, now) for name in local_stage_names(root)]
    if with_locks:
        tracker = tracker or LockTracker(root.run_dir / "locks_seen.json")
        try:
            result["locks"] = [h.as_json() for h in tracker.holders(root.db_path, now=now)]
        except Exception as exc:  # never let the lock view take the status down
            result["locks"] = []
            result["errors"].append(f"lock holders: {exc}")
    for provider in providers():
        try:
            result[provider.name] = provider.fn(root, conn, now, result["errors"])
        except Exception as exc:  # one failing section never takes the status down
            result[provider.name] = None
            result["errors"].append(f"{provider.name}: {exc}")
    if conn is not None:
        conn.close()
    return result
