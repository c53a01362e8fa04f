"""? help: every command with its key as the keymap has it, from the same list as the
command palette and the footer."""
from __future__ import annotations

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from console.commands import COMMANDS, effective_key


def help_rows(keymap: dict, key_display) -> list[tuple[str, str, str, str, str]]:
    """(group, key as shown, title, help, binding id) for every command."""
    rows = []
    for command in COMMANDS:
        keys = effective_key(command, keymap)
        shown = ", ".join(key_display(k.strip()) for k in keys.split(","))
        rows.append((command.group, shown, command.title, command.help, command.id))
    return rows


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,question_mark,q", "dismiss", "Close", show=True)]

    def __init__(self, keymap: dict):
        super().__init__()
        self.keymap = keymap

    def compose(self) -> ComposeResult:
        table = Table(box=None, show_header=True, header_style="bold", expand=True)
        table.add_column("group")
        table.add_column("key")
        table.add_column("command")
        table.add_column("what it does")
        table.add_column("id (console.keymap)")

        def key_display(key: str) -> str:
            return self.app.get_key_display(Binding(key, ""))

        for row in help_rows(self.keymap, key_display):
            table.add_row(*row)
        with VerticalScroll(id="help-body"):
            yield Static("Keys  (ctrl+p: the same commands in the palette; Escape closes)",
                         id="help-title")
            yield Static(table, id="help-table")

    def action_dismiss(self) -> None:
        self.dismiss(None)
