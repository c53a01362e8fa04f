"""The backups' part of the status snapshot (also `imageselector backup status` and the
console's backups panel): each target's and mirror's last snapshot, whether it is verified
and whether it is overdue against its schedule job."""
from __future__ import annotations

import time

from pipeline.core.errors import UserError
from pipeline.stages.backup.records import MIRROR, MIRROR_VERIFY, SNAPSHOT, SNAPSHOT_VERIFY
from pipeline.stages.backup.targets import load_mirrors, load_targets
from pipeline.status.registry import status_provider


@status_provider("backups", order=0)
def backups_section(root, conn, now, errors) -> list:
    if conn is None:
        return []
    return status_view(root, conn, now, errors)


def job_interval_s(root, job: str) -> float | None:
    try:
        from pipeline.core.cron import job_interval
        from pipeline.core.schedule import load_jobs

        jobs = load_jobs(root)
        return job_interval(jobs[job].cron) if job in jobs else None
    except UserError:
        return None


def backup_status(root, conn, now: float | None = None, configured: bool = True) -> list[dict]:
    """Per target and mirror: last success, age, size, verified, overdue. The configured
    ones first (never run: overdue), then any the backups table still remembers that the
    config no longer names (``configured`` false, never overdue). ``configured=False``
    lists only the remembered ones (for a status whose backup config does not parse)."""
    now = time.time() if now is None else now
    factor = float(root.config.get("backup.overdue_factor"))
    items = []
    if configured:
        items = [(t.name, SNAPSHOT, t.job, str(t.path), t.kind) for t in load_targets(root)]
        items += [(m.name, MIRROR, m.job, str(m.dest), m.kind) for m in load_mirrors(root)]
    named = {(name, kind) for name, kind, *_ in items}
    items += [(name, kind, None, None, None) for name, kind in conn.execute(
        "SELECT DISTINCT target, kind FROM backups WHERE kind IN (?, ?) ORDER BY target, kind",
        (SNAPSHOT, MIRROR)) if (name, kind) not in named]
    out = []
    for name, kind, job, path, tkind in items:
        ok_row = conn.execute(
            "SELECT finished_at, size_bytes, verified, path FROM backups WHERE target = ? AND kind = ? "
            "AND ok = 1 ORDER BY finished_at DESC LIMIT 1", (name, kind)).fetchone()
        last = conn.execute(
            "SELECT started_at, finished_at, ok, error FROM backups WHERE target = ? AND kind = ? "
            "ORDER BY started_at DESC, backup_id DESC LIMIT 1", (name, kind)).fetchone()
        vkind = SNAPSHOT_VERIFY if kind == SNAPSHOT else MIRROR_VERIFY
        ver = conn.execute(
            "SELECT finished_at, ok, error FROM backups WHERE target = ? AND kind = ? AND finished_at "
            "IS NOT NULL ORDER BY finished_at DESC LIMIT 1", (name, vkind)).fetchone()
        interval = job_interval_s(root, job) if job else None
        last_success = ok_row[0] if ok_row else None
        age = round(now - last_success, 1) if last_success else None
        verified = bool(ok_row and ok_row[2])
        if ver is not None and ok_row is not None and ver[0] >= ok_row[0]:
            verified = bool(ver[1])  # a later verification decides
        in_progress = bool(last and last[1] is None)
        failed_last = bool(last and last[1] is not None and not last[2])
        out.append({
            "target": name, "kind": kind, "target_kind": tkind, "path": path, "job": job,
            "configured": tkind is not None,
            "last_success": last_success, "age_s": age,
            "size_bytes": ok_row[1] if ok_row else None, "verified": verified,
            "interval_s": interval,
            "overdue": tkind is not None and (last_success is None
                                              or (interval is not None and age > interval * factor)),
            "last_attempt": last[0] if last else None,
            "last_ok": None if not last or last[1] is None else bool(last[2]),
            "in_progress": in_progress,
            "last_error": last[3] if failed_last else None,
            "last_verify": ver[0] if ver else None,
            "last_verify_error": ver[2] if ver and not ver[1] else None,
        })
    return out


def target_words(it: dict) -> dict:
    """The words every view puts on one target of backup_status (`backup status`, `status`,
    the console): last ok ("40m ago", "never"), size, verified ("verified", "not verified")
    and the flags (OVERDUE, running, LAST FAILED, no longer configured; none when all is well)."""
    from pipeline.core.fmt import duration, size

    flags = [text for key, text in (("overdue", "OVERDUE"), ("in_progress", "running"),
                                    ("last_error", "LAST FAILED")) if it.get(key)]
    if it.get("configured") is False:
        flags.append("no longer configured")
    return {"last_ok": f"{duration(it['age_s'])} ago" if it.get("age_s") is not None else "never",
            "size": size(it.get("size_bytes")),
            "verified": "verified" if it.get("verified") else "not verified",
            "flags": flags}


def status_view(root, conn, now: float, errors: list[str]) -> list[dict]:
    """The status snapshot's and the console's ``backups``: backup_status; when the backup
    config does not parse, the targets the DB remembers, with the error in ``errors``."""
    try:
        return backup_status(root, conn, now)
    except UserError as exc:
        errors.append(f"backups: {exc}")
        return backup_status(root, conn, now, configured=False)
