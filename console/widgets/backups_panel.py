"""Backups panel: each target's last success, size, verification and flags in the words of
`imageselector backup status` (OVERDUE in a warning colour, LAST FAILED in red); below, the
scheduled jobs with their last result (or, before the scheduler exists, the last backup runs)."""
from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static

from pipeline.core import fmt
from console.widgets.synced_table import SyncedTable
from console.widgets.text_updates import set_message, set_text


class BackupsTable(SyncedTable):
    COMPONENT_CLASSES = {"backup--ok", "backup--overdue", "backup--failed", "backup--running"}
    # all of it visible in a 160-column terminal (the words of `imageselector backup status`)
    COLUMNS = [("target", "target", 8), ("kind", "kind", 8), ("last_ok", "last ok", 9),
               ("size", "size", 8), ("verified", "verified", 12), ("status", "status", 20)]


class JobsTable(SyncedTable):
    COMPONENT_CLASSES = {"backup--ok", "backup--failed", "backup--running"}
    COLUMNS = [("when", "last run", 16), ("job", "job", 14), ("result", "result", 20),
               ("next", "next", 16)]


def target_status(flags: list[str]) -> tuple[str, str]:
    """(text, class) of a target's flags (OVERDUE, running, LAST FAILED, no longer
    configured: the CLI's words), or ok when it has none."""
    if "LAST FAILED" in flags:
        cls = "backup--failed"
    elif "OVERDUE" in flags or "no longer configured" in flags:
        cls = "backup--overdue"
    elif "running" in flags:
        cls = "backup--running"
    else:
        cls = "backup--ok"
    return (" ".join(flags) or "ok"), cls


def target_rows(backups: list[dict]) -> list[tuple[str, dict]]:
    from pipeline.stages.backup.status import target_words  # the CLI's words, one place

    rows = []
    for b in backups:
        words = target_words(b)
        rows.append((f"{b['target']}/{b['kind']}", {
            "target": b["target"], "kind": b["kind"], "last_ok": words["last_ok"],
            "size": words["size"], "verified": words["verified"],
            "status": target_status(words["flags"]),
        }))
    return rows


def schedule_rows(jobs: list[dict]) -> list[tuple[str, dict]]:
    """pipeline.core.schedule.show(): each job with its last run."""
    rows = []
    for j in jobs:
        last = j.get("last_run") or {}
        outcome = last.get("outcome")
        if not last:
            result, cls = "never run", None
        elif outcome in ("running", None) and last.get("finished_at") is None:
            result, cls = "running", "backup--running"
        elif outcome == "ok":
            result, cls = "ok", "backup--ok"
        else:
            code = last.get("exit_code")
            result, cls = f"{outcome or 'failed'}" + (f" (exit {code})" if code else ""), "backup--failed"
        rows.append((f"job:{j['job']}", {
            "when": fmt.date_time(last.get("started_at")) if last else "-", "job": j["job"],
            "result": (result, cls),
            "next": fmt.date_time(j.get("next_run")) if j.get("enabled", True) else "disabled"}))
    return rows


def backup_job_rows(jobs: list[dict]) -> list[tuple[str, dict]]:
    """The last rows of the backups table (before the scheduler exists)."""
    rows = []
    for j in jobs:
        if j.get("ok") is None:
            result, cls = "running", "backup--running"
        elif j["ok"]:
            result, cls = "ok" + (", verified" if j.get("verified") else ""), "backup--ok"
        else:
            result, cls = "FAILED: " + fmt.shorten(j.get("error") or "", 40), "backup--failed"
        rows.append((f"backup:{j['backup_id']}", {
            "when": fmt.date_time(j.get("started_at")), "job": f"{j['target']} {j['kind']}",
            "result": (result, cls), "next": ""}))
    return rows


class BackupsPanel(Vertical):
    def compose(self) -> ComposeResult:
        yield BackupsTable(id="backups-table")
        yield Static("scheduled jobs", id="jobs-title", classes="subtitle")
        yield JobsTable(id="jobs-table")
        yield Static("", id="backups-message", classes="panel-message")

    def on_mount(self) -> None:
        self.border_title = "Backups"

    def show(self, backups: list[dict], schedule: list[dict] | None, backup_jobs: list[dict],
             notes: list[str] | None = None) -> None:
        self.query_one(BackupsTable).sync(target_rows(backups))
        if schedule is not None:
            set_text(self.query_one("#jobs-title", Static), "scheduled jobs")
            self.query_one(JobsTable).sync(schedule_rows(schedule))
        else:
            set_text(self.query_one("#jobs-title", Static), "last backup runs")
            self.query_one(JobsTable).sync(backup_job_rows(backup_jobs))
        lines = list(notes or [])
        if not backups:
            lines.append("no backup target is configured or has run yet")
        self.show_message("\n".join(lines))

    def show_message(self, message: str | None) -> None:
        set_message(self.query_one("#backups-message", Static), message)
