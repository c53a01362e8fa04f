"""Run panel: the weekly run's phase and steps (the pipeline stage's heartbeat), each
pausable stage's pause request and acknowledgement, the last runs, and the alerts."""
from __future__ import annotations

import json

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Static

from console.widgets.text_updates import set_message, set_text
from pipeline.core import fmt
from console.widgets.synced_table import SyncedTable


class PauseTable(SyncedTable):
    COMPONENT_CLASSES = {"pause--ack", "pause--waiting"}
    COLUMNS = [("stage", "stage", 11), ("state", "state", 11), ("pause", "pause", 9),
               ("ack", "acknowledged", 12)]


class RunsTable(SyncedTable):
    COMPONENT_CLASSES = {"run--ok", "run--failed"}
    COLUMNS = [("started", "started", 16), ("took", "took", 6), ("outcome", "outcome", 8),
               ("reason", "reason", 60)]


class AlertsTable(SyncedTable):
    COMPONENT_CLASSES = {"alert--unsent"}
    COLUMNS = [("at", "at", 16), ("kind", "kind", 12), ("text", "text", 70), ("sent", "sent", 30)]


def run_summary(row: dict | None) -> str:
    if row is None:
        return "runner: no status yet"
    parts = [f"weekly run: {row.get('state', '?')}"]
    if row.get("pid"):
        parts.append(f"pid {row['pid']}, up {fmt.duration(row.get('uptime_s'))}")
    info = row.get("info") or {}
    if info.get("phase"):
        parts.append(f"phase {info['phase']}")
    steps = info.get("steps")
    lines = ["   ".join(parts)]
    if isinstance(steps, list):
        for step in steps:
            if isinstance(step, dict):
                outcome = step.get("outcome")
                code = step.get("exit_code")
                lines.append(f"  {step.get('name', '?'):<14} {step.get('state', '')}"
                             + (f"  {outcome}" if outcome else "")
                             + (f" (exit {code})" if code not in (None, 0) else ""))
            else:
                lines.append(f"  {step}")
    elif isinstance(steps, dict):
        lines += [f"  {name:<14} {state}" for name, state in steps.items()]
    extra = {k: v for k, v in info.items() if k not in ("phase", "steps")}
    if extra:
        lines.append("  " + fmt.shorten(json.dumps(extra, default=str), 100))
    last = row.get("last_exit") or {}
    if last and not row.get("pid"):
        lines.append(f"  last exit {last.get('code')} {last.get('outcome', '')}: "
                     f"{fmt.shorten(last.get('reason', ''), 80)}")
    return "\n".join(lines)


def pause_rows(pause: dict, stage_states: dict[str, str]) -> list[tuple[str, dict]]:
    rows = []
    for name, p in pause.items():
        state = stage_states.get(name, "stopped")
        running = state not in ("stopped", "crashed", "unreachable")
        if p.get("acknowledged"):
            ack = ("yes", "pause--ack")
        elif p.get("requested") and running:
            ack = ("waiting...", "pause--waiting")
        elif p.get("requested"):
            ack = ("not running", None)
        else:
            ack = ("", None)
        rows.append((name, {"stage": name, "state": state,
                            "pause": "requested" if p.get("requested") else "", "ack": ack}))
    return rows


def runs_rows(runs: list[dict]) -> list[tuple[str, dict]]:
    rows = []
    for r in runs:
        took = (r["ended_at"] - r["started_at"]) if r.get("ended_at") else None
        outcome = r.get("outcome") or "running"
        cls = "run--ok" if outcome in ("ok", "stopped") else ("run--failed" if r.get("ended_at") else None)
        rows.append((str(r["started_at"]), {
            "started": fmt.date_time(r["started_at"]), "took": fmt.duration(took),
            "outcome": (outcome, cls), "reason": fmt.shorten(r.get("reason") or "", 50)}))
    return rows


def alert_rows(alerts: list[dict]) -> list[tuple[str, dict]]:
    return [(f"{a['at']}:{i}", {
        "at": fmt.date_time(a["at"]), "kind": a["kind"], "text": fmt.shorten(a["text"], 70),
        "sent": ("yes", None) if a.get("sent") else (fmt.shorten("no " + (a.get("error") or ""), 30),
                                                     "alert--unsent")})
            for i, a in enumerate(alerts)]


class RunnerPanel(Vertical):
    def compose(self) -> ComposeResult:
        yield Static("", id="run-summary")
        yield Static("", id="run-last-summary")
        with Horizontal(id="run-tables"):
            with Vertical(id="run-pauses"):
                yield Static("pauses (P pause all, R resume all)", classes="subtitle")
                yield PauseTable(id="pause-table")
            with Vertical(id="run-history"):
                yield Static("last runs (W start, E stop)", classes="subtitle")
                yield RunsTable(id="runs-table")
        yield Static("alerts", classes="subtitle")
        yield AlertsTable(id="alerts-table")
        yield Static("", id="run-message", classes="panel-message")

    def on_mount(self) -> None:
        self.border_title = "Weekly run, pauses and alerts"

    def show_runner(self, runner_row: dict | None) -> None:
        set_text(self.query_one("#run-summary", Static), run_summary(runner_row), layout=True)

    def show_view(self, view: dict, stage_states: dict[str, str]) -> None:
        summary = view.get("summary")
        set_text(self.query_one("#run-last-summary", Static),
                 f"last run: {summary}" if summary else "", layout=True)
        self.query_one(PauseTable).sync(pause_rows(view.get("pause", {}), stage_states))
        self.query_one(RunsTable).sync(runs_rows(view.get("runs", [])))
        self.query_one(AlertsTable).sync(alert_rows(view.get("alerts", [])))
        self.show_message(view.get("db_error"))

    def show_message(self, message: str | None) -> None:
        set_message(self.query_one("#run-message", Static), message)
