"""The one list of the console's commands. It makes the key bindings (each with an id, so a
keymap in the config can change the key), the command palette (ctrl+p), the footer and the help
screen (?), so they can never disagree. Each command says where it acts (`where`): a key acts
only where what it acts on is on screen, the footer shows only the keys that act there, and
two commands may share a key only where they never both act."""
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
    where: str = "everywhere"   # a key of WHERE: the places the command acts in


# Where a command acts, as the situations it acts in: a tab, and on the Dashboard what has the
# focus. Two commands whose situations meet must not share a key (key_clashes).
DASHBOARD_SITUATIONS = {"dashboard/stages", "dashboard/table", "dashboard/log", "dashboard/other"}
WHERE: dict[str, tuple[str, set[str]]] = {
    "everywhere": ("any tab", DASHBOARD_SITUATIONS | {"log/full", "run", "search"}),
    # the stages table is on screen (not behind a full-screen log) with a highlighted row
    "dashboard": ("Dashboard", DASHBOARD_SITUATIONS),
    "run": ("Run tab", {"run"}),
    # a focused Stages, Queues or DB locks panel
    "table": ("focused table", {"dashboard/stages", "dashboard/table"}),
    "log": ("focused log", {"dashboard/log", "log/full"}),
    "search": ("Search tab", {"search"}),
}


COMMANDS: list[ConsoleCommand] = [
    # Stages (the highlighted row of the stages panel)
    ConsoleCommand("start", "s", "start_stage", "Start stage",
                   "start the selected stage, detached (it outlives the console)", "Stages",
                   where="dashboard"),
    ConsoleCommand("stop", "x", "stop_stage", "Stop stage",
                   "write its kill file; the row shows stopping... until it exits", "Stages",
                   where="dashboard"),
    ConsoleCommand("pause_stage", "p", "pause_stage", "Pause stage",
                   "ask the selected stage to pause (its pause file); it finishes its unit first",
                   "Stages", where="dashboard"),
    ConsoleCommand("resume_stage", "u", "resume_stage", "Resume stage",
                   "remove the selected stage's pause file", "Stages", where="dashboard"),
    ConsoleCommand("restart_stage", "S", "restart_stage", "Restart stage",
                   "stop the selected stage, wait until it has exited, then start it", "Stages",
                   where="dashboard", footer=False),
    ConsoleCommand("force_stop", "F", "force_stop", "Force stop (signals)",
                   "show the DB lock holders, confirm, then SIGTERM and SIGKILL", "Stages",
                   footer=False, where="dashboard"),
    ConsoleCommand("stop_all", "A", "stop_all", "Stop all stages",
                   "kill files for every running stage, in pipeline order", "Stages", footer=False,
                   where="dashboard"),
    ConsoleCommand("deploy", "D", "deploy", "Deploy to worker",
                   "git pull on the selected worker host (type YES:GIT)", "Stages", footer=False,
                   where="dashboard"),
    # Tables (Stages, Queues, DB locks)
    ConsoleCommand("filter_table", "slash", "filter_table", "Filter",
                   "show only the rows containing the typed text (Escape clears it)", "Tables",
                   where="table"),
    ConsoleCommand("sort_table", "o", "sort_table", "Sort",
                   "sort by the next column (then back to the usual order)", "Tables",
                   where="table"),
    ConsoleCommand("sort_reverse", "O", "sort_reverse", "Reverse sort",
                   "reverse the sort order", "Tables", where="table", footer=False),
    # The weekly run and the pause protocol
    ConsoleCommand("start_run", "W", "start_run", "Start weekly run",
                   "start the runner (the pipeline stage)", "Run", where="run"),
    ConsoleCommand("stop_run", "E", "stop_run", "Stop weekly run",
                   "write the runner's kill file", "Run", where="run"),
    ConsoleCommand("pause_all", "P", "pause_all", "Pause all stages",
                   "ask every pausable stage to pause; acknowledgements in the Run tab", "Run",
                   where="run"),
    ConsoleCommand("resume_all", "R", "resume_all", "Resume all stages",
                   "remove the pause files", "Run", where="run"),
    # Logs (the log panel focused: Tab to it)
    ConsoleCommand("log_search", "slash", "log_search", "Search log",
                   "search the selected stage's log, keeping context lines", "Logs",
                   where="log"),
    ConsoleCommand("log_next", "n", "log_next_match", "Next match",
                   "go to the next line that matches the log search", "Logs", where="log"),
    ConsoleCommand("log_previous", "N", "log_previous_match", "Previous match",
                   "go to the previous line that matches the log search", "Logs", where="log",
                   footer=False),
    ConsoleCommand("log_follow", "f", "log_follow", "Follow",
                   "follow the log's tail on or off (off: the view holds still)", "Logs",
                   where="log"),
    ConsoleCommand("log_wrap", "w", "log_wrap", "Wrap",
                   "wrap long log lines on or off", "Logs", where="log"),
    ConsoleCommand("log_full_screen", "z,enter", "log_full_screen", "Full screen",
                   "the log panel over the whole screen, or back (Escape too)", "Logs",
                   where="log"),
    # Search (the selected card: Tab to it, or the first after a search; Escape leaves the box)
    ConsoleCommand("search_open", "o", "search_open", "Open listing",
                   "copy the selected result's Etsy URL to the clipboard and show it", "Search",
                   where="search"),
    ConsoleCommand("search_more", "m", "search_more", "More like this",
                   "search with the selected result's listing (Enter on a card too)", "Search",
                   where="search"),
    ConsoleCommand("search_same", "e", "search_same", "Same item elsewhere",
                   "the other shops' listings of the selected result's item, with prices",
                   "Search", where="search"),
    ConsoleCommand("search_next_page", "n", "search_next_page", "Next page",
                   "the next page of results of the same query", "Search", where="search"),
    ConsoleCommand("search_previous_page", "p", "search_previous_page", "Previous page",
                   "the previous page of results", "Search", where="search"),
    ConsoleCommand("search_history_back", "up", "search_history_back", "Previous query",
                   "put the previous query of this session into the box", "Search",
                   where="search", footer=False),
    ConsoleCommand("search_history_forward", "down", "search_history_forward", "Next query",
                   "put the next query of the history into the box", "Search", where="search",
                   footer=False),
    ConsoleCommand("search_cancel", "escape", "search_cancel", "Leave box / cancel",
                   "stop waiting for the running search (its late answer is dropped); "
                   "leaves the box", "Search", where="search"),
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
    ConsoleCommand("doctor", "H", "doctor", "Health check (doctor)",
                   "run imageselector doctor's checks in the background: the same lines, "
                   "failures red, warnings yellow, the fix under each", "View", footer=False),
    ConsoleCommand("help", "question_mark", "help", "Help", "this list of keys", "View"),
    ConsoleCommand("quit", "q", "quit", "Quit", "leave the console; stages keep running", "View"),
]

