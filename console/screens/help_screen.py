"""? help: every command with its key as the keymap has it and where it acts, from the same
list as the command palette and the footer, then the navigation keys."""
from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from console.commands import COMMANDS, NAVIGATION, WHERE, effective_key


def help_rows(keymap: dict, key_display) -> list[tuple[str, str, str, str, str, str]]:
    """(group, key as shown, title, help, binding id, where) for every command, then the
    navigation keys (no binding id: Textual's own keys)."""
    def shown(keys: str) -> str:
        return ", ".join(key_display(k.strip()) for k in keys.split(","))

    rows = []
    for command in COMMANDS:
        rows.append((command.group, shown(effective_key(command, keymap)), command.title,
                     command.help, command.id, WHERE[command.where][0]))
    for keys, title, what in NAVIGATION:
        rows.append(("Navigation", shown(keys), title, what, "", WHERE["everywhere"][0]))
    return rows


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,question_mark,q", "dismiss", "Close", show=True)]

    def __init__(self, keymap: dict):
        super().__init__()
        self.keymap = keymap

    def compose(self) -> ComposeResult:
        table = Table(box=None, show_header=True, header_style="bold", expand=True)
        table.add_column("key", no_wrap=True)
        table.add_column("command", no_wrap=True)
        table.add_column("where", no_wrap=True)
        table.add_column("what it does", ratio=1)
        table.add_column("id (console.keymap)", no_wrap=True)

        def key_display(key: str) -> str:
            return self.app.get_key_display(Binding(key, ""))

        shown_group = None
        for group, key, title, what, binding_id, where in help_rows(self.keymap, key_display):
            if group != shown_group:   # a heading row per group
                table.add_row(Text(group, style="bold underline"))
                shown_group = group
            table.add_row(key, title, where, what, binding_id)
        with VerticalScroll(id="help-body"):
            yield Static("Keys  (ctrl+p: the same commands in the palette; Escape closes)\n"
                         "where: Dashboard = the highlighted row of the stages table, on screen; "
                         "focused table = the Stages, Queues or DB locks panel has the focus "
                         "(Tab); focused log = the log panel has the focus", id="help-title")
            yield Static(table, id="help-table")

    def action_dismiss(self) -> None:
        self.dismiss(None)
