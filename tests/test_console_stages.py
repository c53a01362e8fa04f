"""The console starts and stops a real stage from the keyboard; quitting stops nothing; the
force stop shows the lock holders and asks twice for the writer; stop all is in order."""
from __future__ import annotations

import asyncio

import pytest

from console.app import ConsoleApp
from console.screens.confirm_screen import ConfirmScreen
from console.screens.escalate_screen import EscalateScreen
from console.widgets.command_log_panel import CommandLogPanel
from console.widgets.stages_panel import StagesTable
from pipeline.core.procs import pid_alive
from pipeline.core.stage_control import start_detached
from pipeline.core.stage_observe import stage_status
from tests.console_support import (label_text, make_root, run_selftest_once, seed_images,
                                   stop_if_running, wait_until)

pytestmark = pytest.mark.timeout(120)
ROW = "local/selftest"


async def select_row(pilot, app, key: str) -> StagesTable:
    table = app.query_one(StagesTable)
    await wait_until(pilot, lambda: key in table.keys(), what=f"row {key}")
    table.focus()
    await pilot.press("ctrl+home", *["down"] * table.keys().index(key))
    assert table.selected_key() == key
    return table


def record_states(table: StagesTable, key: str) -> list[str]:
    """Every state label the table shows for a row from now on."""
    shown = [table.cell_text(key, "state")]
    sync = table.sync

    def recording_sync(rows):
        sync(rows)
        text = table.cell_text(key, "state")
        if text != shown[-1]:
            shown.append(text)

    table.sync = recording_sync
    return shown


def queue_depth(app, state: str) -> str:
    return label_text(app.query_one(f"#queue-{state} .queue-depth"))


def test_start_quit_and_stop_from_keys(tmp_path):
    root = make_root(tmp_path / "root")
    seed_images(root, 40)
    run_selftest_once(root)  # moves one image; the stage now has a row

    async def start_then_quit() -> int:
        app = ConsoleApp(root)
        async with app.run_test(size=(140, 45)) as pilot:
            table = await select_row(pilot, app, ROW)
            await wait_until(pilot, lambda: queue_depth(app, "discovered") == "39", what="depths")
            await pilot.press("s")
            await wait_until(pilot, lambda: table.cell_text(ROW, "state") == "running",
                             what="running after s")
            # the queues move as the stage moves rows
            await wait_until(pilot, lambda: int(queue_depth(app, "downloaded")) >= 3,
                             what="downloaded growing")
            assert int(queue_depth(app, "discovered")) <= 37
            pid = int(table.cell_text(ROW, "pid"))
            log = "\n".join(e.text for e in app.command_log.entries)
            assert "start selftest: running" in log
            assert "start selftest: running" in " ".join(app.query_one(CommandLogPanel).visible_text())
        return pid

    pid = asyncio.run(start_then_quit())
    try:
        # quitting the console stopped nothing
        assert pid_alive(pid)
        assert stage_status(root, "selftest")["state"] == "running"

        async def stop() -> None:
            app = ConsoleApp(root)
            async with app.run_test(size=(140, 45)) as pilot:
                table = await select_row(pilot, app, ROW)
                await wait_until(pilot, lambda: table.cell_text(ROW, "state") == "running")
                shown = record_states(table, ROW)
                await pilot.press("x")
                await wait_until(pilot, lambda: table.cell_text(ROW, "state") == "stopped",
                                 what="stopped after x")
                # "stopping..." was shown from the key press until the stage exited
                assert shown[0] == "running" and "stopping..." in shown
                assert shown.index("stopping...") < shown.index("stopped")
                assert table.cell_text(ROW, "last_exit") == "0 stopped"
                log = "\n".join(e.text for e in app.command_log.entries)
                assert "KILL_SELFTEST written" in log
                assert "local/selftest exited: 0 stopped" in log

        asyncio.run(stop())
        assert not pid_alive(pid)
        assert not root.file("KILL_SELFTEST").exists()
        assert "KILL_SELFTEST written" in (root.logs_dir / "console_commands.log").read_text()
    finally:
        stop_if_running(root)


