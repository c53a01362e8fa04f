"""Live panels against a real root: the write-lock holder shows as the highlighted writer,
the console itself never holds a write lock, the refresh pauses, the log search keeps
context lines, and a corrupt DB is a message in place while the rest keeps working."""
from __future__ import annotations

import asyncio
import os

import pytest

from console.app import ConsoleApp
from console.widgets.locks_panel import LocksTable
from console.widgets.logs_panel import LogsPanel
from console.widgets.stages_panel import StagesTable
from console.widgets.status_bar import StatusBar
from pipeline.core.locks import holders_from_proc_locks
from tests.console_support import (WriteLockHolder, label_text, make_root, run_selftest_once,
                                   seed_images, wait_until)

pytestmark = pytest.mark.timeout(90)


def depth(app, state: str) -> str:
    return label_text(app.query_one(f"#queue-{state} .queue-depth"))


def test_writer_shows_highlighted_and_console_never_writes(tmp_path):
    root = make_root(tmp_path / "root")
    seed_images(root, 3)
    app = ConsoleApp(root)
    me = os.getpid()
    my_modes: set[str] = set()

    async def scenario() -> None:
        async with app.run_test(size=(140, 45)) as pilot:
            table = app.query_one(LocksTable)
            with WriteLockHolder(root.db_path) as holder:
                key = f"{holder.pid}:writer"
                await wait_until(pilot, lambda: key in table.keys(), what="the writer row")
                assert table.cell_class(key, "mode") == "locks--writer"
                assert table.cell_text(key, "mode") == "WRITER"
                # the highlight is a real style from console.tcss, not an empty one
                assert table.get_component_rich_style("locks--writer").bold
                for _ in range(40):  # the console polls meanwhile; it never takes a lock
                    my_modes.update(m for pid, m in holders_from_proc_locks(root.db_path).items()
                                    if pid == me)
                    await pilot.pause(0.05)
            await wait_until(pilot, lambda: key not in table.keys(), what="the writer gone")

    asyncio.run(scenario())
    assert "writer" not in my_modes


def test_refresh_pause_and_queue_depths(tmp_path):
    root = make_root(tmp_path / "root")
    seed_images(root, 5)
    app = ConsoleApp(root)

    async def scenario() -> None:
        async with app.run_test(size=(140, 45)) as pilot:
            await wait_until(pilot, lambda: depth(app, "discovered") == "5")
            await pilot.press("space")
            assert "PAUSED" in str(app.query_one(StatusBar).content)
            # a poll in flight when paused still lands: wait until none is left
            await wait_until(pilot, lambda: all(p.in_flight_since is None
                                                for p in app.pollers.values())
                             and not app._pending_results, what="polls settled")
            await pilot.pause(0.1)
            seed_images(root, 7, start=100)
            await pilot.pause(1.0)  # five refresh intervals
            assert depth(app, "discovered") == "5"
            await pilot.press("space")
            await wait_until(pilot, lambda: depth(app, "discovered") == "12", what="resumed")
            # + and - change the interval
            await pilot.press("minus")
            assert app.refresh_s == 0.25
            await pilot.press("plus", "plus")
            assert app.refresh_s == 0.25  # the shortest step

    asyncio.run(scenario())


def test_log_search_keeps_context(tmp_path):
    root = make_root(tmp_path / "root", console={"log_context": 1})
    run_selftest_once(root)
    with open(root.log_path("selftest"), "a") as fh:
        for i in range(20):
            fh.write(f"line {i} {'NEEDLE' if i in (5, 15) else 'hay'}\n")
    app = ConsoleApp(root)

    async def scenario() -> None:
        async with app.run_test(size=(140, 45)) as pilot:
            table = app.query_one(StagesTable)
            await wait_until(pilot, lambda: "local/selftest" in table.keys())
            table.focus()
            await pilot.press("ctrl+end")
            logs = app.query_one(LogsPanel)
            await wait_until(pilot, lambda: any("line 19" in t for t in logs.visible_text()),
                             what="the tail")
            logs.view.focus()                 # / searches the log when the log has focus
            await pilot.press("slash")
            await pilot.press(*"needle", "enter")
            await wait_until(pilot, lambda: any("NEEDLE" in t for t in logs.visible_text()))
            shown = [t.strip() for t in logs.visible_text()]
            assert [t.split(None, 1)[1] for t in shown if t != "--"] == [
                "line 4 hay", "line 5 NEEDLE", "line 6 hay",
                "line 14 hay", "line 15 NEEDLE", "line 16 hay"]
            assert "--" in shown  # between the two groups
            await pilot.press("escape")
            await wait_until(pilot, lambda: any("line 10 hay" in t for t in logs.visible_text()),
                             what="back to the tail")

    asyncio.run(scenario())


