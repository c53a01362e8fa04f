"""run_not_started: the weekly run (the schedule job watch.weekly_job, `run pipeline`) has
not started within watch.run_grace_s of its slot. Started means a run of the ``pipeline``
stage began at or after the slot, however it was started (schedule, console, by hand)."""
from __future__ import annotations

from pipeline.watch.conditions import Condition
from pipeline.watch.context import WatchContext
from pipeline.watch.schedule import _when, due_slot, started_since

KIND = "run_not_started"
RUNNER_STAGE = "pipeline"


def last_runner_start(ctx: WatchContext) -> float | None:
    """The latest start of the runner: its heartbeat's, or the DB's stage_runs."""
    starts = [st.get("started") for st in ctx.snap.get("stages") or [] if st["name"] == RUNNER_STAGE]
    row = ctx.conn.execute("SELECT MAX(started_at) FROM stage_runs WHERE stage = ?",
                           (RUNNER_STAGE,)).fetchone()
    starts.append(row[0] if row else None)
    starts = [float(s) for s in starts if s is not None]
    return max(starts) if starts else None


def check(ctx: WatchContext) -> list[Condition] | None:
    if ctx.section_failed("schedule"):
        return None
    name = str(ctx.cfg("watch.weekly_job"))
    job = next((j for j in ctx.snap["schedule"] if j["job"] == name), None)
    if job is None or not job.get("enabled"):
        return []
    slot = due_slot(job["cron"], ctx.now, float(ctx.cfg("watch.run_grace_s")), ctx.since)
    last = last_runner_start(ctx)
    if slot is None or started_since(last, slot):
        return []
    problem = f"weekly run due {_when(slot)} has not started"
    if last:
        problem += f" (last {_when(last)})"
    return [Condition(KIND, "weekly run", ctx.host, problem,
                      "imageselector start pipeline; see logs/schedule.log",
                      f"schedule job {name} ({job['cron']}): imageselector schedule show")]
