"""Cheap text updates: a widget is touched only when its text really changed (polls repeat
the same values most of the time, and every update costs a refresh)."""
from __future__ import annotations

from textual.widgets import Static


def set_text(widget: Static, text: str, layout: bool = False) -> None:
    """For fixed-size widgets: no layout pass unless asked."""
    if str(widget.content) != text:
        widget.update(text, layout=layout)


def set_message(widget: Static, message: str | None) -> None:
    """A panel's in-place message: shown when there is one, hidden otherwise."""
    text = message or ""
    if str(widget.content) != text:
        widget.update(text)
    if widget.display != bool(text):
        widget.display = bool(text)