# Keys that are not commands (Textual's own focus and widget keys), for the help screen.
NAVIGATION: list[tuple[str, str, str]] = [
    ("tab", "Next panel", "move the focus to the next panel; the focused panel has a bright border"),
    ("shift+tab", "Previous panel", "move the focus to the previous panel"),
    ("escape", "Leave / back", "leave a text box (search, filter, log search); close a dialog, "
                               "the help or full screen"),
    ("up,down", "Move", "move the highlighted row (the stage keys act on it)"),
    ("pageup,pagedown", "Page", "page through a table or a log"),
    ("home,end", "First / last", "the first or last row (ctrl+home, ctrl+end in a table)"),
    ("enter", "Enter", "search in a text box; full screen on the log panel; "
                       "more like this on a search card"),
    ("enter", "Search query", "on the Search tab: words, image paths and image URLs (together: text and images), "
                         "listing:ID or an Etsy listing URL (more like it), same:ID (the same "
                         "item in other shops); filters price:20-80 (or 20- / -80) shop:ID "
                         "taxonomy:ID state:any since:YYYY-MM-DD unseen (leave out listings "
                         "already shown); combine:fuse for several images"),
    ("ctrl+p", "Palette", "every command by name, with its key"),
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
    clashes = key_clashes(clean)
    if clashes:
        raise UserError(f"{where}: {clashes[0]}")
    return clean


def normal_key(key: str) -> str:
    """One spelling per key ("/" and "slash" are the same key), as Textual matches them."""
    from textual.keys import _character_to_key  # Textual's own normalisation of keymap keys

    key = key.strip()
    return _character_to_key(key) if len(key) == 1 else key


def key_clashes(keymap: dict[str, str]) -> list[str]:
    """Each pair of commands that would share a key where both act."""
    out = []
    keyed = [(c, {normal_key(k) for k in effective_key(c, keymap).split(",")}) for c in COMMANDS]
    for i, (first, first_keys) in enumerate(keyed):
        for second, second_keys in keyed[i + 1:]:
            shared = first_keys & second_keys
            if shared and WHERE[first.where][1] & WHERE[second.where][1]:
                out.append(f"{first.id} and {second.id} both use {', '.join(sorted(shared))} "
                           f"({WHERE[first.where][0]} / {WHERE[second.where][0]})")
    return out


def effective_key(command: ConsoleCommand, keymap: dict[str, str]) -> str:
    return keymap.get(command.id, command.key)