def test_force_stop_shows_holders_and_asks_twice_for_the_writer(tmp_path):
    root = make_root(tmp_path / "root", stage={"term_grace_s": 0.5})
    seed_images(root, 5)
    start_detached(root, "selftest", ["--ignore-kill", "--work-s", "0.2"])
    pid = stage_status(root, "selftest")["pid"]
    app = ConsoleApp(root)
    # The lock check says this stage is the writer (a real writer is tested in the locks test).
    app.sources.lock_holders_now = lambda r: [
        {"pid": pid, "mode": "writer", "name": "python3", "cmdline": "imageselector run selftest"},
        {"pid": 1, "mode": "open", "name": "init", "cmdline": "init"}]

    async def scenario() -> None:
        async with app.run_test(size=(140, 45)) as pilot:
            await select_row(pilot, app, ROW)
            # first try: confirm the ladder, then decline at the writer's second confirmation
            await pilot.press("F")
            await wait_until(pilot, lambda: isinstance(app.screen, EscalateScreen), what="holders")
            assert app.screen.pid == pid and [h["pid"] for h in app.screen.holders] == [pid, 1]
            await pilot.press("y")
            await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="2nd ask")
            assert "WRITE LOCK" in app.screen.title_text
            await pilot.press("n")
            await pilot.pause(1.0)
            assert pid_alive(pid)
            # second try: both confirmations; SIGTERM is ignored, so SIGKILL follows
            await pilot.press("F")
            await wait_until(pilot, lambda: isinstance(app.screen, EscalateScreen))
            await pilot.press("y")
            await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            await pilot.press("y")
            table = app.query_one(StagesTable)
            await wait_until(pilot, lambda: table.cell_text(ROW, "state") == "crashed",
                             what="killed")
            log = "\n".join(e.text for e in app.command_log.entries)
            assert "cancelled at the writer confirmation" in log
            assert f"sending SIGTERM to pid {pid}" in log
            assert f"sending SIGKILL to pid {pid}" in log

    try:
        asyncio.run(scenario())
        assert not pid_alive(pid)
    finally:
        stop_if_running(root)


def test_stop_all_asks_then_stops_in_pipeline_order(tmp_path):
    root = make_root(tmp_path / "root")
    seed_images(root, 5)
    start_detached(root, "selftest", ["--work-s", "0.2"])
    app = ConsoleApp(root)

    async def scenario() -> None:
        async with app.run_test(size=(140, 45)) as pilot:
            table = app.query_one(StagesTable)
            await wait_until(pilot, lambda: table.cell_text(ROW, "state") == "running")
            await pilot.press("A")
            await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            assert "local/selftest" in app.screen.body
            await pilot.press("y")
            await wait_until(pilot, lambda: table.cell_text(ROW, "state") == "stopped",
                             what="stopped by stop all")

    try:
        asyncio.run(scenario())
    finally:
        stop_if_running(root)


def test_stop_all_order_follows_the_pipeline():
    from console.actions import stop_all_order

    rows = [{"name": n, "host": h, "state": s} for n, h, s in [
        ("selftest", "local", "running"), ("tar", "local", "running"), ("worker", "mbp", "running"),
        ("sync", "local", "running"), ("download", "local", "stopped"),
        ("orchestrate", "local", "paused"), ("worker", "local", "stale")]]
    order = [(r["host"], r["name"]) for r in stop_all_order(rows)]
    assert order == [("local", "sync"), ("local", "orchestrate"), ("local", "tar"),
                     ("local", "worker"), ("local", "selftest"), ("mbp", "worker")]


def test_refusals_are_logged_and_the_log_wraps_at_the_panel_width(tmp_path):
    root = make_root(tmp_path / "root")
    run_selftest_once(root)  # the stage has a row, stopped

    async def scenario() -> tuple[list[str], list[str], int]:
        app = ConsoleApp(root)
        async with app.run_test(size=(160, 48)) as pilot:
            await select_row(pilot, app, ROW)
            await pilot.press("x")                # stop on a stopped stage: refused
            await pilot.pause()
            logged = [e.text for e in app.command_log.entries]
            panel = app.query_one(CommandLogPanel)
            await wait_until(pilot, lambda: any("refused" in t for t in panel.visible_text()),
                             what="the refusal in the panel")
            await pilot.resize_terminal(100, 40)   # narrower: the entry wraps
            await pilot.pause()
            await pilot.resize_terminal(160, 48)   # wider again: one line again
            await pilot.pause()
            width = panel.query_one("#cmdlog-view").scrollable_content_region.width
            return logged, panel.visible_text(), width

    logged, shown, width = asyncio.run(scenario())
    assert any(t.startswith("refused: local/selftest is not running") for t in logged)
    assert width > 40
    line = next(t for t in shown if "refused" in t)
    # one line at the panel's width, not wrapped at RichLog's 20-column minimum
    assert "local/selftest is not running" in line
