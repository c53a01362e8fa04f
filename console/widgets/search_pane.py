"""Search pane: the typed query line (words, image paths, URLs, listing:ID, same:ID and
filters; the syntax is pipeline/search/helper_query.py's), a progress line while the search
helper works, and the results as a grid of listing cards, one page at a time. The pane keeps
only what is on screen (the selected card, the history of typed lines); the app's
SearchActions send each request to the helper."""
from __future__ import annotations

import time

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Input, Static

from console.widgets.listing_card import ListingCard
from console.widgets.text_updates import set_message

SYNTAX = ("price:20-80 shop:ID taxonomy:ID state:any since:YYYY-MM-DD unseen · listing:ID "
          "same:ID combine:fuse · ? keys")


class SearchInput(Input):
    """The query box. It takes every printable key, so the footer would show only ctrl+p
    while it has the focus: it shows what Enter does there (Escape, leave the box, is the
    app's search_cancel, shown on the whole Search tab)."""

    BINDINGS = [Binding("enter", "submit", "Search")]


class SearchPane(Vertical):
    class Requested(Message):
        def __init__(self, query: str):
            super().__init__()
            self.query = query

    def __init__(self, image_class=None, **kwargs):
        super().__init__(**kwargs)
        self.image_class = image_class
        self.history: list[str] = []
        self.history_at: int | None = None    # index into history while browsing it
        self.selected: ListingCard | None = None
        self._progress_since: float | None = None
        self._progress_title = ""
        self._progress_step = ""
        self._timer = None

    def compose(self) -> ComposeResult:
        # select_on_focus off: coming back to the box must not make the first key replace the
        # previous query
        yield SearchInput(placeholder="words, image paths, listing:ID, same:ID, price:20-80 "
                                      "shop:ID; Enter searches; Escape leaves the box",
                          id="search-input", select_on_focus=False)
        yield Static(SYNTAX, id="search-syntax", classes="panel-hint")
        yield Static("", id="search-message", classes="panel-message")
        with VerticalScroll(id="search-results"):
            yield Grid(id="search-grid")

    def on_mount(self) -> None:
        self.border_title = "Search"
        self.show_message("type a query and press Enter")

    @property
    def field(self) -> Input:
        return self.query_one("#search-input", Input)

    @on(Input.Submitted, "#search-input")
    def _submitted(self, event: Input.Submitted) -> None:
        query = event.value.strip()
        if not query:
            self.show_message("type words or an image path first")
            return
        self.post_message(self.Requested(query))

    # ---------------------------------------------------------------- history
    def remember(self, line: str) -> None:
        if not self.history or self.history[-1] != line:
            self.history.append(line)
        self.history_at = None

    def history_step(self, step: int) -> str | None:
        """Put the previous (-1) or next (+1) typed line into the box; None at either end."""
        if not self.history:
            return None
        at = len(self.history) if self.history_at is None else self.history_at
        at = max(0, min(len(self.history), at + step))
        self.history_at = at
        line = self.history[at] if at < len(self.history) else ""
        self.field.value = line
        self.field.cursor_position = len(line)
        return line

    # ---------------------------------------------------------------- progress
    def show_progress(self, title: str) -> None:
        self._progress_since = time.monotonic()
        self._progress_title, self._progress_step = title, ""
        if self._timer is None:
            self._timer = self.set_interval(0.5, self._tick)
        self._tick()

    def set_progress(self, step: str) -> None:
        if self._progress_since is not None:
            self._progress_step = step
            self._tick()

    def stop_progress(self) -> None:
        self._progress_since = None
        if self._timer is not None:
            self._timer.stop()
            self._timer = None

    @property
    def busy(self) -> bool:
        return self._progress_since is not None

    def _tick(self) -> None:
        if self._progress_since is None:
            return
        took = time.monotonic() - self._progress_since
        step = f" · {self._progress_step}" if self._progress_step else ""
        self.show_message(f"{self._progress_title}... {took:.0f} s{step} · Escape cancels")

    # ---------------------------------------------------------------- results
    def show_message(self, message: str | None) -> None:
        set_message(self.query_one("#search-message", Static), message)

    async def show_error(self, message: str) -> None:
        """An error replaces the previous results: what stays on screen is never another
        query's answer under this query's message."""
        await self.clear_results()
        self.stop_progress()
        self.show_message(message)

    async def clear_results(self) -> None:
        self.selected = None
        await self.query_one("#search-grid", Grid).remove_children()

    async def show_results(self, title: str, results: list[tuple[dict, object]],
                           warnings: list[str] | None = None, first_rank: int = 1) -> None:
        """results: (result dict, thumbnail image or None), best first."""
        await self.clear_results()
        cards = [ListingCard(first_rank + i, r, thumb, self.image_class)
                 for i, (r, thumb) in enumerate(results)]
        await self.query_one("#search-grid", Grid).mount_all(cards)
        if cards:
            self.select(cards[0])
        lines = [title if results else f"{title}: nothing found"] + list(warnings or [])
        self.stop_progress()    # busy until the answer is on screen
        self.show_message("\n".join(lines))

    def cards(self) -> list[ListingCard]:
        return list(self.query(ListingCard))

    def select(self, card: ListingCard) -> None:
        if self.selected is not None and self.selected is not card:
            self.selected.remove_class("-selected")
        self.selected = card
        card.add_class("-selected")

    @on(ListingCard.Focused)
    def _card_focused(self, event: ListingCard.Focused) -> None:
        self.select(event.card)
