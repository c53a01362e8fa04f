"""The one list of the console's commands. It makes the key bindings (each with an id, so a
keymap in the config can change the key), the command palette (ctrl+p) and the help screen
(?), so the three can never disagree."""
from __future__ import annotations

from dataclasses import dataclass

from textual.binding import Binding


@dataclass(frozen=True)
class ConsoleCommand:
    id: str            # binding id: the name a keymap uses
    key: str           # default key(s), Textual names, comma-separated
    action: str        # Textual action string
    title: str         # palette and help title
    help: str          # one line
    group: str
    footer: bool = True


COMMANDS: list[ConsoleCommand] = [
    # Stages (the selected row of the stages panel)
    ConsoleCommand("start", "s", "start_stage", "Start stage",
                   "start the selected stage, detached (it outlives the console)", "Stages"),
    ConsoleCommand("stop", "x", "stop_stage", "Stop stage",
                   "write its kill file; the row shows stopping... until it exits", "Stages"),
    ConsoleCommand("force_stop", "F", "force_stop", "Force stop (signals)",
                   "show the DB lock holders, confirm, then SIGTERM and SIGKILL", "Stages",
                   footer=False),
    ConsoleCommand("stop_all", "A", "stop_all", "Stop all stages",
                   "kill files for every running stage, in pipeline order", "Stages", footer=False),
    ConsoleCommand("deploy", "D", "deploy", "Deploy to worker",
                   "git pull on the selected worker host (type YES:GIT)", "Stages", footer=False),
    # The weekly run and the pause protocol
    ConsoleCommand("start_run", "W", "start_run", "Start weekly run",
                   "start the runner (the pipeline stage)", "Run", footer=False),
    ConsoleCommand("stop_run", "E", "stop_run", "Stop weekly run",
                   "write the runner's kill file", "Run", footer=False),
    ConsoleCommand("pause_all", "P", "pause_all", "Pause all stages",
                   "ask every pausable stage to pause; acknowledgements in the Run tab", "Run",
                   footer=False),
    ConsoleCommand("resume_all", "R", "resume_all", "Resume all stages",
                   "remove the pause files", "Run", footer=False),
    # Logs
    ConsoleCommand("log_search", "slash", "log_search", "Search log",
                   "search the selected stage's log, keeping context lines", "Logs"),
    # View
    ConsoleCommand("refresh_now", "r", "refresh_now", "Refresh now",
                   "poll every source now", "View", footer=False),
    ConsoleCommand("toggle_refresh", "space", "toggle_refresh", "Pause refresh",
                   "pause or resume the live refresh", "View"),
    ConsoleCommand("refresh_slower", "minus", "refresh_slower", "Refresh slower",
                   "longer refresh interval", "View", footer=False),
    ConsoleCommand("refresh_faster", "plus", "refresh_faster", "Refresh faster",
                   "shorter refresh interval", "View", footer=False),
    ConsoleCommand("tab_dashboard", "1", "show_tab('dashboard')", "Dashboard",
                   "stages, queues, locks, backups, logs", "View", footer=False),
    ConsoleCommand("tab_run", "2", "show_tab('run')", "Run and alerts",
                   "the weekly run, pauses and alerts", "View", footer=False),
    ConsoleCommand("tab_search", "3", "show_tab('search')", "Search",
                   "search the collection", "View", footer=False),
    ConsoleCommand("help", "question_mark", "help", "Help", "this list of keys", "View"),
    ConsoleCommand("quit", "q", "quit", "Quit", "leave the console; stages keep running", "View"),
]

BY_ID = {c.id: c for c in COMMANDS}


def bindings() -> list[Binding]:
    return [Binding(c.key, c.action, c.title, show=c.footer, id=c.id) for c in COMMANDS]


def validate_keymap(keymap: dict, where: str = "console.keymap") -> dict[str, str]:
    """Check a keymap from the config: known ids, non-empty key strings."""
    from pipeline.core.errors import UserError

    if not isinstance(keymap, dict):
        raise UserError(f"{where} must be a table of binding id = key")
    clean: dict[str, str] = {}
    for binding_id, keys in keymap.items():
        if binding_id not in BY_ID:
            raise UserError(f"{where}: unknown binding id {binding_id!r} "
                            f"(ids: {', '.join(BY_ID)})")
        if not isinstance(keys, str) or not keys.strip():
            raise UserError(f"{where}.{binding_id} must be a key name such as \"z\" or \"ctrl+s\"")
        clean[binding_id] = keys.strip()
    return clean


def effective_key(command: ConsoleCommand, keymap: dict[str, str]) -> str:
    return keymap.get(command.id, command.key)
