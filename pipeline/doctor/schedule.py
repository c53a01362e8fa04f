"""The schedule: every enabled job of the root's schedule (the weekly run, the backup and
mirror jobs, the watch, ...) installed as `schedule install` would write it (crontab entries,
or launchd plists on macOS), loaded (the cron daemon running; launchd has the job), and when
each fires next."""
from __future__ import annotations

import os
import shlex
import subprocess
import sys

from pipeline.core.errors import UserError
from pipeline.doctor.check import Check, passed, problem
from pipeline.doctor.context import DoctorContext
from pipeline.doctor.registry import doctor_check

AREA = "schedule"
CRON_DAEMONS = ("cron", "crond", "cronie")


@doctor_check(AREA, order=50)
def schedule_checks(ctx: DoctorContext, platform: str | None = None) -> list[Check]:
    from pipeline.core.schedule import load_jobs

    jobs = {n: j for n, j in load_jobs(ctx.root).items() if j.enabled}
    if (platform or sys.platform) == "darwin":
        return _launchd(ctx, jobs)
    return _cron(ctx, jobs)


def _next(ctx: DoctorContext, job) -> str:
    from pipeline.core.fmt import date_time
    from pipeline.core.cron import next_fire, parse_cron

    return f"next {date_time(next_fire(parse_cron(job.cron), ctx.now))} ({job.cron})"


def _installed_lines(text: str, root_path: str) -> list[str] | None:
    """The lines of this root's block in a crontab, or None when it has none."""
    from pipeline.core.schedule import BLOCK_BEGIN, BLOCK_END

    begin, end = f"{BLOCK_BEGIN} {root_path}", f"{BLOCK_END} {root_path}"
    lines, inside, seen = [], False, False
    for line in text.splitlines():
        if line.strip() == begin:
            inside = seen = True
        elif inside and line.strip() == end:
            inside = False
        elif inside:
            lines.append(line.strip())
    return lines if seen else None


def _job_marker(name: str) -> str:
    return f" schedule run {shlex.quote(name)} --trigger cron "


def _cron(ctx: DoctorContext, jobs: dict) -> list[Check]:
    from pipeline.core.schedule import CrontabIO, crontab_block

    severity = ctx.unattended_severity
    install = ctx.command("schedule", "install")
    try:
        text = CrontabIO(ctx.cfg("schedule.crontab")).read()
    except UserError as exc:
        return [problem(AREA, "crontab", str(exc), install + " (after installing cron)", severity)]
    installed = _installed_lines(text, str(ctx.root.path))
    if installed is None:
        return [problem(AREA, "installed", f"the schedule is not installed in the crontab "
                                           f"({len(jobs)} jobs: the weekly run, backups, watch...)",
                        install, severity)]
    expected = [ln for ln in crontab_block(ctx.root, jobs).splitlines()
                if ln and not ln.startswith("#")]
    out = []
    for name, job in jobs.items():
        want = next((ln for ln in expected if _job_marker(name) in ln), None)
        if want in installed:
            out.append(passed(AREA, name, f"installed, {_next(ctx, job)}"))
        elif any(_job_marker(name) in ln for ln in installed):
            out.append(problem(AREA, name, "installed, but not as the config says now (its time "
                                           "or the Python changed)", install, severity))
        else:
            out.append(problem(AREA, name, "not installed in the crontab", install, severity))
    for ln in installed:
        if not ln.startswith("#") and not any(_job_marker(n) in ln for n in jobs):
            out.append(problem(AREA, "stale entry", f"the crontab runs a job the config no longer "
                                                    f"enables: {ln[:120]}", install, "warning"))
    out.append(_cron_daemon(ctx))
    return out


def _cron_daemon(ctx: DoctorContext) -> Check:
    import psutil

    for proc in psutil.process_iter(["name"]):
        if (proc.info.get("name") or "") in CRON_DAEMONS:
            return passed(AREA, "loaded", f"the cron daemon runs (pid {proc.pid}): the entries fire")
    return problem(AREA, "loaded", "no cron daemon runs on this machine: the entries never fire",
                   "start cron (sudo systemctl enable --now cron), or run "
                   + ctx.command("schedule", "run-due", "--loop", "60") + " from a service",
                   ctx.unattended_severity)


def _launchd(ctx: DoctorContext, jobs: dict) -> list[Check]:
    from pathlib import Path

    from pipeline.core.schedule import launchd_plists

    severity = ctx.unattended_severity
    install = ctx.command("schedule", "install")
    agents = Path(os.path.expanduser(str(ctx.cfg("schedule.launch_agents_dir"))))
    expected = launchd_plists(ctx.root, jobs)
    out = []
    for name, job in jobs.items():
        fname = next(f for f in expected if f.endswith(f".{name}.plist"))
        path = agents / fname
        try:
            current = path.read_bytes()
        except FileNotFoundError:
            out.append(problem(AREA, name, f"not installed ({path} does not exist)", install,
                               severity))
            continue
        if current != expected[fname]:
            out.append(problem(AREA, name, f"{path} differs from the config (its time or the "
                                           f"Python changed)", install, severity))
            continue
        label = fname[: -len(".plist")]
        loaded = subprocess.run(["launchctl", "list", label], capture_output=True,
                                stdin=subprocess.DEVNULL, timeout=30).returncode == 0
        if not loaded:
            out.append(problem(AREA, name, f"installed but not loaded in launchd ({label})",
                               f"launchctl load {shlex.quote(str(path))}", severity))
            continue
        out.append(passed(AREA, name, f"installed and loaded, {_next(ctx, job)}"))
    return out
