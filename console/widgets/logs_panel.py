"""Logs panel: the tail of the selected stage's log; `/` searches it and keeps context lines
around each match (Escape goes back to the tail), n / N go from match to match, f turns
following the tail off (the view holds still to be read) and on, w wraps long lines, z or
Enter shows the panel over the whole screen."""
from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Input, RichLog, Static

from console.widgets.text_updates import set_message
from console.logsearch import search_with_context


class LogsPanel(Vertical):
    COMPONENT_CLASSES = {"logs--match", "logs--current", "logs--separator", "logs--lineno"}
    ALLOW_MAXIMIZE = True   # z / Enter: full screen

    def __init__(self, context: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.context = context
        self.lines: list[str] = []
        self.held: list[str] | None = None   # lines that came while following was off
        self.needle = ""
        self.title_text = "Log"
        self.follow = True
        self.wrap = False
        self.match_rows: list[int] = []        # view line of each match, top to bottom
        self.current_match: int | None = None  # index into match_rows after n / N
        self._shown: tuple | None = None

    def compose(self) -> ComposeResult:
        yield Input(placeholder="search the log (Enter; Escape: back to the tail)",
                    id="log-search", select_on_focus=False)
        yield Static("", id="logs-message", classes="panel-message")
        yield RichLog(id="log-view", wrap=False, markup=False, highlight=False, max_lines=5000,
                      min_width=20)

    def on_mount(self) -> None:
        self.border_title = self.title_text
        self.query_one("#log-search", Input).display = False
        self.query_one("#logs-message", Static).display = False

    @property
    def view(self) -> RichLog:
        return self.query_one("#log-view", RichLog)

    def set_title(self, title: str) -> None:
        self.title_text = title
        self.border_title = title + (f"  / {self.needle}" if self.needle else "")
        notes = []
        if self.needle and self.current_match is not None and self.match_rows:
            notes.append(f"match {self.current_match + 1} of {len(self.match_rows)}")
        if not self.follow:
            notes.append("follow off (f)" + (": new lines held" if self.held is not None else ""))
        if self.wrap:
            notes.append("wrap")
        self.border_subtitle = " · ".join(notes)

    def show_lines(self, lines: list[str]) -> None:
        self.show_message(None)
        if not self.follow and self.lines:
            self.held = lines   # the view holds still while following is off
            self.set_title(self.title_text)
            return
        self.lines = lines
        self._redraw()

    def show_message(self, message: str | None) -> None:
        set_message(self.query_one("#logs-message", Static), message)
        if message:
            self.lines = []
            self.held = None
            self._redraw()

    # ------------------------------------------------------------------ keys
    def open_search(self) -> None:
        field = self.query_one("#log-search", Input)
        field.display = True
        field.value = self.needle
        field.focus()

    @on(Input.Submitted, "#log-search")
    def _submitted(self, event: Input.Submitted) -> None:
        self.needle = event.value.strip()
        self.current_match = None
        self.set_title(self.title_text)
        self._redraw()
        if not self.needle:
            event.input.display = False
        self.view.focus()   # n / N work at once

    def input_left(self, field) -> bool:
        """Escape in the search box (console/input_keys.py): back to the tail."""
        self.close_search()
        self.view.focus()
        return True

    def close_search(self) -> None:
        field = self.query_one("#log-search", Input)
        self.needle = ""
        self.current_match = None
        field.value = ""
        field.display = False
        self.set_title(self.title_text)
        self._redraw()

    def key_escape(self) -> None:
        field = self.query_one("#log-search", Input)
        if field.display or self.needle:
            self.close_search()
        elif self.screen.maximized is None:
            self.app.call_later(self.app.action_focus, "stages-table")

    def next_match(self, step: int) -> str | None:
        """Go to the next (step 1) or previous (-1) match; a reason when there is none."""
        if not self.needle:
            return "no log search: press / first"
        if not self.match_rows:
            return f"no line matches {self.needle!r}"
        if self.current_match is None:
            self.current_match = 0 if step > 0 else len(self.match_rows) - 1
        else:
            self.current_match = (self.current_match + step) % len(self.match_rows)
        self.set_title(self.title_text)
        self._redraw()
        return None

    def toggle_follow(self) -> None:
        self.follow = not self.follow
        if self.follow and self.held is not None:
            self.lines, self.held = self.held, None
        self.set_title(self.title_text)
        self._redraw(force=True)

    def toggle_wrap(self) -> None:
        self.wrap = not self.wrap
        self.view.wrap = self.wrap
        self.set_title(self.title_text)
        self._redraw(force=True)

    def toggle_full_screen(self) -> None:
        screen = self.screen
        if screen.maximized is self:
            screen.minimize()
        else:
            screen.maximize(self, container=False)
            if not self.has_focus_within:
                self.view.focus()

    # ------------------------------------------------------------------ drawing
    def _redraw(self, force: bool = False) -> None:
        key = (tuple(self.lines), self.needle, self.current_match, self.wrap)
        if key == self._shown and not force:
            return  # nothing changed: no redraw
        self._shown = key
        view = self.view
        view.clear()
        self.match_rows = []
        at_end = self.follow and self.current_match is None
        if not self.needle:
            for line in self.lines:
                view.write(self._line(Text(line)), scroll_end=at_end)
            return
        found = search_with_context(self.lines, self.needle, self.context)
        if not any(item and item.match for item in found):
            view.write(Text(f"no line matches {self.needle!r}",
                            style=self.get_component_rich_style("logs--separator", partial=True)))
            return
        match_style = self.get_component_rich_style("logs--match", partial=True)
        current_style = self.get_component_rich_style("logs--current", partial=True)
        number_style = self.get_component_rich_style("logs--lineno", partial=True)
        separator_style = self.get_component_rich_style("logs--separator", partial=True)
        for item in found:
            if item is None:
                view.write(Text("--", style=separator_style), scroll_end=at_end)
                continue
            style = ""
            if item.match:
                style = current_style if len(self.match_rows) == self.current_match else match_style
                self.match_rows.append(len(view.lines))
            text = Text(f"{item.number:>5} ", style=number_style)
            text.append(item.text, style=style)
            view.write(self._line(text), scroll_end=at_end)
        if self.current_match is not None and self.current_match < len(self.match_rows):
            row = self.match_rows[self.current_match]
            view.call_after_refresh(view.scroll_to, y=max(0, row - view.size.height // 2),
                                    animate=False)

    def _line(self, text: Text) -> Text:
        text.no_wrap = not self.wrap
        return text

    def visible_text(self) -> list[str]:
        """The lines now shown (tests read them)."""
        return [strip.text for strip in self.view.lines]
