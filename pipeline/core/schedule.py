"""The seed's cron table as one config (pipeline/defaults/schedule.toml, overridable per job
in the root's imageselector.toml), installed as crontab entries (Linux) or launchd plists
(macOS), or run by `schedule run-due` where there is no cron. Every run goes through
`schedule run JOB`, which records what ran when and how it ended in `schedule_runs`, and
alerts job_failed when a job fails or dies (pipeline/core/job_alerts.py).
"""
from __future__ import annotations

import os
import plistlib
import re
import shlex
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from pipeline.core.cron import ALIASES, Cron, job_interval, next_fire_cached, parse_cron, prev_fire
from pipeline.core.errors import UserError
from pipeline.core.stage_control import tail_lines

BLOCK_BEGIN = "# BEGIN imageselector"
BLOCK_END = "# END imageselector"


# ---------------------------------------------------------------------------
# Jobs
# ---------------------------------------------------------------------------
@dataclass
class Job:
    name: str
    cron: str
    steps: list[list[str]]
    description: str = ""
    enabled: bool = True


def load_jobs(root) -> dict[str, Job]:
    """Package jobs, each merged key by key with [schedule.jobs.NAME] of the root config."""
    cfg = root.config
    defaults = (cfg.defaults.get("schedule", {}) or {}).get("jobs", {}) or {}
    overrides = (cfg.raw_file_section("schedule") or {}).get("jobs", {}) or {}
    jobs: dict[str, Job] = {}
    for name in list(defaults) + [n for n in overrides if n not in defaults]:
        merged = dict(defaults.get(name, {}))
        merged.update(overrides.get(name, {}) or {})
        where = f"schedule.jobs.{name}"
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise UserError(f"{where}: job names may use letters, digits, '.', '_' and '-'")
        if "cron" not in merged or "steps" not in merged:
            raise UserError(f"{where}: needs cron and steps")
        parse_cron(str(merged["cron"]))
        steps = merged["steps"]
        if not isinstance(steps, list) or not all(isinstance(s, list) and s and
                                                  all(isinstance(a, str) for a in s) for s in steps):
            raise UserError(f"{where}: steps must be a list of command lines (lists of strings)")
        jobs[name] = Job(name, str(merged["cron"]), [list(s) for s in steps],
                         str(merged.get("description", "")), bool(merged.get("enabled", True)))
    return jobs


def get_job(root, name: str) -> Job:
    jobs = load_jobs(root)
    if name not in jobs:
        raise UserError(f"no scheduled job named {name!r} (jobs: {', '.join(jobs)})")
    return jobs[name]


# ---------------------------------------------------------------------------
# Recording runs (table schedule_runs: schema v3 in pipeline/core/db.py)
# ---------------------------------------------------------------------------
def _write(conn, sql: str, args: tuple):
    from pipeline.core.db import retry_on_busy, transaction

    @retry_on_busy
    def run():
        with transaction(conn):
            return conn.execute(sql, args).lastrowid

    return run()


def last_runs(conn, limit_per_job: int = 1) -> dict[str, list[dict]]:
    # read-only (status calls this): no table yet means no run yet
    if not conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schedule_runs'").fetchone():
        return {}
    # the newest runs of each job (a job every 15 minutes, like the watch, must not push a
    # weekly job's last run out of a global window)
    rows = conn.execute(
        "SELECT job, trigger, started_at, finished_at, exit_code, outcome, step FROM ("
        " SELECT *, ROW_NUMBER() OVER (PARTITION BY job ORDER BY started_at DESC, run_id DESC) AS n"
        " FROM schedule_runs) WHERE n <= ? ORDER BY started_at DESC, run_id DESC",
        (int(limit_per_job),)).fetchall()
    out: dict[str, list[dict]] = {}
    for job, trig, st, fin, code, outcome, step in rows:
        lst = out.setdefault(job, [])
        if len(lst) < limit_per_job:
            lst.append({"trigger": trig, "started_at": st, "finished_at": fin, "exit_code": code,
                        "outcome": outcome or ("running" if fin is None else None), "step": step})
    return out


