"""job_failed: a scheduled job (`schedule run`, from cron, launchd or run-due) that exited
non-zero or died reaches the operator from here, unless the step that failed already told
them itself (the backup stage's backup_failed, the runner's run_failed: more precise than
"exit 1", and one fault should buzz the phone once).

Not a failure: exit 3 (another instance is running: it reports its own end) and a stage's
resumable exit (``RESUMABLE_EXITS`` of its entry module, e.g. sync's 75: quota spent).
A job that did not start at all is the watch's ``schedule_missed``; this is the other half:
it started and did not end well."""
from __future__ import annotations

from pathlib import Path

from pipeline.core.alerts import Alerter, local_host, own_alerts, sms_line
from pipeline.core.errors import UserError
from pipeline.core.fsutil import read_json_or_none

BUSY_EXIT = 3
KIND = "job_failed"


def step_stage(step: list[str]) -> str | None:
    """The stage a `run STAGE ...` step runs (None for other commands)."""
    if not step or step[0] != "run":
        return None
    args = [a for a in step[1:] if not a.startswith("-")]
    return args[0] if args else None


def step_outcome(root, step: list[str], code: int, since: float) -> tuple[str, list[str]]:
    """(outcome, alerts the step sent itself) for a step that exited ``code`` != 0, having
    started at ``since``: "busy", "deferred" or "failed"."""
    if code == BUSY_EXIT:
        return "busy", []
    stage = step_stage(step)
    if stage is None:
        return "failed", []
    from pipeline.core.stage import spec
    from pipeline.core.stage_runtime import load_entry

    try:
        module, _ = load_entry(spec(stage))
    except UserError:
        return "failed", []
    if code in (getattr(module, "RESUMABLE_EXITS", None) or {}):
        return "deferred", []
    # the stage's final heartbeat, if it is this step's run, says which alerts it sent
    hb = read_json_or_none(root.heartbeat_path(stage)) or {}
    end = hb.get("exit") or {}
    if end.get("code") == code and float(end.get("at") or 0) >= since:
        return "failed", own_alerts(hb)
    return "failed", []


def exit_words(code: int | None) -> str:
    if code is None:
        return "died before recording its end"
    if code < 0:
        return f"killed by signal {-code}"
    return f"exit {code}"


def send_job_failed(root, conn, job: str, problem: str, log_path: Path, detail: str = "",
                    log=None) -> dict | None:
    """One job_failed alert (de-duplicated by the Alerter: the text holds no clock time).
    Never raises: a broken alert config is written to the schedule log instead."""
    text = sms_line(f"job {job}", local_host(), problem, f"read {log_path}")
    text += f"\nrun it again: imageselector schedule run {job}" + (f"\n{detail}" if detail else "")
    try:
        return Alerter(root, conn=conn, log=log).send(KIND, text)
    except Exception as exc:  # the job's record matters more than its alert
        try:
            with open(log_path, "a", encoding="utf-8") as fh:
                fh.write(f"job {job}: could not record the job_failed alert: {exc}\n")
        except OSError:
            pass
        return None
