"""Search tab: each query line becomes a SearchRequest (console/adapters.parse_search) that the
search helper process answers (pipeline/search/helper.py; started on the first search, so this
process never holds torch). The wait runs in a background thread with thumbnails loaded
there; Escape stops waiting (the late answer is dropped). Pages, "more like this", "same item
elsewhere" and the history are query lines too."""
from __future__ import annotations

import dataclasses
from typing import Callable

from console.polling import OK


class SearchActions:
    """Mixed into ConsoleApp: the app's @on handlers of SearchPane.Requested and
    ListingCard.Selected call search_for and more_like; the Search tab's keys (commands.py)
    call the actions below."""

    _search_helper = None
    _search_seq = 0              # the search the pane waits for; older answers are dropped
    _search_request = None       # the last request that ran, for its other pages
    _search_title = ""
    _search_page = 0
    _search_full_page = False    # the shown page was full: a next page may exist
    _search_shown: set = frozenset()

    # ---------------------------------------------------------------- queries
    def search_for(self, line: str) -> None:
        pane = self.panels.search
        pane.remember(line)
        try:
            request = self.sources.parse_search(line, int(self.settings.search_k),
                                                set(self._search_shown))
        except Exception as exc:   # a one-line UserError naming what is wrong
            self._search_seq += 1
            self.call_later(pane.show_error, str(exc))
            return
        self._run_search(request, f"results for {line!r}", 0)

    def _run_search(self, request, title: str, page: int) -> None:
        pane = self.panels.search
        size = int(self.settings.search_k)
        self._search_seq += 1
        seq = self._search_seq
        self.log_command(f"search {title.removeprefix('results for ')}"
                         + (f" (page {page + 1})" if page else ""))
        what = title.removeprefix("results for ")
        pane.show_progress(f"searching for {what}" if not page else f"page {page + 1} of {what}")

        def progress(step: str) -> None:
            if seq == self._search_seq:
                self.call_from_thread(pane.set_progress, step)

        helper = self._helper()   # made here, never by two threads at once

        def work():
            outcome = self.sources.search(helper, request, progress)
            rows = (outcome.get("results") or [])[page * size:(page + 1) * size]
            return outcome, self._with_thumbnails(rows)

        self.background("search", work, done=self._search_done(seq, request, title, page),
                        quiet=True)

    def _helper(self):
        if self._search_helper is None:
            self._search_helper = self.sources.open_search_helper(self.root)
        return self._search_helper

    def more_like(self, listing_id) -> None:
        self._query_line(f"listing:{listing_id}")

    def _query_line(self, line: str) -> None:
        """A query the pane made (more like this, same item): in the box and the history too."""
        self.panels.search.field.value = line
        self.search_for(line)

    def _with_thumbnails(self, results: list[dict]) -> list:
        out = []
        for result in results:
            thumb = None
            if self.image_class is not None:
                try:
                    thumb = self.sources.load_thumbnail(self.root, result.get("primary_image"))
                except Exception:  # a missing or unreadable image shows as "no image"
                    thumb = None
            out.append((result, thumb))
        return out

    def _search_done(self, seq: int, request, title: str, page: int) -> Callable:
        async def done(kind, data) -> None:
            if seq != self._search_seq:
                return                      # cancelled, or a newer search runs
            pane = self.panels.search
            if kind != OK:
                await pane.show_error(data)
                return
            outcome, rows = data
            size = int(self.settings.search_k)
            self._search_request, self._search_title, self._search_page = request, title, page
            self._search_full_page = len(rows) == size
            self._search_shown = set(self._search_shown) | {r.get("listing_id") for r, _ in rows}
            lines = list(outcome.get("notes") or []) + list(outcome.get("warnings") or [])
            lines += [shop_line(g) for g in outcome.get("groups") or []]
            head = title if not page else f"{title} · page {page + 1}"
            if isinstance(outcome.get("took_s"), (int, float)):
                head += f" · {outcome['took_s']:.2f} s" + (" (text cached)" if
                                                          outcome.get("text_cached") else "")
            await pane.show_results(head, rows, lines, first_rank=page * size + 1)
        return done

    # ---------------------------------------------------------------- keys (commands.py)
    def _selected_result(self, what: str) -> dict | None:
        card = self.panels.search.selected
        if card is None:
            self.refuse(f"{what}: no result selected (search first, then Tab to a card)")
            return None
        return card.result

    def action_search_open(self) -> None:
        result = self._selected_result("open listing")
        if result is None:
            return
        url = result.get("url") or f"https://www.etsy.com/listing/{result.get('listing_id')}"
        self.copy_to_clipboard(url)
        self.log_command(f"listing URL copied: {url}")
        self.notify(url, title="listing URL (copied where the terminal allows)")

    def action_search_more(self) -> None:
        result = self._selected_result("more like this")
        if result is not None:
            self.more_like(result.get("listing_id"))

    def action_search_same(self) -> None:
        result = self._selected_result("same item elsewhere")
        if result is not None:
            self._query_line(f"same:{result.get('listing_id')}")

    def action_search_next_page(self) -> None:
        if self._search_request is None:
            self.refuse("next page: no search yet")
        elif not self._search_full_page:
            self.refuse(f"next page: page {self._search_page + 1} is the last one")
        else:
            self._page(self._search_page + 1)

    def action_search_previous_page(self) -> None:
        if self._search_request is None or self._search_page == 0:
            self.refuse("previous page: this is the first page")
        else:
            self._page(self._search_page - 1)

    def _page(self, page: int) -> None:
        size = int(self.settings.search_k)
        request = dataclasses.replace(self._search_request, k=size * (page + 1))
        self._run_search(request, self._search_title, page)

    def action_search_history_back(self) -> None:
        self._history(-1)

    def action_search_history_forward(self) -> None:
        self._history(+1)

    def _history(self, step: int) -> None:
        pane = self.panels.search
        if pane.history_step(step) is None:
            self.refuse("no earlier query in this session")
            return
        if self.focused is not pane.field:
            self.screen.set_focus(pane.field)

    def action_search_cancel(self) -> None:
        """Escape: stop waiting for the running search (the helper may finish it; its answer
        is dropped), and leave the query box."""
        pane = self.panels.search
        if pane.busy:
            self._search_seq += 1
            pane.stop_progress()
            pane.show_message("search cancelled (the previous results are gone: search again)")
            self.call_later(pane.clear_results)
            self.log_command("search cancelled")
        if self.focused is pane.field:
            self.focus_home()

    def stop_search_helper(self) -> None:
        """On quit: the helper this console started, by its pid (never waits long)."""
        helper, self._search_helper = self._search_helper, None
        if helper is not None:
            helper.stop()


def shop_line(group: dict) -> str:
    """A same-item group: the shop and each of its listings with the price."""
    items = ", ".join(f"#{it.get('listing_id')} {fmt_price(it)}" for it in group.get("listings") or [])
    return f"{group.get('shop') or group.get('shop_id')}: {items}"


def fmt_price(item: dict) -> str:
    price = item.get("price")
    text = f"{price:,.2f}" if isinstance(price, (int, float)) else "-"
    return f"{text} {item.get('currency') or ''}".strip()