def close_interrupted(conn, root=None) -> None:
    """Runs whose process is gone without recording an end are marked interrupted (and, given
    the root, told to the operator as job_failed: the job died, e.g. killed or a power cut)."""
    from pipeline.core.procs import pid_alive
    rows = conn.execute("SELECT run_id, pid, job, trigger, started_at FROM schedule_runs "
                        "WHERE finished_at IS NULL").fetchall()
    for run_id, pid, job, trigger, started in rows:
        if pid and not pid_alive(pid):
            _write(conn, "UPDATE schedule_runs SET finished_at = ?, outcome = 'interrupted' "
                         "WHERE run_id = ?", (time.time(), run_id))
            if root is not None:
                from pipeline.core.job_alerts import send_job_failed

                when = time.strftime("%Y-%m-%d %H:%M", time.localtime(started))
                send_job_failed(root, conn, job, f"died before recording its end (run of {when}, "
                                f"{trigger})", root.log_path("schedule"))


# ---------------------------------------------------------------------------
# Running a job
# ---------------------------------------------------------------------------
def step_argv(root, step: list[str], python: str | None = None) -> list[str]:
    return [python or sys.executable, "-m", "imageselector", "--root", str(root.path), *step]


def run_job(root, job: Job, trigger: str = "manual",
            runner: Callable[[list[str], Path], int] | None = None) -> dict:
    """Run a job's steps in order (stop at the first failure), recording the run."""
    from pipeline.core.db import open_db
    from pipeline.core.job_alerts import exit_words, send_job_failed, step_outcome

    conn = open_db(root)
    try:
        close_interrupted(conn, root)
        started = time.time()
        run_id = _write(conn, "INSERT INTO schedule_runs(job, trigger, started_at, pid) VALUES (?,?,?,?)",
                        (job.name, trigger, started, os.getpid()))
        log_path = root.log_path("schedule")
        code, outcome, step_text, told = 0, "ok", "", []
        runner = runner or _run_step
        try:
            root.logs_dir.mkdir(parents=True, exist_ok=True)
            for step in job.steps:
                step_text = " ".join(step)
                with open(log_path, "a", encoding="utf-8") as fh:
                    fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} job {job.name} ({trigger}): "
                             f"imageselector {step_text}\n")
                step_started = time.time()
                code = runner(step_argv(root, step), log_path)
                if code != 0:
                    outcome, told = step_outcome(root, step, code, step_started)
                    break
        except Exception as exc:  # the job runner itself failed: record it and say so
            _write(conn, "UPDATE schedule_runs SET finished_at = ?, outcome = 'failed', step = ?, "
                         "output_tail = ? WHERE run_id = ?",
                   (time.time(), step_text, f"{type(exc).__name__}: {exc}", run_id))
            send_job_failed(root, conn, job.name, f"schedule run crashed at imageselector {step_text}: "
                            f"{type(exc).__name__}: {exc}", log_path, f"trigger: {trigger}")
            raise
        tail = "\n".join(tail_lines(log_path, 20, max_bytes=8192))
        _write(conn, "UPDATE schedule_runs SET finished_at = ?, exit_code = ?, outcome = ?, step = ?, "
                     "output_tail = ? WHERE run_id = ?",
               (time.time(), code, outcome, step_text, tail, run_id))
        if outcome == "failed" and not told:
            # the log's tail stays out of the alert: its clock times would defeat de-duplication
            send_job_failed(root, conn, job.name, f"{exit_words(code)} at imageselector {step_text}",
                            log_path, f"trigger: {trigger}")
        return {"job": job.name, "trigger": trigger, "started_at": started, "exit_code": code,
                "outcome": outcome, "step": step_text, "alerted_by_step": told}
    finally:
        conn.close()


def _run_step(argv: list[str], log_path: Path) -> int:
    with open(log_path, "ab") as log:
        return subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log).returncode


@contextmanager
def _run_due_lock(root) -> Iterator[bool]:
    from pipeline.core.fsutil import exclusive_lock

    with exclusive_lock(root.run_dir / "schedule.lock") as held:
        yield held


def due_jobs(root, conn, now: float | None = None) -> list[tuple[Job, float]]:
    """Enabled jobs whose latest slot (not older than schedule.catchup_s) has not run yet."""
    now = time.time() if now is None else now
    catchup = float(root.config.get("schedule.catchup_s"))
    out = []
    for job in load_jobs(root).values():
        if not job.enabled:
            continue
        slot = prev_fire(parse_cron(job.cron), now)
        if slot is None or now - slot > catchup:
            continue
        last = conn.execute("SELECT MAX(started_at) FROM schedule_runs WHERE job = ?", (job.name,)).fetchone()[0]
        if last is None or last < slot:
            out.append((job, slot))
    return out


