"""The operations console: live, keyboard-driven control of every stage on every host.

The app only arranges panels and wires keys and widget messages to its parts, each in its
own module and mixed into ConsoleApp: poll scheduling (console/polling.py; every source --
stages, DB, locks, each worker host, the selected log, the run -- is polled in its own daemon
thread and re-scheduled when its answer arrives, so a source that fails or hangs shows that
in its own panel while the others keep refreshing), putting answers on the panels
(panel_feed.py), worker hosts (host_sources.py), the followed log (log_follow.py), action
threads and the command log (background.py), the stage keys (stage_actions.py, and
stage_lifecycle.py for pause, resume and restart of one stage) and search (search_actions.py);
where each key acts (key_scope.py), text boxes (input_keys.py), table filter and sort
(table_keys.py) and the log keys (log_keys.py). Data comes from console/adapters.py.
Quitting stops nothing: stages run detached and only explicit keys write kill files.
"""
from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

from textual import on
from textual.app import App, ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Footer, TabbedContent, TabPane

from console.adapters import Sources
from console.background import BackgroundActions
from console.command_log import CommandLog
from console.commands import bindings
from console.history import QueueHistory
from console.host_sources import HostSources
from console.input_keys import InputKeys
from console.key_scope import KeyScope
from console.lock_view import LockView
from console.log_follow import LogFollow
from console.log_keys import LogKeys
from console.palette import ConsoleCommands
from console.panel_feed import PanelFeed
from console.polling import PollScheduler
from console.screens.help_screen import HelpScreen
from console.search_actions import SearchActions
from console.settings import ConsoleSettings
from console.stage_actions import StageActions
from console.stage_lifecycle import StageLifecycle
from console.table_keys import TableKeys
from console.widgets.backups_panel import BackupsPanel
from console.widgets.command_log_panel import CommandLogPanel
from console.widgets.listing_card import ListingCard, image_widget_class
from console.widgets.locks_panel import LocksPanel
from console.widgets.logs_panel import LogsPanel
from console.widgets.queues_panel import QueuesPanel
from console.widgets.runner_panel import RunnerPanel
from console.widgets.search_pane import SearchPane
from console.widgets.stages_panel import StagesPanel, StagesTable
from console.widgets.status_bar import StatusBar
from console.widgets.too_small import TooSmall
from pipeline.core.safety import safety_problems

# All styling lives in console.tcss at the top of the repository.
CSS_FILE = Path(__file__).resolve().parent.parent / "console.tcss"


