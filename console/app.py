"""The operations console: live, keyboard-driven control of every stage on every host.

The app only arranges panels, polls sources and runs actions. Every source (stages, DB,
locks, each worker host, the selected log, the run) is polled in its own daemon thread and
re-scheduled when its answer arrives (console/polling.py); a source that fails or hangs shows
that in its own panel while the others keep refreshing. Data comes from console/adapters.py.
Quitting stops nothing: stages run detached and only explicit keys write kill files.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

from textual import on
from textual.app import App, ComposeResult
from textual.containers import Horizontal
from textual.message import Message
from textual.widgets import DataTable, Footer, TabbedContent, TabPane

from console import actions
from console.adapters import Sources
from console.command_log import CommandEntry, CommandLog
from console.commands import bindings
from console.history import QueueHistory
from console.lock_view import LockView
from console.palette import ConsoleCommands
from console.polling import ERROR, MESSAGE, OK, UNAVAILABLE, Poller, PollResult, run_source
from console.screens.confirm_screen import ConfirmScreen
from console.screens.escalate_screen import EscalateScreen
from console.screens.help_screen import HelpScreen
from console.screens.typed_confirm_screen import TypedConfirmScreen
from console.settings import ConsoleSettings, next_refresh
from console.widgets.backups_panel import BackupsPanel
from console.widgets.command_log_panel import CommandLogPanel
from console.widgets.listing_card import ListingCard, image_widget_class
from console.widgets.locks_panel import LocksPanel
from console.widgets.logs_panel import LogsPanel
from console.widgets.queues_panel import QueuesPanel
from console.widgets.runner_panel import RunnerPanel
from console.widgets.search_pane import SearchPane
from console.widgets.stages_panel import StagesPanel, StagesTable, clock_messages, row_key
from console.widgets.status_bar import StatusBar
from console.widgets.too_small import TooSmall

# All styling lives in console.tcss at the top of the repository.
CSS_FILE = Path(__file__).resolve().parent.parent / "console.tcss"
DEPLOY_PHRASE = "YES:GIT"
# Poll answers arriving within this long of each other are applied in one batch (one repaint).
RESULT_BATCH_S = 0.03


class ActionDone(Message):
    """An action thread finished (start, stop, signals, search...)."""

    def __init__(self, label: str, kind: str, data: Any, text: str | None,
                 done: Callable | None, quiet: bool):
        super().__init__()
        self.label = label
        self.kind = kind
        self.data = data
        self.text = text
        self.done = done
        self.quiet = quiet


class CommandLogged(Message):
    def __init__(self, entry: CommandEntry):
        super().__init__()
        self.entry = entry


class ConsoleApp(App):
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
        self.pollers: dict[str, Poller] = {}
        self.local_rows: list[dict] = []
        self.hosts: list[dict] = []
        self.host_rows: dict[str, list[dict]] = {}
        self.hosts_message: str | None = None
        self.stopping: set[str] = set()      # rows whose kill file this console wrote
        self.problems: dict[str, str] = {}   # source -> what is wrong with it now
        self.last_refresh_at: float | None = None
        self.last_took_s: float | None = None
        self.selected_key: str | None = None
        self._grid_origin = time.monotonic()
        self._pending_results: list[PollResult] = []
        self._worked: set[str] = set()             # sources that have answered well once
        self._last_states: dict[str, str] = {}     # row key -> state, for crash notices
        self._flush_timer = None
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
                with Horizontal(id="middle"):
                    yield QueuesPanel(id="queues")
                    yield LocksPanel(id="locks")
                    yield BackupsPanel(id="backups")
                with Horizontal(id="bottom"):
                    yield LogsPanel(context=self.settings.log_context, id="logs")
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
        self.panels.too_small.check(self.size.width, self.size.height)
        self.panels.stages_table.focus()
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
        self._add_poller("run", lambda: self.sources.runner_view(self.root, self.clock(),
                                                                 self.settings.db_timeout_s),
                         every=2)
        self._add_poller("log", self._log_fetch(None))
        self.set_interval(1.0, self._watchdog)

    def on_unmount(self) -> None:
        """Close the cached SSH connections to the workers (never waits on a hung host);
        quitting never stops a stage."""
        try:
            self.sources.close_hosts()
        except Exception:
            pass

    def on_resize(self, event) -> None:
        if self.panels is not None:
            self.panels.too_small.check(event.size.width, event.size.height)

    # ------------------------------------------------------------------ polling
    def _add_poller(self, name: str, fetch: Callable, every: float = 1.0) -> Poller:
        timeout = self.settings.source_timeout_s
        poller = Poller(name, fetch, timeout, every)
        self.pollers[name] = poller
        poller.start(self.post_message)
        return poller

    def _remove_poller(self, name: str) -> None:
        poller = self.pollers.pop(name, None)
        if poller is not None:
            poller.stopped = True
            if poller.timer is not None:
                poller.timer.stop()

    def _schedule(self, poller: Poller) -> None:
        if poller.timer is not None:
            poller.timer.stop()
            poller.timer = None
        if self.refresh_paused or poller.stopped or not self.poll_enabled:
            return
        poller.timer = self.set_timer(self._delay_to_grid(poller.every), lambda: self._kick(poller))

    def _delay_to_grid(self, every: float) -> float:
        """Seconds until this source's next poll: about `every` intervals from now, rounded up
        to the common refresh grid, so the sources of one refresh answer together and the
        screen is repainted once per refresh instead of once per source."""
        now = time.monotonic()
        step = self.refresh_s
        target = now + step * every - step / 2
        ticks = -(-(target - self._grid_origin) // step)  # ceil
        return max(0.0, self._grid_origin + ticks * step - now)

    def _kick(self, poller: Poller) -> None:
        if poller.timer is not None:
            poller.timer.stop()
            poller.timer = None
        poller.start(self.post_message)

    def kick(self, *names: str) -> None:
        """Poll these sources now (all when none is named), unless one is in flight."""
        for name in names or list(self.pollers):
            poller = self.pollers.get(name)
            if poller is not None:
                self._kick(poller)

    def _showing(self) -> bool:
        """False while the app shuts down: late results are dropped."""
        return self.panels is not None and self.panels.stages.is_attached

    def on_poll_result(self, result: PollResult) -> None:
        """Answers that arrive close together are shown together: one repaint per refresh."""
        if not self._showing():
            return
        self._pending_results.append(result)
        if self._flush_timer is None:
            self._flush_timer = self.set_timer(RESULT_BATCH_S, self._flush_results)

    def _flush_results(self) -> None:
        self._flush_timer = None
        results, self._pending_results = self._pending_results, []
        if not self._showing():
            return
        with self.batch_update():
            for result in results:
                self._take_result(result)
            self._update_status_bar()

    def _take_result(self, result: PollResult) -> None:
        poller = self.pollers.get(result.source)
        if poller is None:
            return  # a host removed from hosts.toml meanwhile
        poller.finished(result)
        if result.generation == poller.generation:
            self._track_problem(result.source, result.kind, result.text)
            self._apply(result.source, result.kind, result.data, result.text)
            if result.source == "stages":
                self.last_refresh_at = self.clock()
                self.last_took_s = result.took_s
        self._schedule(poller)

    def _track_problem(self, source: str, kind: str, text: str | None) -> None:
        """A notification when a source fails: at once for an error, and for an expected
        condition (DB locked, host unreachable) when that source had been working."""
        if kind in (OK, UNAVAILABLE) or source == "log":
            self.problems.pop(source, None)
            self._worked.add(source)
            return
        if source not in self.problems and (kind == ERROR or source in self._worked):
            self.notify(f"{source}: {text}", title="source failing",
                        severity="error" if kind == ERROR else "warning")
        self.problems[source] = text or kind

    def _watchdog(self) -> None:
        if not self._showing():
            return
        now = time.monotonic()
        changed = False
        for name, poller in list(self.pollers.items()):
            waited = poller.overdue_s(now)
            if waited is None:
                continue
            text = f"no answer for {waited:.0f} s"
            if name.startswith("host:"):
                host = name.split(":", 1)[1]
                self.host_rows[host] = [self._host_row(host, "unreachable", text)]
                changed = True
            elif name == "hosts":  # keep the hosts known so far; only say it is late
                self.hosts_message = f"worker hosts: hosts.toml: {text}"
                changed = True
            else:
                self._apply(name, MESSAGE, None, f"{name}: {text} (still waiting)")
            if name not in self.problems:
                self.notify(f"{name}: {text}", title="source not answering", severity="warning")
            self.problems[name] = text
        if changed:
            self._render_stages()
        self._update_status_bar()

    # ------------------------------------------------------------------ applying data
    def _apply(self, source: str, kind: str, data: Any, text: str | None) -> None:
        if source == "stages":
            if kind == OK:
                self.local_rows = data
                self._note_exits()
            self._render_stages(None if kind == OK else f"local stages: {text}")
            if kind == OK:
                runner_row = next((r for r in data if r["name"] == "pipeline"), None)
                self.panels.runner.show_runner(runner_row)
        elif source == "db":
            if kind == OK:
                self.history.add(self.clock(), data["queues"])
                self._render_queues()
            else:
                self.panels.queues.show_message(text)
        elif source == "backups":
            if kind == OK:
                self.panels.backups.show(data["backups"], data.get("schedule"),
                                         data["backup_jobs"], data.get("notes"))
            else:
                self.panels.backups.show_message(text)
        elif source == "locks":
            if kind == OK:
                self.panels.locks.show(data, self.clock())
            else:
                self.panels.locks.show_message(f"lock holders: {text}")
        elif source == "hosts":
            self._apply_hosts(kind, data, text)
        elif source.startswith("host:"):
            host = source.split(":", 1)[1]
            if kind == OK:
                self.host_rows[host] = [{**r, "host": host} for r in data]
            elif kind == UNAVAILABLE:
                self.host_rows[host] = [self._host_row(host, "n/a", text)]
            else:
                self.host_rows[host] = [self._host_row(host, "unreachable", text)]
            self._render_stages()
        elif source == "run":
            if kind == OK:
                states = {r["name"]: r["state"] for r in self.local_rows}
                self.panels.runner.show_view(data, states)
            else:
                self.panels.runner.show_message(text)
        elif source == "log":
            logs = self.panels.logs
            if kind == OK:
                logs.show_lines(data)
            else:
                logs.show_message(text)

    @staticmethod
    def _host_row(host: str, state: str, text: str | None) -> dict:
        return {"name": "worker", "host": host, "state": state, "message": text}

    def _apply_hosts(self, kind: str, data: Any, text: str | None) -> None:
        if kind != OK:
            self.hosts_message = f"worker hosts: {text}"
            data = []
        else:
            self.hosts_message = None
        names = [h["name"] for h in data]
        for name in list(self.host_rows):
            if name not in names:
                self.host_rows.pop(name)
                self._remove_poller(f"host:{name}")
        self.hosts = data
        for host in data:
            source = f"host:{host['name']}"
            if source not in self.pollers:
                self.host_rows.setdefault(host["name"], [self._host_row(host["name"], "waiting", "")])
                # a worker rewrites its heartbeat every stage.heartbeat_s (2 s): reading it
                # over SSH every refresh would only repeat the same answer
                self._add_poller(source, self._host_fetch(host), every=2)
        self._render_stages()

    def _host_fetch(self, host: dict) -> Callable:
        timeout = self.settings.source_timeout_s
        return lambda: self.sources.host_stages(self.root, host, timeout)

    def all_rows(self) -> list[dict]:
        rows = list(self.local_rows)
        for host in self.hosts:
            rows += self.host_rows.get(host["name"], [])
        return rows

    def _render_stages(self, message: str | None = None) -> None:
        rows = self.all_rows()
        messages = [m for m in (message, self.hosts_message) if m] + clock_messages(rows)
        self.panels.stages.show(rows, self.stopping, messages)
        if self.selected_key is None:
            self._selection_changed(self.panels.stages.selected_key())

    def _render_queues(self) -> None:
        rates = {r["name"]: r.get("rate") for r in self.local_rows if r.get("rate")}
        for rows in self.host_rows.values():
            for r in rows:
                if r.get("rate"):
                    rates[r["name"]] = (rates.get(r["name"]) or 0) + r["rate"]
        self.panels.queues.show(self.history, rates)

    def _note_exits(self) -> None:
        """A stage the console asked to stop has exited: say so once. A stage that was
        running and is now crashed or stale: a notification."""
        rows = {row_key(r): r for r in self.all_rows()}
        for key, row in rows.items():
            before = self._last_states.get(key)
            state = row.get("state")
            if before in actions.LIVE and state in ("crashed", "stale") and before != state:
                self.notify(f"{key} is {state}", title="stage", severity="error")
            self._last_states[key] = state
        for key in list(self.stopping):
            row = rows.get(key)
            if row is None or actions.is_live(row):
                continue
            self.stopping.discard(key)
            last = row.get("last_exit") or {}
            if row.get("state") == "stopped" and last:
                self.log_command(f"{key} exited: {last.get('code', '?')} "
                                 f"{last.get('outcome', '')} ({last.get('reason', '')})", "ok")
            else:
                self.log_command(f"{key} is gone: {row.get('state')}", "ok")
            self.notify(f"{key} stopped")

    def _update_status_bar(self) -> None:
        self.panels.status_bar.show(self.root_text, self.refresh_s, self.refresh_paused,
                                       self.last_refresh_at, self.last_took_s,
                                       sorted(self.problems))

    # ------------------------------------------------------------------ feeding recorded data
    def feed_status(self, snapshot: dict) -> None:
        """Show a recorded `status --json` snapshot (snapshot tests, replays)."""
        at = snapshot.get("at") or self.clock()
        self._apply("stages", OK, snapshot.get("stages", []), None)
        queues = snapshot.get("queues") or {}
        if all(v is None for v in queues.values()):
            self._apply("db", MESSAGE, None, "; ".join(snapshot.get("errors", [])) or "no DB")
        else:
            self.history.add(at, queues)
            self._render_queues()
            self.panels.backups.show(snapshot.get("backups", []),
                                     snapshot.get("schedule"), snapshot.get("backup_jobs", []))
        self._apply("locks", OK, snapshot.get("locks", []), None)
        self.last_refresh_at = at
        self._update_status_bar()

    # ------------------------------------------------------------------ selection and log
    @on(DataTable.RowHighlighted, "#stages-table")
    def _row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._selection_changed(event.row_key.value if event.row_key else None)

    def _selection_changed(self, key: str | None) -> None:
        if key is None or key == self.selected_key:
            return
        self.selected_key = key
        self.panels.logs.set_title(f"Log: {key}")
        poller = self.pollers.get("log")
        if poller is not None:
            poller.generation += 1
            poller.fetch = self._log_fetch(key)
            if poller.in_flight_since is None:
                self._kick(poller)

    def _log_fetch(self, key: str | None) -> Callable:
        def fetch():
            from console.adapters import SourceMessage

            row = self.row(key) if key else None
            if row is None:
                raise SourceMessage("select a stage to see its log")
            if row.get("host", "local") == "local":
                lines, _ = self.sources.local_log_tail(Path(row["log"]), self.settings.log_lines)
                return lines
            host = next(h for h in self.hosts if h["name"] == row["host"])
            return self.sources.host_log_tail(self.root, host, row["name"], self.settings.log_lines)
        return fetch

    def row(self, key: str | None) -> dict | None:
        return next((r for r in self.all_rows() if row_key(r) == key), None)

    def _selected(self) -> dict | None:
        row = self.row(self.panels.stages.selected_key())
        if row is None:
            self.notify("select a stage first", severity="warning")
        return row

    # ------------------------------------------------------------------ command log and threads
    def log_command(self, text: str, level: str = "info") -> None:
        """Record a command (callable from any thread)."""
        entry = self.command_log.add(text, level)
        if threading.get_ident() == self._thread_id:
            if self._showing():
                self.panels.commands.add(entry)
        else:
            self.post_message(CommandLogged(entry))

    def on_command_logged(self, message: CommandLogged) -> None:
        if self._showing():
            self.panels.commands.add(message.entry)

    def background(self, label: str, fn: Callable[[], Any], done: Callable | None = None,
                   quiet: bool = False) -> None:
        """Run an action in a daemon thread; its outcome comes back as ActionDone."""
        def work() -> None:
            kind, data, text = run_source(fn)
            self.post_message(ActionDone(label, kind, data, text, done, quiet))

        threading.Thread(target=work, name=f"action-{label}", daemon=True).start()

    async def on_action_done(self, message: ActionDone) -> None:
        if not self._showing():
            return
        if message.kind == OK:
            if not message.quiet and isinstance(message.data, str):
                self.log_command(message.data, "ok")
        elif message.kind == UNAVAILABLE:
            self.log_command(f"{message.label}: {message.text}", "info")
            self.notify(message.text or "", title=message.label, severity="warning")
        else:
            self.log_command(f"{message.label}: {message.text}", "error")
            self.notify(message.text or "", title=f"{message.label} failed", severity="error")
        if message.done is not None:
            # done(kind, data): data is the result, or the error text when it failed
            result = message.done(message.kind,
                                  message.data if message.kind == OK else message.text)
            if hasattr(result, "__await__"):
                await result

    # ------------------------------------------------------------------ stage actions
    def action_start_stage(self) -> None:
        row = self._selected()
        if row is None:
            return
        if actions.is_live(row):
            self.notify(f"{row_key(row)} is already {row['state']}", severity="warning")
            return
        self._start(row)

    def _start(self, row: dict) -> None:
        name, host = row["name"], row.get("host", "local")
        self.log_command(f"start {name} on {host}")
        if host == "local":
            fn = lambda: actions.start_local(self.root, name)  # noqa: E731
        else:
            host_info = self._host(host)
            fn = lambda: self.sources.start_remote(self.root, host_info, name)  # noqa: E731
        self.background(f"start {name}", fn, done=lambda kind, data: self.kick("stages"))

    def action_stop_stage(self) -> None:
        row = self._selected()
        if row is None:
            return
        if not actions.is_live(row):
            self.notify(f"{row_key(row)} is not running ({row.get('state')})", severity="warning")
            return
        self._stop(row)

    def _stop(self, row: dict) -> None:
        key, name, host = row_key(row), row["name"], row.get("host", "local")
        self.stopping.add(key)
        self._render_stages()
        if host == "local":
            fn = lambda: actions.stop_local(self.root, name)  # noqa: E731
        else:
            host_info = self._host(host)
            fn = lambda: self.sources.stop_remote(self.root, host_info, name)  # noqa: E731

        def done(kind, data):
            if kind != OK:
                self.stopping.discard(key)
            self.kick("stages")

        self.background(f"stop {key}", fn, done=done)

    def _host(self, name: str) -> dict:
        return next((h for h in self.hosts if h["name"] == name), {"name": name})

    def action_force_stop(self) -> None:
        row = self._selected()
        if row is None:
            return
        if row.get("host", "local") != "local":
            self.notify("signals reach local stages only; stop a worker with x", severity="warning")
            return
        if not actions.is_live(row) or not row.get("pid"):
            self.notify(f"{row_key(row)} is not running", severity="warning")
            return
        name, pid = row["name"], int(row["pid"])
        self.background("lock holders", lambda: self.sources.lock_holders_now(self.root),
                        done=lambda kind, holders: self._confirm_escalation(
                            name, pid, holders if kind == OK else []), quiet=True)

    def _confirm_escalation(self, name: str, pid: int, holders: list[dict]) -> None:
        grace = float(self.root.config.get("stage.term_grace_s"))
        is_writer = any(h["pid"] == pid and h["mode"] == "writer" for h in holders)
        shown = ", ".join(f"{h['mode']} {h['pid']}" for h in holders) or "nobody"
        self.log_command(f"force stop {name} (pid {pid}): DB lock holders: {shown}")

        def first(answer: bool | None) -> None:
            if not answer:
                self.log_command(f"force stop {name}: cancelled")
                return
            if not is_writer:
                self._run_ladder(name, pid)
                return
            self.push_screen(ConfirmScreen(
                f"pid {pid} HOLDS THE DB WRITE LOCK",
                f"{name} (pid {pid}) is inside a write transaction. SIGTERM lets it roll back "
                f"and stop; SIGKILL in the middle loses that transaction's work (SQLite rolls it "
                f"back). Send the signals anyway?", warning=True), second)

        def second(answer: bool | None) -> None:
            if not answer:
                self.log_command(f"force stop {name}: cancelled at the writer confirmation")
                return
            self._run_ladder(name, pid)

        self.push_screen(EscalateScreen(name, pid, holders, grace), first)

    def _run_ladder(self, name: str, pid: int) -> None:
        self.stopping.add(f"local/{name}")

        def ladder() -> str:
            stopped = actions.escalate(self.root, name, pid,
                                       say=lambda text: self.log_command(f"{name}: {text}"))
            return f"force stop {name}: {'pid %d is gone' % pid if stopped else 'STILL RUNNING'}"

        self.background(f"force stop {name}", ladder, done=lambda kind, data: self.kick("stages"))

    def action_stop_all(self) -> None:
        rows = actions.stop_all_order(self.all_rows())
        if not rows:
            self.notify("no stage is running")
            return
        listing = ", ".join(row_key(r) for r in rows)

        def answer(yes: bool | None) -> None:
            if not yes:
                return
            self.log_command(f"stop all: {listing}")
            for row in rows:
                self._stop(row)

        self.push_screen(ConfirmScreen("Stop all stages?",
                                       f"Kill files, in pipeline order: {listing}"), answer)

    def action_deploy(self) -> None:
        row = self._selected()
        if row is None:
            return
        host = row.get("host", "local")
        if host == "local":
            self.notify("deploy is for worker hosts: select a worker's row", severity="warning")
            return
        host_info = self._host(host)

        def answer(yes: bool | None) -> None:
            if not yes:
                self.log_command(f"deploy to {host}: not confirmed, nothing done")
                return
            self.log_command(f"deploy to {host}: git pull (confirmed with {DEPLOY_PHRASE})")
            self.background(f"deploy to {host}", lambda: self.sources.deploy(self.root, host_info))

        self.push_screen(TypedConfirmScreen(
            f"Deploy to {host}",
            f"Runs git pull in the project folder on {host_info.get('describe', host)}.",
            DEPLOY_PHRASE), answer)

    # ------------------------------------------------------------------ run and pauses
    def action_start_run(self) -> None:
        self.log_command("start the weekly run (pipeline)")
        self.background("start run", lambda: actions.start_local(self.root, "pipeline"),
                        done=lambda kind, data: self.kick("stages", "run"))

    def action_stop_run(self) -> None:
        row = self.row("local/pipeline")
        if row is None or not actions.is_live(row):
            self.notify("the weekly run is not running", severity="warning")
            return
        self._stop(row)

    def action_pause_all(self) -> None:
        self.log_command("pause all stages")
        self.background("pause all", lambda: actions.pause_all(self.root),
                        done=lambda kind, data: self.kick("stages", "run"))

    def action_resume_all(self) -> None:
        self.log_command("resume all stages")
        self.background("resume all", lambda: actions.resume_all(self.root),
                        done=lambda kind, data: self.kick("stages", "run"))

    # ------------------------------------------------------------------ view
    def action_log_search(self) -> None:
        self.panels.tabs.active = "dashboard"
        self.panels.logs.open_search()

    def action_refresh_now(self) -> None:
        self.kick()

    def action_toggle_refresh(self) -> None:
        self.refresh_paused = not self.refresh_paused
        if self.refresh_paused:
            for poller in self.pollers.values():
                if poller.timer is not None:
                    poller.timer.stop()
                    poller.timer = None
        else:
            self.kick()
        self._update_status_bar()

    def _set_refresh(self, seconds: float) -> None:
        self.refresh_s = seconds
        for poller in self.pollers.values():
            if poller.timer is not None:
                self._schedule(poller)
        self._update_status_bar()

    def action_refresh_faster(self) -> None:
        self._set_refresh(next_refresh(self.refresh_s, faster=True))

    def action_refresh_slower(self) -> None:
        self._set_refresh(next_refresh(self.refresh_s, faster=False))

    def action_show_tab(self, tab: str) -> None:
        self.panels.tabs.active = tab

    @on(TabbedContent.TabActivated)
    def _tab_shown(self, event: TabbedContent.TabActivated) -> None:
        """Focus follows the tab, so typed text never lands on the stage keys by mistake."""
        tab = event.pane.id if event.pane is not None else None
        if tab == "search":
            self.query_one("#search-input").focus()
        elif tab == "dashboard":
            self.panels.stages_table.focus()

    def action_help(self) -> None:
        self.push_screen(HelpScreen(self.keymap))

    # ------------------------------------------------------------------ search
    @on(SearchPane.Requested)
    def _search(self, event: SearchPane.Requested) -> None:
        query, k = event.query, self.settings.search_k
        self.log_command(f"search {query!r}")
        self.background("search", lambda: self._with_thumbnails(
            self.sources.search(self.root, query, k)), done=self._search_done(f"results for {query!r}"),
            quiet=True)

    @on(ListingCard.Selected)
    def _more_like_this(self, event: ListingCard.Selected) -> None:
        listing_id = event.result.get("listing_id")
        k = self.settings.search_k
        self.panels.search.show_message(f"more like listing {listing_id}...")
        self.background("more like this", lambda: self._with_thumbnails(
            self.sources.more_like_this(self.root, listing_id, k)),
            done=self._search_done(f"more like listing {listing_id}"), quiet=True)

    def _with_thumbnails(self, answer: tuple[list[dict], list[str]]) -> tuple[list, list[str]]:
        results, warnings = answer
        out = []
        for result in results:
            thumb = None
            if self.image_class is not None:
                try:
                    thumb = self.sources.load_thumbnail(self.root, result.get("primary_image"))
                except Exception:  # a missing or unreadable image shows as "no image"
                    thumb = None
            out.append((result, thumb))
        return out, warnings

    def _search_done(self, title: str) -> Callable:
        async def done(kind, data) -> None:
            pane = self.panels.search
            if kind == OK:
                results, warnings = data
                await pane.show_results(title, results, warnings)
            else:
                pane.show_message(data)
        return done
