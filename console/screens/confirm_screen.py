"""A yes/no question: y confirms, n or Escape declines."""
from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static


class ConfirmScreen(ModalScreen[bool]):
    BINDINGS = [Binding("y", "answer(True)", "Yes", show=True),
                Binding("n,escape", "answer(False)", "No", show=True)]

    def __init__(self, title: str, body: str, warning: bool = False):
        super().__init__()
        self.title_text = title
        self.body = body
        self.warning = warning

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm-box", classes="-warning" if self.warning else ""):
            yield Static(self.title_text, id="confirm-title")
            yield Static(self.body, id="confirm-body")
            yield Static("y: yes    n / Escape: no", id="confirm-keys")

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)
