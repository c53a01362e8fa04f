"""A DataTable updated by row key: changed cells are updated in place, gone rows removed, new
rows added, so a refresh never clears the table (no flicker, the cursor stays)."""
from __future__ import annotations

from rich.text import Text
from textual.widgets import DataTable
from textual.widgets.data_table import ColumnKey, RowKey

from console.table_view import TableView

Cell = tuple[str, str | None]  # text, component class (styled in console.tcss) or None


class SyncedTable(DataTable):
    # (key, label, width): a fixed width means an updated cell never changes the layout
    # (no layout pass, only that table repaints); longer text ends in an ellipsis.
    COLUMNS: list[tuple[str, str, int]] = []
    FILTERABLE = False   # True: `/` filters and `o` sorts it (console/table_keys.py)

    def __init__(self, **kwargs):
        kwargs.setdefault("cursor_type", "row")
        kwargs.setdefault("zebra_stripes", False)
        super().__init__(**kwargs)
        self._cells: dict[tuple[str, str], Cell] = {}
        self._order: list[str] = []
        self.view = TableView()
        self._given: list[tuple[str, dict]] = []   # the rows before the view

    def view_columns(self) -> dict[str, str]:
        return {key: label for key, label, _ in self.COLUMNS}

    def apply_view(self) -> None:
        """Show the rows again through the view (filter, sort); the panel's border says it."""
        self._sync_shown(self.view.apply(self._given, list(self.view_columns())))
        if self.parent is not None:
            self.parent.border_subtitle = self.view.describe(self.view_columns())

    def on_mount(self) -> None:
        for key, label, width in self.COLUMNS:
            self.add_column(label, key=key, width=width)

    def _text(self, cell: Cell) -> Text:
        text, cls = cell
        style = self.get_component_rich_style(cls, partial=True) if cls else ""
        return Text(text, style=style, no_wrap=True, overflow="ellipsis")

    @staticmethod
    def _cell(value) -> Cell:
        return value if isinstance(value, tuple) else (str(value), None)

    def sync(self, rows: list[tuple[str, dict]]) -> None:
        """rows: (row key, {column key: text or (text, class)}) in display order; shown
        through the view (filter and sort) when one is set."""
        self._given = rows
        if self.view.filter or self.view.sort_column or self.view.reverse:
            rows = self.view.apply(rows, list(self.view_columns()))
        self._sync_shown(rows)

    def _sync_shown(self, rows: list[tuple[str, dict]]) -> None:
        wanted = [key for key, _ in rows]
        staying = [key for key in self._order if key in set(wanted)]
        new = [key for key in wanted if key not in set(self._order)]
        if staying + new != wanted:
            self._rebuild(rows)
            return
        for key in self._order:
            if key not in set(wanted):
                self.remove_row(key)
                for col, *_ in self.COLUMNS:
                    self._cells.pop((key, col), None)
        for key, values in rows:
            cells = {col: self._cell(values.get(col, "")) for col, *_ in self.COLUMNS}
            if key in new:
                self.add_row(*(self._text(cells[col]) for col, *_ in self.COLUMNS), key=key)
                self._cells.update({(key, col): cell for col, cell in cells.items()})
                continue
            changed = {col: cell for col, cell in cells.items() if self._cells.get((key, col)) != cell}
            if changed:
                self._update_row(key, {col: self._text(cell) for col, cell in changed.items()})
                self._cells.update({(key, col): cell for col, cell in changed.items()})
        self._order = wanted

    def _update_row(self, key: str, values: dict[str, Text]) -> None:
        """Changed cells of one row, repainting that row only.

        DataTable.update_cell bumps a table-wide counter that every render cache is keyed
        on, so one changed cell re-renders every row (most of the console's idle CPU with a
        stage running). Here the cells are put in place and only this row's cache entries
        are dropped (Textual 8's DataTable internals; update_cell when they are not there)."""
        try:
            row_key = RowKey(key)
            data = self._data[row_key]
            index = self._row_locations.get(row_key)
            caches = (self._row_renderable_cache, self._cell_render_cache,
                      self._row_render_cache, self._line_cache)
        except (AttributeError, KeyError):
            caches = None
        if caches is None or index is None:
            for col, text in values.items():
                self.update_cell(key, col, text)
            return
        for col, text in values.items():
            data[ColumnKey(col)] = text
        renderables, cells, rows, lines = caches
        for cache_key in list(renderables.keys()):       # (update count, row index)
            if cache_key[1] == index:
                renderables.discard(cache_key)
        for cache in (cells, rows):                        # (row key, ...)
            for cache_key in list(cache.keys()):
                if cache_key[0] == row_key:
                    cache.discard(cache_key)
        lines.clear()  # whole lines are cheap to rebuild from the other rows' cached renders
        self.refresh_row(index)

    def _rebuild(self, rows: list[tuple[str, dict]]) -> None:
        selected = self.selected_key()
        self.clear()
        self._cells.clear()
        self._order = []
        for key, values in rows:
            cells = {col: self._cell(values.get(col, "")) for col, *_ in self.COLUMNS}
            self.add_row(*(self._text(cells[col]) for col, *_ in self.COLUMNS), key=key)
            self._cells.update({(key, col): cell for col, cell in cells.items()})
            self._order.append(key)
        if selected in self._order:
            self.move_cursor(row=self._order.index(selected))

    def selected_key(self) -> str | None:
        if not self._order or self.cursor_row is None:
            return None
        if 0 <= self.cursor_row < len(self._order):
            return self._order[self.cursor_row]
        return None

    def cell_class(self, key: str, col: str) -> str | None:
        """The component class a cell was drawn with (tests read it)."""
        cell = self._cells.get((key, col))
        return cell[1] if cell else None

    def cell_text(self, key: str, col: str) -> str | None:
        cell = self._cells.get((key, col))
        return cell[0] if cell else None

    def keys(self) -> list[str]:
        return list(self._order)
