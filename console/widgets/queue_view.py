"""Filter and sort of the queues panel's rows (`/` and `o` on the focused panel), with the same
TableView as the tables: rows that do not match are hidden, the others put in order."""
from __future__ import annotations

from textual.widgets import Label

COLUMNS = {"queue": "queue", "images": "images", "flow": "flow", "eta": "ETA"}
_CELLS = {"images": ".queue-depth", "flow": ".queue-flow", "eta": ".queue-eta"}


def queue_cells(row) -> dict[str, str]:
    cells = {"queue": row.state}
    for col, selector in _CELLS.items():
        found = row.query(selector)
        cells[col] = str(found.first(Label).content) if found else ""
    return cells


def apply_queue_view(panel, rows: list) -> None:
    """rows: the panel's QueueRows in their usual order."""
    shown = panel.view.apply([(r.state, queue_cells(r)) for r in rows], list(COLUMNS))
    keys = [key for key, _ in shown]
    by_state = {r.state: r for r in rows}
    for row in rows:
        visible = row.state in keys
        if row.display != visible:
            row.display = visible
    current = [c.state for c in panel.children if c in rows]
    wanted = keys + [state for state in current if state not in keys]   # hidden rows last
    if current != wanted:
        slot = next(c for c in panel.children if c in rows)
        previous = by_state[wanted[0]]
        if previous is not slot:
            panel.move_child(previous, before=slot)
        for state in wanted[1:]:
            panel.move_child(by_state[state], after=previous)
            previous = by_state[state]
    panel.border_subtitle = panel.view.describe(COLUMNS)