def run_due(root, now: float | None = None, dry_run: bool = False,
            runner: Callable[[list[str], Path], int] | None = None) -> list[dict]:
    """Run every due job once, in order (one run-due at a time per root)."""
    from pipeline.core.db import open_db

    with _run_due_lock(root) as got:
        if not got:
            return []
        conn = open_db(root)
        try:
            due = due_jobs(root, conn, now)
        finally:
            conn.close()
        if dry_run:
            return [{"job": j.name, "slot": slot, "outcome": "due"} for j, slot in due]
        return [run_job(root, job, "run-due", runner) for job, _ in due]


def show(root, conn=None, now: float | None = None) -> list[dict]:
    now = time.time() if now is None else now
    runs = last_runs(conn) if conn is not None else {}
    out = []
    for job in load_jobs(root).values():
        last = (runs.get(job.name) or [None])[0]
        out.append({"job": job.name, "cron": job.cron, "enabled": job.enabled,
                    "description": job.description,
                    "steps": [" ".join(s) for s in job.steps],
                    "next_run": next_fire_cached(job.cron, now) if job.enabled else None,
                    "interval_s": job_interval(job.cron), "last_run": last})
    return out


def status_section(root, conn) -> list[dict] | None:
    """For the snapshot's "schedule" section: jobs with their last run."""
    return show(root, conn)


# ---------------------------------------------------------------------------
# Installing: crontab (Linux and other POSIX) or launchd (macOS)
# ---------------------------------------------------------------------------
def _q(text: str) -> str:
    return shlex.quote(str(text))


def crontab_block(root, jobs: dict[str, Job], python: str | None = None) -> str:
    python = python or sys.executable
    r = str(root.path)
    log = str(root.log_path("schedule"))
    lines = [f"{BLOCK_BEGIN} {r}",
             "# written by `imageselector schedule install`; change the schedule in "
             "imageselector.toml and install again"]
    for job in jobs.values():
        if not job.enabled:
            continue
        parse_cron(job.cron)
        cmd = (f"cd {_q(r)} && {_q(python)} -m imageselector --root {_q(r)} "
               f"schedule run {_q(job.name)} --trigger cron >> {_q(log)} 2>&1")
        lines.append(f"{job.cron} " + cmd.replace("%", "\\%"))  # % ends a crontab command
    lines.append(f"{BLOCK_END} {r}")
    return "\n".join(lines) + "\n"


def merge_crontab(existing: str, block: str, root_path: str) -> str:
    """The user's crontab with this root's block replaced (other lines and roots untouched)."""
    begin, end = f"{BLOCK_BEGIN} {root_path}", f"{BLOCK_END} {root_path}"
    out, skipping = [], False
    for line in existing.splitlines():
        if line.strip() == begin:
            skipping = True
            continue
        if skipping and line.strip() == end:
            skipping = False
            continue
        if not skipping:
            out.append(line)
    text = "\n".join(out).rstrip("\n")
    return (text + "\n" if text else "") + block


class CrontabIO:
    """The user's crontab through the `crontab` program, or a plain file (tests, dry runs)."""

    def __init__(self, program: str = "crontab", file: Path | None = None):
        self.program = program
        self.file = Path(file) if file else None

    def read(self) -> str:
        if self.file is not None:
            try:
                return self.file.read_text(encoding="utf-8")
            except FileNotFoundError:
                return ""
        try:
            proc = subprocess.run([self.program, "-l"], capture_output=True, text=True,
                                  stdin=subprocess.DEVNULL, timeout=30)
        except FileNotFoundError:
            raise UserError(f"{self.program!r} is not installed: use `schedule run-due` from a "
                            f"loop instead, or install cron") from None
        if proc.returncode != 0:
            if "no crontab" in (proc.stderr + proc.stdout).lower():
                return ""
            raise UserError(f"{self.program} -l failed: {proc.stderr.strip()}")
        return proc.stdout

    def write(self, text: str) -> None:
        if self.file is not None:
            from pipeline.core.fsutil import atomic_write_bytes

            atomic_write_bytes(self.file, text.encode())
            return
        proc = subprocess.run([self.program, "-"], input=text, capture_output=True, text=True, timeout=30)
        if proc.returncode != 0:
            raise UserError(f"{self.program} - failed: {proc.stderr.strip()}")


