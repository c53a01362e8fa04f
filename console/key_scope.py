"""Where the console's keys act: a command acts only where what it acts on is on screen
(console/commands.py: each command's `where`). The same check hides the other places' keys
from the footer, so each tab's footer shows that tab's keys."""
from __future__ import annotations

from textual.widget import Widget

from console.commands import COMMANDS, WHERE

BY_ACTION = {c.action.split("(", 1)[0]: c for c in COMMANDS}


def situation(app) -> str:
    """The situation of WHERE the app is in now: a tab, and on the Dashboard what has focus."""
    from console.widgets.logs_panel import LogsPanel
    from console.widgets.stages_panel import StagesTable

    panels = app.panels
    if panels is None:
        return "dashboard/other"
    tab = panels.tabs.active
    if tab != "dashboard":
        return tab
    main = app.screen_stack[0]   # the console's own screen, also while the palette is open
    if isinstance(main.maximized, LogsPanel):
        return "log/full"
    focused = main.focused
    if within(focused, LogsPanel):
        return "dashboard/log"
    if isinstance(focused, StagesTable):
        return "dashboard/stages"
    if filterable(focused):
        return "dashboard/table"
    return "dashboard/other"


def within(widget: Widget | None, kind: type) -> bool:
    node = widget
    while node is not None:
        if isinstance(node, kind):
            return True
        node = node.parent
    return False


def filterable(widget: Widget | None) -> bool:
    """A table that `/` filters and `o` sorts (StagesTable, LocksTable, QueuesPanel)."""
    return widget is not None and getattr(widget, "FILTERABLE", False)


def acts_now(app, command) -> bool:
    return situation(app) in WHERE[command.where][1]


class KeyScope:
    """Mixed into ConsoleApp: check_action by the command's `where`."""

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        command = BY_ACTION.get(action)
        if command is None:
            return True
        return acts_now(self, command)
