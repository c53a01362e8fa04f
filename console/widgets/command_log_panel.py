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

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.entries: list[CommandEntry] = []
        self._wrapped_at = 0

    def on_mount(self) -> None:
        self.border_title = "Console commands"

    def add(self, entry: CommandEntry) -> None:
        self.entries.append(entry)
        del self.entries[:-1000]
        self._write(entry)

    def _write(self, entry: CommandEntry) -> None:
        text = Text(fmt.clock_time(entry.at) + " ",
                    style=self.get_component_rich_style("cmdlog--time", partial=True))
        cls = {"ok": "cmdlog--ok", "error": "cmdlog--error", "refused": "cmdlog--error"}.get(entry.level)
        text.append(entry.text, style=self.get_component_rich_style(cls, partial=True) if cls else "")
        self.query_one(RichLog).write(text)

    def on_resize(self) -> None:
        # RichLog wraps a line at the width it has when written: entries written before the
        # panel was laid out (or at another size) are wrapped again at the panel's width.
        view = self.query_one(RichLog)
        width = view.scrollable_content_region.width
        if width and width != self._wrapped_at:
            self._wrapped_at = width
            view.clear()
            for entry in self.entries:
                self._write(entry)

    def visible_text(self) -> list[str]:
        return [strip.text for strip in self.query_one(RichLog).lines]