def launchd_intervals(cron: Cron, text: str) -> list[dict]:
    """StartCalendarInterval entries for a cron expression (restricted fields only)."""
    parts = (ALIASES.get(text.strip(), text.strip())).split()
    keys = [("Minute", cron.minutes, parts[0]), ("Hour", cron.hours, parts[1]),
            ("Day", cron.days, parts[2]), ("Month", cron.months, parts[3]),
            ("Weekday", cron.weekdays, parts[4])]
    combos: list[dict] = [{}]
    for key, values, part in keys:
        if part == "*":
            continue
        combos = [dict(c, **{key: v}) for c in combos for v in sorted(values)]
    if len(combos) > 500:
        raise UserError(f"cron {text!r} expands to {len(combos)} launchd intervals; simplify it")
    return combos


def _slug(root) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", str(root.path)).strip("-").lower()[-60:]


def launchd_plists(root, jobs: dict[str, Job], python: str | None = None) -> dict[str, bytes]:
    """{file name: plist bytes} per enabled job."""
    python = python or sys.executable
    out = {}
    for job in jobs.values():
        if not job.enabled:
            continue
        label = f"org.imageselector.{_slug(root)}.{job.name}"
        plist = {
            "Label": label,
            "ProgramArguments": [python, "-m", "imageselector", "--root", str(root.path),
                                 "schedule", "run", job.name, "--trigger", "launchd"],
            "WorkingDirectory": str(root.path),
            "StartCalendarInterval": launchd_intervals(parse_cron(job.cron), job.cron),
            "StandardOutPath": str(root.log_path("schedule")),
            "StandardErrorPath": str(root.log_path("schedule")),
            "RunAtLoad": False,
        }
        out[f"{label}.plist"] = plistlib.dumps(plist)
    return out


@dataclass
class InstallPlan:
    platform: str
    text: str                                    # what would be written (crontab or plists)
    files: dict[str, bytes] = field(default_factory=dict)
    commands: list[list[str]] = field(default_factory=list)


def install(root, platform: str | None = None, dry_run: bool = False, crontab_file: Path | None = None,
            agents_dir: Path | None = None, load: bool = True, uninstall: bool = False) -> InstallPlan:
    platform = platform or sys.platform
    jobs = {} if uninstall else load_jobs(root)
    if platform == "darwin":
        agents = Path(os.path.expanduser(str(agents_dir or root.config.get("schedule.launch_agents_dir"))))
        files = launchd_plists(root, jobs)
        prefix = f"org.imageselector.{_slug(root)}."
        old = sorted(p.name for p in agents.glob(prefix + "*.plist")) if agents.is_dir() else []
        commands = [["launchctl", "unload", str(agents / n)] for n in old]
        commands += [["launchctl", "load", str(agents / n)] for n in files]
        text = "\n".join(f"# {agents / n}\n{b.decode()}" for n, b in files.items())
        plan = InstallPlan("darwin", text, files, commands if load else [])
        if dry_run:
            return plan
        agents.mkdir(parents=True, exist_ok=True)
        for cmd in [c for c in plan.commands if c[1] == "unload"]:
            subprocess.run(cmd, capture_output=True)
        for n in old:
            if n not in files:
                os.unlink(agents / n)
        from pipeline.core.fsutil import atomic_write_bytes

        for n, b in files.items():
            atomic_write_bytes(agents / n, b)
        for cmd in [c for c in plan.commands if c[1] == "load"]:
            subprocess.run(cmd, capture_output=True)
        return plan
    io = CrontabIO(root.config.get("schedule.crontab"), crontab_file)
    block = crontab_block(root, jobs) if jobs else ""
    try:
        existing = io.read()
    except UserError:
        if not dry_run:
            raise
        existing = ""  # a dry run still shows the entries on a machine without cron
    text = merge_crontab(existing, block, str(root.path))
    plan = InstallPlan("cron", text)
    if not dry_run:
        io.write(text)
    return plan
