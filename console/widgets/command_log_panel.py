"""The console's own command log: every start, stop, signal, pause and SSH command it ran."""
from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import RichLog

from pipeline.core import fmt
from console.command_log import CommandEntry


class CommandLogPanel(Vertical):
    COMPONENT_CLASSES = {"cmdlog--ok", "cmdlog--error", "cmdlog--time"}

    def compose(self) -> ComposeResult:
        yield RichLog(id="cmdlog-view", wrap=True, markup=False, highlight=False, max_lines=1000,
                      min_width=20)

    def on_mount(self) -> None:
        self.border_title = "Console commands"

    def add(self, entry: CommandEntry) -> None:
        text = Text(fmt.clock_time(entry.at) + " ",
                    style=self.get_component_rich_style("cmdlog--time", partial=True))
        cls = {"ok": "cmdlog--ok", "error": "cmdlog--error"}.get(entry.level)
        text.append(entry.text, style=self.get_component_rich_style(cls, partial=True) if cls else "")
        self.query_one(RichLog).write(text)

    def visible_text(self) -> list[str]:
        return [strip.text for strip in self.query_one(RichLog).lines]
