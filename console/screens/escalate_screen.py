"""The lock-holder check before signals: who holds the DB now (the writer highlighted), then
"send SIGTERM, then SIGKILL, to pid N?". y goes on, n or Escape stops here."""
from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static


class EscalateScreen(ModalScreen[bool]):
    COMPONENT_CLASSES = {"escalate--writer", "escalate--target"}
    BINDINGS = [Binding("y", "answer(True)", "Signal it", show=True),
                Binding("n,escape", "answer(False)", "Cancel", show=True)]

    def __init__(self, stage: str, pid: int, holders: list[dict], term_grace_s: float):
        super().__init__()
        self.stage = stage
        self.pid = pid
        self.holders = holders
        self.term_grace_s = term_grace_s

    def compose(self) -> ComposeResult:
        table = Table(box=None, expand=True)
        for col in ("mode", "pid", "name"):
            table.add_column(col, no_wrap=True)
        table.add_column("command", no_wrap=True, overflow="ellipsis", ratio=1)
        table.add_column("", no_wrap=True)
        writer = self.get_component_rich_style("escalate--writer", partial=True)
        target = self.get_component_rich_style("escalate--target", partial=True)
        for h in self.holders:
            style = writer if h["mode"] == "writer" else (target if h["pid"] == self.pid else "")
            mark = "<- this stage" if h["pid"] == self.pid else ""
            table.add_row(Text(h["mode"].upper() if h["mode"] == "writer" else h["mode"], style),
                          Text(str(h["pid"]), style), Text(h.get("name") or "", style),
                          Text(h.get("cmdline") or "", style), Text(mark, style))
        with Vertical(id="escalate-box"):
            yield Static(f"Force stop {self.stage} (pid {self.pid})", id="escalate-title")
            yield Static("DB lock holders now:" if self.holders else
                         "DB lock holders now: nobody holds the DB", id="escalate-subtitle")
            if self.holders:
                yield Static(table, id="escalate-holders")
            yield Static(f"Send SIGTERM (handled like the kill file), wait {self.term_grace_s:g} s, "
                         f"then SIGKILL to pid {self.pid}?", id="escalate-question")
            yield Static("y: signal it    n / Escape: cancel", id="escalate-keys")

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)
