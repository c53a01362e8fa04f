"""Shown over everything when the terminal is smaller than the console needs."""
from __future__ import annotations

from textual.widgets import Static

MIN_WIDTH, MIN_HEIGHT = 80, 24


class TooSmall(Static):
    def check(self, width: int, height: int) -> bool:
        small = width < MIN_WIDTH or height < MIN_HEIGHT
        self.update(f"terminal too small: {width}x{height}; the console needs at least "
                    f"{MIN_WIDTH}x{MIN_HEIGHT}. Enlarge the window (q quits; stages keep running).")
        self.display = small
        return small
