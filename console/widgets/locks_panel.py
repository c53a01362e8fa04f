"""DB locks panel: every process holding the DB (writer, readers, open) with the stage and
host it is, refreshed live, the writer highlighted."""
from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static

from console.widgets.text_updates import set_message
from pipeline.core import fmt
from console.widgets.synced_table import SyncedTable


class LocksTable(SyncedTable):
    FILTERABLE = True
    COMPONENT_CLASSES = {"locks--writer", "locks--reader", "locks--open"}
    COLUMNS = [("mode", "mode", 6), ("pid", "pid", 7), ("stage", "stage", 11),
               ("host", "host", 6), ("held", "held", 5), ("cmdline", "command", 60)]


def command_text(h: dict) -> str:
    """The holder's command as named by pipeline/status/lock_owners.py, without the program's
    own name (`run download` for `imageselector run download`: the rest fits the panel)."""
    command = h.get("command") or h.get("cmdline") or ""
    return command.removeprefix("imageselector ")


def lock_rows(holders: list[dict], now: float) -> list[tuple[str, dict]]:
    rows = []
    for h in holders:
        cls = f"locks--{h['mode']}" if h["mode"] in ("writer", "reader", "open") else None
        since = h.get("since")
        rows.append((f"{h['pid']}:{h['mode']}", {
            "mode": (h["mode"].upper() if h["mode"] == "writer" else h["mode"], cls),
            "pid": (str(h["pid"]), cls),
            # named by console/adapters.name_lock_holders; a raw holder shows its process name
            "stage": (h.get("stage") or h.get("name") or "", cls),
            "host": (h.get("host") or "", cls),
            # the same figure as `imageselector locks` (both from run/locks_seen.json)
            "held": (fmt.duration(now - since) if since else "-", cls),
            "cmdline": (command_text(h), cls),
        }))
    return rows


class LocksPanel(Vertical):
    def compose(self) -> ComposeResult:
        yield LocksTable(id="locks-table")
        yield Static("", id="locks-message", classes="panel-message")

    def on_mount(self) -> None:
        self.border_title = "DB locks"

    @property
    def table(self) -> LocksTable:
        return self.query_one(LocksTable)

    def show(self, holders: list[dict], now: float) -> None:
        self.table.sync(lock_rows(holders, now))
        self.show_message(None if holders else "nobody holds the DB")

    def show_message(self, message: str | None) -> None:
        set_message(self.query_one("#locks-message", Static), message)
