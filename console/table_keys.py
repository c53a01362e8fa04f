"""`/` filter, `o` sort and `O` reverse on the focused Stages, Queues or DB locks panel
(console/table_view.py has the rules; console/widgets/table_filter.py the box)."""
from __future__ import annotations

from console.key_scope import filterable
from console.widgets.table_filter import TableFilter


class TableKeys:
    """Mixed into ConsoleApp: the table actions; Escape on a filtered table clears it."""

    def _table(self):
        return self.focused if filterable(self.focused) else None

    async def action_filter_table(self) -> None:
        target = self._table()
        if target is None:
            return
        container, before = TableFilter.place(target)
        box = next((b for b in container.query(TableFilter) if b.target is target), None)
        if box is None:
            box = TableFilter(target)
            await container.mount(box, before=before)
        box.display = True
        box.value = target.view.filter
        box.focus()

    def action_sort_table(self) -> None:
        target = self._table()
        if target is not None:
            target.view.next_sort(list(target.view_columns()))
            target.apply_view()

    def action_sort_reverse(self) -> None:
        target = self._table()
        if target is not None:
            target.view.reverse = not target.view.reverse
            target.apply_view()

    def key_escape(self) -> None:
        target = self._table()
        if target is not None and target.view.filter:
            target.view.filter = ""
            target.apply_view()
            for box in self.query(TableFilter):
                if box.target is target:
                    box.value = ""
                    box.display = False
