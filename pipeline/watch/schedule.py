"""schedule_missed: a scheduled job that did not start when due.

A job's slot is judged once it is watch.schedule_grace_s in the past: the latest such slot
(``prev_fire(cron, now - grace)``) is missed when the job has not started since. Slots from
before the watch first ran on this root are not judged (a schedule installed today has not
missed last week's runs). The weekly run has its own check (``weekly``: run_not_started),
and the watch job itself is not judged (it is the one running)."""
from __future__ import annotations

import time

from pipeline.core.cron import parse_cron, prev_fire
from pipeline.watch.conditions import Condition
from pipeline.watch.context import WatchContext

KIND = "schedule_missed"
SLACK_S = 1.0    # a start recorded within a second before the slot still counts


def due_slot(cron_text: str, now: float, grace_s: float, since: float) -> float | None:
    """The slot a job must have started by now (None: none to judge yet)."""
    slot = prev_fire(parse_cron(cron_text), now - grace_s)
    if slot is None or slot < since:
        return None
    return slot


def started_since(last_started: float | None, slot: float) -> bool:
    return last_started is not None and last_started >= slot - SLACK_S


def is_watch_job(job: dict) -> bool:
    return any(step.split()[:1] == ["watch"] for step in job.get("steps", []))


def _when(ts: float) -> str:
    return time.strftime("%a %H:%M", time.localtime(ts))


def check(ctx: WatchContext) -> list[Condition] | None:
    if ctx.section_failed("schedule"):
        return None
    grace = float(ctx.cfg("watch.schedule_grace_s"))
    weekly = str(ctx.cfg("watch.weekly_job"))
    out = []
    for job in ctx.snap["schedule"]:
        if not job.get("enabled") or job["job"] == weekly or is_watch_job(job):
            continue
        slot = due_slot(job["cron"], ctx.now, grace, ctx.since)
        last = (job.get("last_run") or {}).get("started_at")
        if slot is None or started_since(last, slot):
            continue
        problem = f"did not start at {_when(slot)} ({job['cron']})"
        if last:
            problem += f", last ran {_when(last)}"
        out.append(Condition(
            KIND, f"job {job['job']}", ctx.host, problem,
            "imageselector schedule install; see logs/schedule.log",
            "steps: " + "; ".join(f"imageselector {s}" for s in job.get("steps", []))
            + f"\nrun it now: imageselector schedule run {job['job']}"))
    return out
