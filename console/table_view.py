"""Filter and sort of a panel's rows (Stages, Queues, DB locks): `/` keeps the rows that
contain the typed text, `o` sorts by the next column, `O` reverses. Plain data, no Textual."""
from __future__ import annotations

import re
from dataclasses import dataclass

Row = tuple[str, dict]   # (row key, {column key: text or (text, component class)})

_NUMBER = re.compile(r"([-+]?\d+(?:\.\d+)?)")
_DURATION_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_PER_S = {"/s": 1, "/min": 1 / 60, "/h": 1 / 3600}


def cell_text(value) -> str:
    return value[0] if isinstance(value, tuple) else str(value)


def sort_key(text: str) -> tuple:
    """Numbers, counts (1,234), durations (12s, 5m, 3.2h) and rates (4.8/s, 3/min) by their
    value; other text alphabetically after them; empty cells last."""
    t = text.strip().replace(",", "").lstrip("+")
    if not t or t == "-":
        return (2, 0.0, "")
    match = _NUMBER.match(t)
    if match:
        rest = t[match.end():].strip()
        value = float(match.group(1))
        if rest == "":
            return (0, value, "")
        if rest in _DURATION_S:
            return (0, value * _DURATION_S[rest], "")
        if rest in _PER_S:
            return (0, value * _PER_S[rest], "")
    return (1, 0.0, t.lower())


@dataclass
class TableView:
    filter: str = ""
    sort_column: str | None = None   # column key; None: the order the rows came in
    reverse: bool = False

    def apply(self, rows: list[Row], columns: list[str]) -> list[Row]:
        needle = self.filter.strip().lower()
        if needle:
            rows = [(key, values) for key, values in rows
                    if any(needle in cell_text(values.get(col, "")).lower() for col in columns)]
        if self.sort_column is not None:
            rows = sorted(rows, key=lambda r: sort_key(cell_text(r[1].get(self.sort_column, ""))),
                          reverse=self.reverse)
        elif self.reverse:
            rows = list(reversed(rows))
        return rows

    def next_sort(self, columns: list[str]) -> None:
        """The next column, in table order; after the last, the usual order again."""
        if self.sort_column not in columns:
            self.sort_column = columns[0] if columns else None
        else:
            i = columns.index(self.sort_column) + 1
            self.sort_column = columns[i] if i < len(columns) else None
        self.reverse = False

    def describe(self, labels: dict[str, str]) -> str:
        """For the panel's border: `filter: abc · sort: state ▼`; empty when neither."""
        parts = []
        if self.filter.strip():
            parts.append(f"filter: {self.filter.strip()}")
        if self.sort_column is not None:
            parts.append(f"sort: {labels.get(self.sort_column, self.sort_column)} "
                         f"{'▼' if self.reverse else '▲'}")
        elif self.reverse:
            parts.append("reversed")
        return " · ".join(parts)