class ConsoleApp(PollScheduler, PanelFeed, HostSources, LogFollow, BackgroundActions,
                 StageActions, StageLifecycle, SearchActions, KeyScope, InputKeys, TableKeys,
                 LogKeys, App):
    # The mixins come before App so that their methods win, as if written here. Textual
    # registers @on handlers only in the App class's own body, so those stay below.
    CSS_PATH = str(CSS_FILE)
    TITLE = "imageselector console"
    BINDINGS = bindings()
    COMMANDS = App.COMMANDS | {ConsoleCommands}

    def __init__(self, root, settings: ConsoleSettings | None = None,
                 sources: Sources | None = None, clock: Callable[[], float] = time.time,
                 poll: bool = True, image_class: Any = "auto"):
        super().__init__()
        self.root = root
        self.settings = settings or ConsoleSettings.from_config(root.config)
        self.sources = sources or Sources()
        self.clock = clock
        self.poll_enabled = poll
        self.refresh_s = float(self.settings.refresh_s)
        self.refresh_paused = False
        self.keymap = dict(self.settings.keymap)
        self.history = QueueHistory(self.settings.history_s)
        self.command_log = CommandLog(root.logs_dir / "console_commands.log", clock)
        self.lock_view = LockView(root.run_dir / "locks_seen.json", self.settings.lock_open_scan_s)
        self._init_polling()
        self.unsafe: list[str] = []   # safe-default failures (no backup target, alerts off)
        self.local_rows: list[dict] = []
        self.hosts: list[dict] = []
        self.host_rows: dict[str, list[dict]] = {}
        self.ray_workers: list[dict] = []   # workers_status rows of kind "ray"
        self.local_serving: list[dict] = []  # re-embed servers of local workers (serve_rows)
        self.hosts_message: str | None = None
        self.stopping: set[str] = set()      # rows whose kill file this console wrote
        self.last_refresh_at: float | None = None
        self.last_took_s: float | None = None
        self.selected_key: str | None = None
        self._last_states: dict[str, str] = {}     # row key -> state, for crash notices
        self.panels: SimpleNamespace | None = None   # the panels, once mounted
        self.image_class = (image_widget_class(self.settings.thumbnails)
                            if image_class == "auto" else image_class)
        try:
            profile = root.profile
        except Exception:
            profile = "?"
        self.root_text = f"{root.path} ({profile})"

    # ------------------------------------------------------------------ layout
    def compose(self) -> ComposeResult:
        yield StatusBar("", id="status-bar")
        with TabbedContent(id="tabs", initial="dashboard"):
            with TabPane("Dashboard", id="dashboard"):
                yield StagesPanel(id="stages")
                # queues and backups side by side, each wide enough for all of its columns
                # at 160; the lock holders over the command log, beside the log
                with Horizontal(id="middle"):
                    yield QueuesPanel(id="queues")
                    yield BackupsPanel(id="backups")
                with Horizontal(id="bottom"):
                    yield LogsPanel(context=self.settings.log_context, id="logs")
                    with Vertical(id="side"):
                        yield LocksPanel(id="locks")
                        yield CommandLogPanel(id="commands")
            with TabPane("Run and alerts", id="run"):
                yield RunnerPanel(id="runner")
            with TabPane("Search", id="search"):
                yield SearchPane(image_class=self.image_class, id="search-pane")
        yield TooSmall("", id="too-small")
        yield Footer()

    def on_mount(self) -> None:
        self.panels = SimpleNamespace(
            stages=self.query_one(StagesPanel), queues=self.query_one(QueuesPanel),
            locks=self.query_one(LocksPanel), backups=self.query_one(BackupsPanel),
            logs=self.query_one(LogsPanel), commands=self.query_one(CommandLogPanel),
            runner=self.query_one(RunnerPanel), search=self.query_one(SearchPane),
            status_bar=self.query_one(StatusBar), too_small=self.query_one(TooSmall),
            stages_table=self.query_one(StagesTable), tabs=self.query_one(TabbedContent))
        self.set_keymap(self.keymap)
        # full screen on and off (z, Escape) changes which keys act: the footer follows
        self.watch(self.screen, "maximized", lambda *_: self.refresh_bindings(), init=False)
        self.panels.too_small.check(self.size.width, self.size.height)
        self.panels.stages_table.focus()
        if self.poll_enabled:
            # from the root's config (read once at open, like the console's own settings)
            self.unsafe = [p.key for p in safety_problems(self.root)]
        self._update_status_bar()
        if not self.poll_enabled:
            return
        self._add_poller("stages", lambda: self.sources.local_stages(self.root, self.clock()))
        self._add_poller("db", lambda: self.sources.read_db(self.root, self.clock(),
                                                            self.settings.db_timeout_s))
        self._add_poller("backups", lambda: self.sources.read_backups(
            self.root, self.clock(), self.settings.db_timeout_s), every=10)  # slow to change
        self._add_poller("locks", lambda: self.sources.lock_holders(self.root, self.lock_view,
                                                                    self.clock()))
        self._add_poller("hosts", lambda: self.sources.worker_hosts(self.root), every=5)
        self._add_poller("ray", lambda: self.sources.ray_workers(self.root, self.clock()), every=2)
        self._add_poller("serving", lambda: self.sources.local_serving(self.root, self.clock()),
                         every=2)
        # a re-embed's progress lists every shard's folders: it moves slowly, looked at slowly
        self._add_poller("reembed", lambda: self.sources.reembed_jobs(self.root, self.clock()),
                         every=10)
        self._add_poller("run", lambda: self.sources.runner_view(self.root, self.clock(),
                                                                 self.settings.db_timeout_s),
                         every=2)
        self._add_poller("log", self._log_fetch(None))
        self.set_interval(1.0, self._watchdog)

    def on_unmount(self) -> None:
        """Close the cached SSH connections to the workers (never waits on a hung host);
        quitting never stops a stage (it stops the search helper it started)."""
        try:
            self.sources.close_hosts()
        except Exception:
            pass
        self.stop_search_helper()

    def on_resize(self, event) -> None:
        if self.panels is not None:
            self.panels.too_small.check(event.size.width, event.size.height)

    def _showing(self) -> bool:
        """False while the app shuts down: late results are dropped."""
        return self.panels is not None and self.panels.stages.is_attached

    # ------------------------------------------------------------------ selection
    @on(DataTable.RowHighlighted, "#stages-table")
    def _row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._selection_changed(event.row_key.value if event.row_key else None)

    # ------------------------------------------------------------------ view
    def action_show_tab(self, tab: str) -> None:
        self.panels.tabs.active = tab
        # focus now, not when TabActivated arrives: keys typed right after 3 go to the box
        self._focus_tab(tab)

    @on(TabbedContent.TabActivated)
    def _tab_shown(self, event: TabbedContent.TabActivated) -> None:
        """Focus follows the tab (a click on it too), so typed text never lands on the stage
        keys by mistake; the footer then shows the keys of that tab."""
        tab = event.pane.id if event.pane is not None else None
        self._focus_tab(tab)
        self.refresh_bindings()

    def _focus_tab(self, tab: str | None) -> None:
        if tab == "search":
            field = self.query_one("#search-input")
            if self.focused is not field:
                self.screen.set_focus(field)
        else:
            self.focus_home()

    def focus_home(self) -> None:
        """Where the focus rests on each tab: the stages table on the Dashboard (the stage keys
        act on its highlighted row), nothing elsewhere (the tab's own keys and 1 2 3 ? q)."""
        if self.panels.tabs.active == "dashboard" and self.screen.maximized is None:
            if self.focused is not self.panels.stages_table:
                self.screen.set_focus(self.panels.stages_table)
        else:
            self.screen.set_focus(None)

    def action_help(self) -> None:
        self.push_screen(HelpScreen(self.keymap))

    def action_doctor(self) -> None:
        """The doctor's checks in a screen of their own, run in the background."""
        from console.screens.doctor_screen import DoctorScreen

        if isinstance(self.screen, DoctorScreen):
            return          # already showing (r runs it again)
        self.log_command("doctor: checking what the weekly run needs")
        self.push_screen(DoctorScreen(self.root, self.sources))

    # ------------------------------------------------------------------ search
    @on(SearchPane.Requested)
    def _search(self, event: SearchPane.Requested) -> None:
        self.search_for(event.query)

    @on(ListingCard.Selected)
    def _more_like_this(self, event: ListingCard.Selected) -> None:
        self.more_like(event.result.get("listing_id"))
