"""Stages panel: one row per stage per host (local first, then each worker host)."""
from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static

from console.actions import LIVE
from pipeline.core import fmt
from console.widgets.synced_table import SyncedTable
from console.widgets.text_updates import set_message

STATE_CLASSES = {
    "running": "state--running", "pausing": "state--pausing", "paused": "state--paused",
    "blocked": "state--blocked", "stopping": "state--stopping", "stopped": "state--stopped",
    "crashed": "state--crashed", "stale": "state--stale", "unreachable": "state--unreachable",
    "waiting": "state--waiting", "n/a": "state--na",
    "error": "state--crashed",   # a Ray worker the orchestrator cannot reach (scale_out.py)
}


class StagesTable(SyncedTable):
    FILTERABLE = True
    COMPONENT_CLASSES = {*STATE_CLASSES.values(), "exit--failed"}
    COLUMNS = [("host", "host", 7), ("stage", "stage", 11), ("state", "state", 20),
               ("pid", "pid", 6), ("uptime", "uptime", 6), ("heartbeat", "heartbeat", 9),
               ("rate", "rate", 10), ("cpu", "cpu", 5), ("mem", "mem", 8),
               ("current", "current", 36), ("last_exit", "last exit", 12)]


def shown_rate(row: dict) -> float | None:
    """A stage's rate only while it runs: a paused, blocked or stopped stage moves nothing,
    whatever its last minute's average says."""
    return row.get("rate") if row.get("state") == "running" and row.get("rate") else None


def usage_cells(row: dict) -> tuple[str, str]:
    """CPU % (100 = one core) and resident memory of a live stage's process."""
    if row.get("state") not in LIVE:
        return "", ""
    cpu = row.get("cpu_pct")
    return ("" if cpu is None else f"{cpu:.0f}%"), ("" if row.get("rss_bytes") is None
                                                     else fmt.size(row["rss_bytes"]))



def row_key(row: dict) -> str:
    key = f"{row.get('host', 'local')}/{row['name']}"
    # a host serves a re-embed per model (pipeline/reembed/serve_rows.py): one row each
    return f"{key}/{row['model']}" if row.get("model") else key


def state_label(row: dict, stop_requested: bool) -> str:
    state = row.get("state") or "?"
    if row.get("label"):
        return row["label"]   # a row's own word for its state (a Ray worker "draining")
    if state == "stopping" or (stop_requested and state in ("running", "pausing", "paused",
                                                             "blocked", "stale")):
        return "stopping..."
    if state == "blocked" and row.get("blocked_reason"):
        return f"blocked: {row['blocked_reason']}"
    return state


def last_exit_text(row: dict) -> tuple[str, str | None]:
    last = row.get("last_exit") or {}
    if not last:
        return "", None
    outcome = last.get("outcome", "")
    text = f"{last.get('code', '?')} {outcome}"
    return text, ("exit--failed" if outcome in ("failed", "crashed") else None)


CLOCK_WARN_S = 5.0   # a host clock this far off is worth a word (its rows are still right)


def clock_messages(rows: list[dict]) -> list[str]:
    """One line per worker host whose clock is off ours: its heartbeats are aged by its own
    clock (pipeline.core.hoststages), but its log times will not match this machine's."""
    out, seen = [], set()
    for r in rows:
        offset = r.get("clock_offset_s")
        if offset is None or abs(offset) < CLOCK_WARN_S or r.get("host") in seen:
            continue
        seen.add(r.get("host"))
        way = "ahead of" if offset > 0 else "behind"
        out.append(f"{r.get('host')}: clock {fmt.duration(abs(offset))} {way} this machine's "
                   f"(set up time sync there)")
    return out


def table_row(row: dict, stop_requested: bool) -> dict:
    state = row.get("state") or "?"
    if row.get("message"):
        current = row["message"]
    else:
        current = row.get("current") or ""
    return {
        "host": row.get("host", "local"),
        "stage": row["name"],
        "state": (state_label(row, stop_requested), STATE_CLASSES.get(state)),
        "pid": str(row.get("pid") or ""),
        "uptime": fmt.duration(row.get("uptime_s")) if row.get("uptime_s") is not None else "",
        "heartbeat": fmt.duration(row.get("heartbeat_age_s"))
        if row.get("heartbeat_age_s") is not None else "",
        "rate": fmt.per_minute(shown_rate(row)) if shown_rate(row) else "",
        "cpu": usage_cells(row)[0],
        "mem": usage_cells(row)[1],
        "current": fmt.shorten(current, 70 if row.get("message") else 40),
        "last_exit": last_exit_text(row),
    }


class StagesPanel(Vertical):
    """Shows rows it is given; the app polls."""

    def compose(self) -> ComposeResult:
        yield StagesTable(id="stages-table")
        yield Static("", id="stages-ray")   # each Ray worker's detail (scale_out.ray_line)
        yield Static("", id="stages-message", classes="panel-message")

    def on_mount(self) -> None:
        self.border_title = "Stages"

    @property
    def table(self) -> StagesTable:
        return self.query_one(StagesTable)

    def show(self, rows: list[dict], stopping: set[str], messages: list[str],
             notes: list[str] | None = None) -> None:
        self.table.sync([(row_key(r), table_row(r, row_key(r) in stopping)) for r in rows])
        set_message(self.query_one("#stages-ray", Static), "\n".join(notes or []))
        set_message(self.query_one("#stages-message", Static), "\n".join(messages))

    def selected_key(self) -> str | None:
        return self.table.selected_key()
