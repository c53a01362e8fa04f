"""Offset paging that skips nothing when listings end mid-crawl.

Search pages are newest-first with offset paging: a listing that ends after its page was
read moves every later listing one place forward, so the next page (asked for at the old
offset) starts one listing too late and that listing is never read. Each page is therefore
asked for ``overlap`` listings early, and must contain one of the previous page's last
``overlap`` listings (its "tail"): the listings that follow a tail listing on the new page
are exactly the ones after it, so nothing between was skipped. A page with none of the tail
means more listings ended than the overlap covers: it is not used, and the crawl looks one
page further back until it finds the tail (or reaches offset 0). The shift a page shows
(how far its tail listing moved forward) is added to the next page's overlap, so a band
where listings end fast is not looked back on page after page.

The tail is kept in ``sync_state`` (``crawl_tail:<unit>``) in the page's transaction, so a
crawl resumed after a stop (the next day, after a quota stop) checks its first page too.
"""
from __future__ import annotations

import sqlite3

from pipeline.core.db import get_state, put_state


def tail_key(unit_id: int) -> str:
    return f"crawl_tail:{unit_id}"


def load_tail(conn: sqlite3.Connection, unit_id: int, offset: int) -> list[int]:
    """The previous page's last listings (none at offset 0: nothing was read yet)."""
    if offset <= 0:
        return []
    return [int(x) for x in (get_state(conn, tail_key(unit_id)) or [])]


def save_tail(conn: sqlite3.Connection, unit_id: int, tail: list[int], finished: bool) -> None:
    """Inside the page's transaction."""
    if finished or not tail:
        conn.execute("DELETE FROM sync_state WHERE key = ?", (tail_key(unit_id),))
    else:
        put_state(conn, tail_key(unit_id), list(tail))


def ask_offset(offset: int, overlap: int, step: int, looked_back: int) -> int:
    """Where to ask for the page after ``offset`` (the end of the last page read): ``overlap``
    listings early, and ``looked_back`` more steps of ``step`` when the tail was not found."""
    if offset <= 0:
        return 0
    return max(0, offset - overlap - looked_back * step)


def shift(ids: list[int], tail: list[int], ask: int, prev_end: int) -> int:
    """How many places the list moved forward since the previous page (0 if it did not, or
    moved back): from the last tail listing found on this page."""
    where = {lid: j for j, lid in enumerate(ids)}
    for t in range(len(tail) - 1, -1, -1):
        if tail[t] in where:
            return max(0, (prev_end - len(tail) + t) - (ask + where[tail[t]]))
    return 0


def page_ids(results: list) -> list[int]:
    return [it["listing_id"] for it in results
            if isinstance(it, dict) and isinstance(it.get("listing_id"), int)]


def continues(ids: list[int], tail: list[int]) -> bool:
    """Does this page continue the previous one (holds one of its tail listings)?"""
    return not tail or bool(set(ids) & set(tail))


def new_tail(ids: list[int], overlap: int) -> list[int]:
    return ids[-overlap:] if overlap > 0 else []
