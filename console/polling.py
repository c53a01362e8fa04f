"""Polling: each source (stages, DB, locks, each worker host, the log, the run) is fetched in
its own daemon thread; the result comes back to the UI as a PollResult message, and the
next poll is scheduled only then (the dolphie pattern), so polls of one source never
overlap and a slow source never delays another.

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
from pipeline.core.errors import UserError
from remote.errors import RemoteError

OK, MESSAGE, UNAVAILABLE, ERROR = "ok", "message", "unavailable", "error"


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
