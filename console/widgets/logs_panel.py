"""Logs panel: the tail of the selected stage's log; `/` searches it and keeps context lines
around each match (Escape goes back to the tail)."""
from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Input, RichLog, Static

from console.widgets.text_updates import set_message
from console.logsearch import search_with_context


class LogsPanel(Vertical):
    COMPONENT_CLASSES = {"logs--match", "logs--separator", "logs--lineno"}

    def __init__(self, context: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.context = context
        self.lines: list[str] = []
        self.needle = ""
        self.title_text = "Log"
        self._shown: tuple | None = None

    def compose(self) -> ComposeResult:
        yield Input(placeholder="search the log (Enter; Escape: back to the tail)",
                    id="log-search")
        yield Static("", id="logs-message", classes="panel-message")
        yield RichLog(id="log-view", wrap=False, markup=False, highlight=False, max_lines=5000,
                      min_width=20)

    def on_mount(self) -> None:
        self.border_title = self.title_text
        self.query_one("#log-search", Input).display = False
        self.query_one("#logs-message", Static).display = False

    def set_title(self, title: str) -> None:
        self.title_text = title
        self.border_title = title + (f"  / {self.needle}" if self.needle else "")

    def show_lines(self, lines: list[str]) -> None:
        self.lines = lines
        self.show_message(None)
        self._redraw()

    def show_message(self, message: str | None) -> None:
        set_message(self.query_one("#logs-message", Static), message)
        if message:
            self.lines = []
            self._redraw()

    def open_search(self) -> None:
        field = self.query_one("#log-search", Input)
        field.display = True
        field.value = self.needle
        field.focus()

    @on(Input.Submitted, "#log-search")
    def _submitted(self, event: Input.Submitted) -> None:
        self.needle = event.value.strip()
        self.set_title(self.title_text)
        self._redraw()
        if not self.needle:
            event.input.display = False

    def key_escape(self) -> None:
        field = self.query_one("#log-search", Input)
        if field.display or self.needle:
            self.needle = ""
            field.value = ""
            field.display = False
            self.set_title(self.title_text)
            self._redraw()
            self.app.call_later(self.app.action_focus, "stages-table")

    def _redraw(self) -> None:
        key = (tuple(self.lines), self.needle)
        if key == self._shown:
            return  # nothing changed: no redraw
        self._shown = key
        view = self.query_one("#log-view", RichLog)
        view.clear()
        if not self.needle:
            for line in self.lines:
                view.write(Text(line, no_wrap=True))
            return
        found = search_with_context(self.lines, self.needle, self.context)
        if not any(item and item.match for item in found):
            view.write(Text(f"no line matches {self.needle!r}",
                            style=self.get_component_rich_style("logs--separator", partial=True)))
            return
        match_style = self.get_component_rich_style("logs--match", partial=True)
        number_style = self.get_component_rich_style("logs--lineno", partial=True)
        for item in found:
            if item is None:
                view.write(Text("--", style=self.get_component_rich_style("logs--separator",
                                                                          partial=True)))
                continue
            text = Text(f"{item.number:>5} ", style=number_style)
            text.append(item.text, style=match_style if item.match else "")
            view.write(text)

    def visible_text(self) -> list[str]:
        """The lines now shown (tests read them)."""
        return [strip.text for strip in self.query_one("#log-view", RichLog).lines]
