"""One line at the top: the root, what makes it unsafe to leave unattended (no backup target,
alerts off: red), the refresh interval or PAUSED, the last refresh and the sources that fail."""
from __future__ import annotations

from textual.widgets import Static

from pipeline.core import fmt
from console.widgets.text_updates import set_text


class StatusBar(Static):
    def show(self, root_text: str, refresh_s: float, paused: bool, last_at: float | None,
             took_s: float | None, problems: list[str], unsafe: list[str] | None = None) -> None:
        parts = [root_text]
        if unsafe:
            parts.append("NOT SAFE: " + ", ".join(unsafe))
        parts.append("refresh PAUSED (space)" if paused else f"refresh {refresh_s:g}s")
        if last_at is not None:
            parts.append(f"updated {fmt.clock_time(last_at)}"
                         + (f" ({took_s * 1000:.0f} ms)" if took_s is not None else ""))
        if problems:
            parts.append(f"{len(problems)} source(s) failing: " + ", ".join(problems))
        set_text(self, "  ·  ".join(parts))  # one line, fixed height: no layout pass
        self.set_class(paused, "-paused")
        self.set_class(bool(problems), "-problems")
        self.set_class(bool(unsafe), "-unsafe")
