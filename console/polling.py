"""Polling: each source (stages, DB, locks, each worker host, the log, the run) is fetched in
its own daemon thread; the result comes back to the UI as a PollResult message, and the
next poll is scheduled only then (the dolphie pattern), so polls of one source never
overlap and a slow source never delays another. PollScheduler is the app's side of it:
adding and removing pollers, the refresh grid, batching answers, the watchdog.

Why not Textual's @work(thread=True): thread workers run on the event loop's default
executor, which has few threads (cpu + 4) and is joined when the app exits, so one SSH
call that hangs would starve the other polls and stop the console from quitting.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable

from textual.message import Message

from console.adapters import NotAvailable, SourceMessage
from console.settings import next_refresh
from pipeline.core.errors import UserError
from remote.errors import RemoteError

OK, MESSAGE, UNAVAILABLE, ERROR = "ok", "message", "unavailable", "error"
# Poll answers arriving within this long of each other are applied in one batch (one repaint).
RESULT_BATCH_S = 0.03


class PollResult(Message):
    """One finished poll. kind: ok, message (expected condition), unavailable, error."""

    def __init__(self, source: str, kind: str, data: Any, text: str | None, took_s: float,
                 generation: int):
        super().__init__()
        self.source = source
        self.kind = kind
        self.data = data
        self.text = text
        self.took_s = took_s
        self.generation = generation


def run_source(fetch: Callable[[], Any]) -> tuple[str, Any, str | None]:
    """Call a source and classify the outcome: every error of every source is handled here."""
    try:
        return OK, fetch(), None
    except NotAvailable as exc:
        return UNAVAILABLE, None, str(exc)
    except (SourceMessage, UserError, RemoteError) as exc:  # clear one-line messages
        return MESSAGE, None, str(exc)
    except Exception as exc:  # a failing source shows its error in place; never crashes the UI
        return ERROR, None, f"{type(exc).__name__}: {exc}"


class Poller:
    """One source: at most one poll in flight; the next one is scheduled by the app."""

    def __init__(self, name: str, fetch: Callable[[], Any], timeout_s: float,
                 every: float = 1.0):
        self.name = name
        self.fetch = fetch
        self.timeout_s = timeout_s
        self.every = every          # multiple of the refresh interval
        self.in_flight_since: float | None = None
        self.timer = None           # the Textual timer of the next poll
        self.generation = 0         # bumped when the source is replaced (e.g. another log)
        self.last_took_s: float | None = None
        self.last_kind: str | None = None
        self.stopped = False

    def start(self, post: Callable[[PollResult], Any]) -> bool:
        """Start a poll in a daemon thread unless one is in flight. False if one was."""
        if self.in_flight_since is not None or self.stopped:
            return False
        self.in_flight_since = time.monotonic()
        generation = self.generation
        fetch = self.fetch

        def work() -> None:
            t0 = time.perf_counter()
            kind, data, text = run_source(fetch)
            post(PollResult(self.name, kind, data, text, time.perf_counter() - t0, generation))

        threading.Thread(target=work, name=f"poll-{self.name}", daemon=True).start()
        return True

    def finished(self, result: PollResult) -> None:
        self.in_flight_since = None
        self.last_took_s = result.took_s
        self.last_kind = result.kind

    def overdue_s(self, now_monotonic: float) -> float | None:
        """How long the poll in flight has gone past its timeout (None if not)."""
        if self.in_flight_since is None:
            return None
        waited = now_monotonic - self.in_flight_since
        return waited if waited > self.timeout_s else None


class PollScheduler:
    """The app's poll scheduling (mixed into ConsoleApp): one Poller per source, each next
    poll set on the common refresh grid when the last answer arrives, answers applied in
    batches, and a watchdog for polls that do not answer. Uses the app's settings,
    refresh_s, refresh_paused, poll_enabled, _showing(), _apply() and the panels."""

    def _init_polling(self) -> None:
        self.pollers: dict[str, Poller] = {}
        self.problems: dict[str, str] = {}   # source -> what is wrong with it now
        self._grid_origin = time.monotonic()
        self._pending_results: list[PollResult] = []
        self._worked: set[str] = set()             # sources that have answered well once
        self._flush_timer = None

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