def test_corrupt_db_is_a_message_and_stages_still_refresh(tmp_path):
    root = make_root(tmp_path / "root")
    root.db_path.write_bytes(b"this is not a database" * 100)
    app = ConsoleApp(root)

    async def scenario() -> None:
        async with app.run_test(size=(140, 45)) as pilot:
            message = app.query_one("#queues-message")
            await wait_until(pilot, lambda: "corrupt or not an SQLite database" in
                             label_text(message), what="the DB message")
            assert message.display
            table = app.query_one(StagesTable)
            await wait_until(pilot, lambda: "local/sync" in table.keys())
            assert "db" in app.problems

    asyncio.run(scenario())
    assert root.db_path.read_bytes().startswith(b"this is not a database")  # untouched


def test_status_bar_says_not_safe_in_red_until_the_root_is_safe(tmp_path):
    root = make_root(tmp_path / "root")   # production, no backup target, alerts off
    unsafe_text, unsafe_class, safe_text = [], [], []

    async def look(app, into_text, into_class=None) -> None:
        async with app.run_test(size=(160, 48)) as pilot:
            await pilot.pause(0.1)
            bar = app.query_one(StatusBar)
            into_text.append(label_text(bar))
            if into_class is not None:
                into_class.append(bar.has_class("-unsafe"))

    asyncio.run(look(ConsoleApp(root), unsafe_text, unsafe_class))
    assert "NOT SAFE: not backed up, alerts off" in unsafe_text[0] and unsafe_class == [True]
    with open(root.config_path, "a") as fh:
        fh.write(f'[backup.targets.usb]\nkind = "folder"\npath = "{tmp_path / "bk"}"\n'
                 '[alerts]\nenabled = true\nsmtp_host = "127.0.0.1"\nto = ["op@example.com"]\n')
    from pipeline.core.root import Root

    asyncio.run(look(ConsoleApp(Root(root.path)), safe_text))
    assert "NOT SAFE" not in safe_text[0]


def test_log_title_and_lines_change_together(tmp_path):
    root = make_root(tmp_path / "root")
    run_selftest_once(root)
    with open(root.log_path("selftest"), "a") as fh:
        fh.write("SELFTEST-ONLY line\n")
    import threading

    from console.adapters import Sources, local_log_tail

    slow, armed = threading.Event(), threading.Event()

    def log_tail(path, lines):
        if armed.is_set() and "selftest" not in str(path):
            slow.wait(20)  # another stage's log is slow to read (as over SSH)
        return local_log_tail(path, lines)

    app = ConsoleApp(root, sources=Sources(local_log_tail=log_tail))
    seen = {}

    async def scenario() -> None:
        async with app.run_test(size=(140, 45)) as pilot:
            table = app.query_one(StagesTable)
            await wait_until(pilot, lambda: "local/selftest" in table.keys())
            logs = app.query_one(LogsPanel)
            table.focus()
            await pilot.press("ctrl+end")     # the last row: selftest
            await wait_until(pilot, lambda: any("SELFTEST-ONLY" in t for t in logs.visible_text()),
                             what="the selftest log")
            await pilot.press("space")        # refresh paused: only the selection change acts
            armed.set()
            await pilot.press("up")
            await pilot.pause()
            seen["title"] = logs.title_text
            seen["lines"] = logs.visible_text()
            slow.set()

    asyncio.run(scenario())
    assert seen["title"].startswith("Log: local/") and seen["title"] != "Log: local/selftest"
    assert not any("SELFTEST-ONLY" in t for t in seen["lines"])
