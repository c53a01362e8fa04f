"""The synced table repaints only the row whose cells changed: the screen shows the new
text, the other rows keep their cached renders, and no table-wide re-render is triggered."""
from __future__ import annotations

import asyncio

import pytest
from textual.app import App, ComposeResult
from textual.widgets.data_table import RowKey

from console.widgets.synced_table import SyncedTable
from tests.console_support import screen_text

pytestmark = pytest.mark.timeout(60)


class Table(SyncedTable):
    COLUMNS = [("name", "name", 8), ("value", "value", 10)]


class TableApp(App):
    def compose(self) -> ComposeResult:
        yield Table(id="t")


def rows(second: str, third: str = "gamma") -> list[tuple[str, dict]]:
    return [("r1", {"name": "one", "value": "alpha"}), ("r2", {"name": "two", "value": second}),
            ("r3", {"name": "three", "value": (third, None)})]


def line_of(app, word: str) -> str:
    return next(line for line in screen_text(app).splitlines() if word in line)


def test_a_changed_cell_repaints_its_row_only():
    app = TableApp()

    async def scenario() -> None:
        async with app.run_test(size=(40, 8)) as pilot:
            table = app.query_one(Table)
            table.focus()   # settled first: focus changes every render cache key
            table.sync(rows("beta"))
            await pilot.pause()
            await pilot.pause(0.1)    # the first layout passes bump the table-wide counter
            table.refresh()           # every row rendered (and cached) at the settled counter
            await pilot.pause(0.1)
            assert "beta" in line_of(app, "two")
            counter = table._update_count
            assert any(k[0] == RowKey("r2") and k[-2] == counter
                       for k in table._cell_render_cache.keys())
            kept = [k for k in table._row_render_cache.keys() if k[0] in (RowKey("r1"), RowKey("r3"))]
            assert kept

            table.sync(rows("BETA-2"))
            await pilot.pause()
            assert "BETA-2" in line_of(app, "two") and "beta" not in screen_text(app)
            assert "alpha" in line_of(app, "one") and "gamma" in line_of(app, "three")
            assert table._update_count == counter           # no table-wide invalidation
            assert all(k in table._row_render_cache for k in kept)  # other rows not re-rendered
            assert table.cell_text("r2", "value") == "BETA-2"

            table.sync(rows("BETA-2", "delta"))            # another row, then the cursor moves
            await pilot.pause()
            await pilot.press("down", "down")
            assert "delta" in line_of(app, "three") and "BETA-2" in line_of(app, "two")

    asyncio.run(scenario())
