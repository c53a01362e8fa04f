"""A confirmation that must be typed exactly (YES:GIT before any git pull on a worker)."""
from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Static


class TypedConfirmScreen(ModalScreen[bool]):
    BINDINGS = [Binding("escape", "cancel", "Cancel", show=True)]

    def __init__(self, title: str, body: str, phrase: str):
        super().__init__()
        self.title_text = title
        self.body = body
        self.phrase = phrase

    def compose(self) -> ComposeResult:
        with Vertical(id="typed-box"):
            yield Static(self.title_text, id="typed-title")
            yield Static(self.body, id="typed-body")
            yield Static(f"Type {self.phrase} and press Enter (Escape cancels)", id="typed-keys")
            yield Input(id="typed-input")
            yield Static("", id="typed-error")

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    @on(Input.Submitted, "#typed-input")
    def _submitted(self, event: Input.Submitted) -> None:
        if event.value == self.phrase:
            self.dismiss(True)
            return
        self.query_one("#typed-error", Static).update(
            f"that is not {self.phrase}; nothing was done. Type it exactly, or Escape.")
        event.input.value = ""

    def action_cancel(self) -> None:
        self.dismiss(False)
