"""The `/` box of a filterable table or panel (Stages, Queues, DB locks): the rows are filtered
as the text is typed; Enter keeps the filter and goes back to the table (the panel's border
shows it); Escape clears it."""
from __future__ import annotations

from textual.widgets import DataTable, Input


class TableFilter(Input):
    def __init__(self, target):
        super().__init__(placeholder="filter: type to keep the matching rows; Enter keeps it; "
                                     "Escape clears it", select_on_focus=False,
                         classes="table-filter")
        self.target = target

    @staticmethod
    def place(target) -> tuple:
        """(container, before): above a table in its panel, or at the top of a panel."""
        if isinstance(target, DataTable):
            return target.parent, target
        return target, 0

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self.target.view.filter = event.value
        self.target.apply_view()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.display = False
        self.target.focus()

    def input_left(self, field) -> bool:
        """Escape: the filter is cleared and the box closed (console/input_keys.py)."""
        self.value = ""
        self.target.view.filter = ""
        self.target.apply_view()
        self.display = False
        self.target.focus()
        return True
