"""The backup's own alerts: a snapshot that failed (backup_failed), a mirror that failed
(mirror_failed), a snapshot or mirror that failed its verification (backup_verify_failed).
Sent by the part that knows what failed, so they go out whether the weekly run, a scheduled
job or the operator ran it; the runner and `schedule run` see them in the stage's info
(pipeline/core/alerts.py OWN_ALERTS_KEY) and do not repeat them as stage_failed / job_failed.

The first line fits an SMS: the target or mirror and its path, the host, what is wrong and
the fix. The text holds no clock time, so the Alerter's de-duplication stops a failure that
repeats every hour from buzzing the phone every hour."""
from __future__ import annotations

from pathlib import Path

from pipeline.core.alerts import Alerter, local_host, sms_line
from pipeline.stages.backup.records import MIRROR, MIRROR_VERIFY, SNAPSHOT, SNAPSHOT_VERIFY, Outcome

KIND_BY_OPERATION = {SNAPSHOT: "backup_failed", MIRROR: "mirror_failed",
                     SNAPSHOT_VERIFY: "backup_verify_failed", MIRROR_VERIFY: "backup_verify_failed"}


def _problem(error: str, name: str, path: Path, mount: Path | None) -> str:
    """The error without what the first line names already: the "backup target NAME: " /
    "mirror NAME: " prefix and a leading path ("/Volumes/X is not a mounted volume")."""
    for prefix in (f"backup target {name}: ", f"mirror {name}: "):
        if error.startswith(prefix):
            error = error[len(prefix):]
    for p in (str(path), str(mount) if mount else None):
        if p and error.startswith(p + " "):
            error = error[len(p) + 1:]
    return error


def fix_for(out: Outcome, path: Path, mount: Path | None) -> str:
    """What the operator does, in a few words (an SMS is short), from the error's wording
    (targets.py, records.describe, mirror.py, verify.py)."""
    err = out.error or ""
    if "not a mounted volume" in err or "not on the mounted volume" in err:
        return f"mount {mount or path}"
    if out.kind in (SNAPSHOT_VERIFY, MIRROR_VERIFY):
        return "take a fresh copy (see below); keep the bad one for now"
    if "does not exist" in err and "source" not in err:
        return f"create {path} (or set create = true)"
    if "not writable" in err or "cannot create" in err or "not a folder" in err:
        return f"make {path} a writable folder"
    if "disk low" in err:
        return f"free space on {path}, or lower disk.backup_min_free_gb"
    if "target full" in err:
        return f"free space on {path} (or keep fewer generations)"
    if "rsync is not installed" in err:
        return "install rsync"
    if "another backup is writing" in err or "did not pause" in err:
        return "run it again when the other writer has finished"
    return "read logs/backup.log"


def alert_text(out: Outcome, path: Path, mount: Path | None) -> str:
    what = "mirror" if out.kind in (MIRROR, MIRROR_VERIFY) else "backup"
    problem = _problem(out.error or "failed", out.target, path, mount)
    first = sms_line(f"{what} {out.target} ({path})", local_host(), problem, fix_for(out, path, mount))
    again = f"imageselector run backup --once --target {out.target}"
    lines = [first, f"error: {out.error}", f"then run it again: {again}"]
    if out.kind in (SNAPSHOT_VERIFY, MIRROR_VERIFY):
        lines.append(f"check again: imageselector backup verify --target {out.target}")
    return "\n".join(lines + ["status: imageselector backup status", "log: logs/backup.log"])


def send_failure(root, conn, out: Outcome, path: Path, mount: Path | None = None, log=None) -> str | None:
    """Alert one failed operation; returns its kind once recorded (sent, de-duplicated or
    held back by the alert settings: the console lists it either way), None when the alert
    could not even be recorded (broken [alerts] config: the caller's generic alert stands)."""
    kind = KIND_BY_OPERATION[out.kind]
    if "disk low" in (out.error or ""):
        # the floor check has sent disk_low for this volume (once per episode, naming what
        # waits and the fix): one fault, one alert; the run summary still lists the target
        return "disk_low"
    try:
        Alerter(root, conn=conn, log=log).send(kind, alert_text(out, path, mount))
    except Exception as exc:  # the backup's own record must not be lost to its alert
        if log is not None:
            log.error("could not record the %s alert: %s", kind, exc)
        return None
    return kind
