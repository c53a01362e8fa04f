"""Search tab: a query or "more like this" runs in a background thread (with thumbnails
loaded there) and its results or message are shown on the search pane."""
from __future__ import annotations

from typing import Callable

from console.polling import OK


class SearchActions:
    """Mixed into ConsoleApp: the app's @on handlers of SearchPane.Requested and
    ListingCard.Selected call search_for and more_like."""

    def search_for(self, query: str) -> None:
        k = self.settings.search_k
        self.log_command(f"search {query!r}")
        self.background("search", lambda: self._with_thumbnails(
            self.sources.search(self.root, query, k)), done=self._search_done(f"results for {query!r}"),
            quiet=True)

    def more_like(self, listing_id) -> None:
        k = self.settings.search_k
        self.panels.search.show_message(f"more like listing {listing_id}...")
        self.background("more like this", lambda: self._with_thumbnails(
            self.sources.more_like_this(self.root, listing_id, k)),
            done=self._search_done(f"more like listing {listing_id}"), quiet=True)

    def _with_thumbnails(self, answer: tuple[list[dict], list[str]]) -> tuple[list, list[str]]:
        results, warnings = answer
        out = []
        for result in results:
            thumb = None
            if self.image_class is not None:
                try:
                    thumb = self.sources.load_thumbnail(self.root, result.get("primary_image"))
                except Exception:  # a missing or unreadable image shows as "no image"
                    thumb = None
            out.append((result, thumb))
        return out, warnings

    def _search_done(self, title: str) -> Callable:
        async def done(kind, data) -> None:
            pane = self.panels.search
            if kind == OK:
                results, warnings = data
                await pane.show_results(title, results, warnings)
            else:
                pane.show_message(data)
        return done
