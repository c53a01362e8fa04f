"""Notifications: a running stage that crashes, a source that stops answering after it
worked, and a failed action each raise one notification (not one per refresh)."""
from __future__ import annotations

import asyncio

import pytest

from console.app import ConsoleApp
from console.polling import ERROR, MESSAGE, OK
from tests.console_support import fixed_clock, load_fixture, make_root, wait_until

pytestmark = pytest.mark.timeout(60)


def test_crash_and_failing_sources_notify_once(tmp_path):
    root = make_root(tmp_path / "root")
    app = ConsoleApp(root, clock=fixed_clock, poll=False, image_class=None)
    said: list[tuple[str, str]] = []
    app.notify = lambda message, title="", severity="information", **kw: said.append((severity, message))

    async def scenario() -> None:
        async with app.run_test(size=(140, 45)) as pilot:
            snap = load_fixture("status_busy.json")
            app.feed_status(snap)
            for row in snap["stages"]:
                if row["name"] == "sync":
                    row.update(state="crashed", pid=None)
            app.feed_status(snap)
            app.feed_status(snap)  # still crashed: no second notice
            assert said == [("error", "local/sync is crashed")]
            said.clear()
            # a source that never worked (no DB yet) is shown in place, not notified
            app._track_problem("db", MESSAGE, "no DB yet at x")
            assert said == []
            app._track_problem("locks", OK, None)
            app._track_problem("locks", MESSAGE, "DB locked")
            app._track_problem("locks", MESSAGE, "DB locked")
            app._track_problem("stages", ERROR, "KeyError: 'x'")
            assert said == [("warning", "locks: DB locked"), ("error", "stages: KeyError: 'x'")]
            said.clear()
            # an action that fails says why
            app.background("start sync", lambda: (_ for _ in ()).throw(RuntimeError("boom")))
            await wait_until(pilot, lambda: said, what="the failure notice")
            assert said == [("error", "RuntimeError: boom")]

    asyncio.run(scenario())
