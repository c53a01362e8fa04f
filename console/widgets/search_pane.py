"""Search pane: a text query or an image path; results as a grid of listing cards."""
from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.containers import Grid, Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Input, Static

from console.widgets.text_updates import set_message
from console.widgets.listing_card import ListingCard


class SearchPane(Vertical):
    class Requested(Message):
        def __init__(self, query: str):
            super().__init__()
            self.query = query

    def __init__(self, image_class=None, **kwargs):
        super().__init__(**kwargs)
        self.image_class = image_class

    def compose(self) -> ComposeResult:
        # select_on_focus off: coming back to the box must not make the first key replace the
        # previous query
        yield Input(placeholder="words, or the path of an image; Enter searches; Escape: leave the box",
                    id="search-input", select_on_focus=False)
        yield Static("", id="search-message", classes="panel-message")
        with VerticalScroll(id="search-results"):
            yield Grid(id="search-grid")

    def on_mount(self) -> None:
        self.border_title = "Search"
        self.show_message("type a query and press Enter")

    @on(Input.Submitted, "#search-input")
    def _submitted(self, event: Input.Submitted) -> None:
        query = event.value.strip()
        if not query:
            self.show_message("type words or an image path first")
            return
        self.show_message(f"searching for {query!r}...")
        self.post_message(self.Requested(query))

    def show_message(self, message: str | None) -> None:
        set_message(self.query_one("#search-message", Static), message)

    async def show_results(self, title: str, results: list[tuple[dict, object]],
                           warnings: list[str] | None = None) -> None:
        """results: (result dict, thumbnail image or None), best first."""
        grid = self.query_one("#search-grid", Grid)
        await grid.remove_children()
        cards = [ListingCard(i + 1, r, thumb, self.image_class) for i, (r, thumb) in enumerate(results)]
        await grid.mount_all(cards)
        lines = [title if results else f"{title}: nothing found"] + list(warnings or [])
        self.show_message("\n".join(lines))

    def cards(self) -> list[ListingCard]:
        return list(self.query(ListingCard))
