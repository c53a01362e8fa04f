"""Focus and keys as a first-time operator meets them: Escape leaves every text box, 1 2 3 and ?
work from every tab, stage keys act only on the visible highlighted row, each tab's footer
shows that tab's keys, keys typed in one fast burst land in order, and the keys k9s, lazydocker
and htop users expect: filter and sort of the tables, the log's follow, match, wrap and full
screen keys, pause, resume and restart of one stage."""
from __future__ import annotations

import asyncio

import pytest
from textual import events
from textual.widgets import Input
from textual.widgets._footer import FooterKey

from console.app import ConsoleApp
from console.commands import COMMANDS, key_clashes
from console.screens.help_screen import HelpScreen, help_rows
from console.settings import ConsoleSettings
from console.table_view import sort_key
from console.widgets.locks_panel import LocksTable
from console.widgets.queues_panel import QueueRow, QueuesPanel
from console.widgets.stages_panel import StagesTable
from console.widgets.table_filter import TableFilter
from pipeline.core.errors import UserError
from pipeline.core.stage_control import start_detached
from pipeline.core.stage_observe import stage_status
from tests.console_support import (fixed_clock, load_fixture, make_root, stop_if_running,
                                   wait_until)

pytestmark = pytest.mark.timeout(120)
SIZE = (160, 48)


def recorded_app(tmp_path) -> ConsoleApp:
    """The console without polling, showing a recorded busy status (stages on two hosts)."""
    root = make_root(tmp_path / "root")
    app = ConsoleApp(root, clock=fixed_clock, poll=False, image_class=None)
    return app


async def show_recorded(app, pilot) -> None:
    for sample in load_fixture("queue_history.json"):
        app.history.add(sample["at"], sample["queues"])
    app.hosts = [{"name": name} for name in load_fixture("hosts_rows.json")]
    app.host_rows = {k: [{**r, "host": k} for r in v]
                     for k, v in load_fixture("hosts_rows.json").items()}
    app.feed_status(load_fixture("status_busy.json"))
    app.panels.logs.show_lines(load_fixture("download_log.json"))
    await pilot.pause()


def footer_actions(app) -> set[str]:
    return {key.action for key in app.query(FooterKey)}


def logged(app) -> str:
    return "\n".join(e.text for e in app.command_log.entries)


# ---------------------------------------------------------------------- focus and keys
def test_escape_leaves_every_text_box_and_tab_keys_work_from_every_tab(tmp_path):
    app = recorded_app(tmp_path)

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await show_recorded(app, pilot)
            tabs = app.panels.tabs
            for key, tab in (("2", "run"), ("3", "search"), ("1", "dashboard"), ("3", "search"),
                             ("2", "run"), ("1", "dashboard")):
                if isinstance(app.focused, Input):
                    await pilot.press("escape")     # the search tab's box has the focus
                    assert not isinstance(app.focused, Input)
                await pilot.press("question_mark")
                assert isinstance(app.screen, HelpScreen), f"? on the {tabs.active} tab"
                await pilot.press("escape")
                await pilot.press(key)
                assert tabs.active == tab
            # the log search box
            app.panels.logs.view.focus()
            await pilot.press("slash", *"503")
            field = app.query_one("#log-search", Input)
            assert app.focused is field and field.value == "503"
            await pilot.press("escape")
            assert not field.display and app.panels.logs.needle == ""
            assert app.focused is app.panels.logs.view
            # a table's filter box
            app.panels.stages_table.focus()
            await pilot.press("slash", *"zzz")
            assert isinstance(app.focused, TableFilter)
            await pilot.press("escape")
            assert app.focused is app.panels.stages_table
            assert app.panels.stages_table.view.filter == ""
            # the command palette
            await pilot.press("ctrl+p", *"stop")
            await pilot.press("escape")
            await pilot.pause()
            assert not isinstance(app.focused, Input)
            await pilot.press("2")
            assert tabs.active == "run"
            await pilot.press("3", *"oak")
            await pilot.press("escape", "2")
            assert tabs.active == "run"
            assert app.query_one("#search-input", Input).value == "oak"

    asyncio.run(scenario())


def test_stage_keys_act_only_on_the_visible_highlighted_row(tmp_path):
    app = recorded_app(tmp_path)

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await show_recorded(app, pilot)
            table = app.panels.stages_table
            await pilot.press("ctrl+home")
            assert table.selected_key() == "local/sync"       # running in the recording
            await pilot.press("2", "s", "x", "p")              # the Run tab: no stage row here
            assert "sync" not in logged(app)
            await pilot.press("3", "escape", "s", "x")
            assert "sync" not in logged(app)
            await pilot.press("1", "s")                        # the Dashboard: it acts (refused:
            assert "refused: local/sync is already running" in logged(app)   # it is running)
            # behind a full-screen log the table is not on screen
            app.panels.logs.view.focus()
            await pilot.press("z")
            assert app.screen.maximized is app.panels.logs
            await pilot.press("x")
            assert "stop" not in logged(app)
            await pilot.press("escape")
            assert app.screen.maximized is None

    asyncio.run(scenario())


def test_unfocused_stages_table_shows_its_row_and_focused_panel_has_a_bright_border(tmp_path):
    app = recorded_app(tmp_path)

    def row_background(table, row: int):
        strip = table.render_line(1 + row)    # below the header
        return {seg.style.bgcolor for seg in strip if seg.style and seg.text.strip()}

    def row_bold(table, row: int) -> bool:
        return all(seg.style.bold for seg in table.render_line(1 + row) if seg.text.strip())

    def border_colour(panel):
        return panel.styles.border_top[1]

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await show_recorded(app, pilot)
            table = app.panels.stages_table
            await pilot.press("ctrl+home", "down")
            locks = app.panels.locks
            unfocused_locks = border_colour(locks)
            app.panels.locks.table.focus()
            await pilot.pause()
            assert app.focused is locks.table
            assert row_background(table, 1) != row_background(table, 2)   # still highlighted
            assert row_background(table, 1) != row_background(table, 0)
            assert row_bold(table, 1) and not row_bold(table, 2)   # seen in 16 colours too
            assert border_colour(locks) != unfocused_locks
            assert border_colour(locks) != border_colour(app.panels.stages)

    asyncio.run(scenario())


def test_each_tabs_footer_shows_its_keys_and_help_lists_navigation(tmp_path):
    app = recorded_app(tmp_path)

    async def scenario() -> None:
        async with app.run_test(size=(200, 48)) as pilot:
            await show_recorded(app, pilot)
            dashboard = footer_actions(app)
            assert {"start_stage", "stop_stage", "filter_table"} <= dashboard
            assert "start_run" not in dashboard and "log_follow" not in dashboard
            await pilot.press("2")
            await pilot.pause()
            run = footer_actions(app)
            assert {"start_run", "pause_all"} <= run
            assert not run & {"start_stage", "stop_stage", "filter_table", "log_search"}
            await pilot.press("3")
            await pilot.pause()
            # the query box takes printable keys: its footer says what Enter and Escape do
            assert {"submit", "search_cancel"} <= footer_actions(app)
            await pilot.press("escape")
            await pilot.pause()
            search = footer_actions(app)
            assert not search & {"start_stage", "start_run", "log_search", "filter_table"}
            assert "help" in search
            await pilot.press("1")
            app.panels.logs.view.focus()
            await pilot.pause()
            log = footer_actions(app)
            assert {"log_search", "log_follow", "log_next_match", "log_wrap"} <= log
            assert "filter_table" not in log
            await pilot.press("question_mark")
            text = help_text(app.screen)
            for shown in ("tab", "shift+tab", "escape", "enter"):
                assert any(r[0] == "Navigation" and shown in r[1].lower()
                           for r in help_rows(app.keymap, lambda k: k)), shown
            assert "Navigation" in text and "Next panel" in text

    asyncio.run(scenario())


def help_text(screen) -> str:
    import io

    from rich.console import Console

    console = Console(width=200, file=io.StringIO(), record=True)
    console.print(screen.query_one("#help-table").content)
    return console.export_text()


def test_no_two_commands_share_a_key_where_both_act(tmp_path):
    assert key_clashes({}) == []
    ids = {c.id for c in COMMANDS}
    assert {"pause_stage", "resume_stage", "restart_stage", "filter_table", "sort_table",
            "log_next", "log_previous", "log_follow", "log_wrap", "log_full_screen"} <= ids
    clash = make_root(tmp_path / "clash", console={"keymap": {"stop": "f"}})
    with pytest.raises(UserError, match="stop and log_follow both use f"):
        ConsoleSettings.from_config(clash.config)
    # the same key where the two never both act is fine (like / on a table and on the log)
    apart = make_root(tmp_path / "apart", console={"keymap": {"start_run": "s"}})
    assert ConsoleSettings.from_config(apart.config).keymap == {"start_run": "s"}


# ---------------------------------------------------------------------- key bursts
def burst(app, keys: list[str]) -> None:
    """Keys as a terminal sends a fast burst: all queued before the app handles the first."""
    for key in keys:
        character = key if len(key) == 1 else None
        app.post_message(events.Key(key, character))


BURST = list("hello") + ["backspace"] * 10 + list("world")


@pytest.mark.parametrize("box", ["search", "log search", "table filter", "palette"])
def test_keys_in_one_fast_burst_are_applied_in_order(tmp_path, box):
    app = recorded_app(tmp_path)

    async def scenario() -> str:
        async with app.run_test(size=SIZE) as pilot:
            await show_recorded(app, pilot)
            if box == "search":
                await pilot.press("3")
            elif box == "log search":
                app.panels.logs.view.focus()
                await pilot.press("slash")
            elif box == "table filter":
                app.panels.stages_table.focus()
                await pilot.press("slash")
            else:
                await pilot.press("ctrl+p")
                await wait_until(pilot, lambda: isinstance(app.focused, Input), what="palette")
            field = app.focused
            assert isinstance(field, Input)
            burst(app, BURST)
            await pilot.pause(0.3)
            await wait_until(pilot, lambda: app.focused is field)
            return field.value

    assert asyncio.run(scenario()) == "world"


def test_keys_right_after_a_tab_key_go_to_that_tab(tmp_path):
    """3 then typing in one burst: the letters land in the search box (the focus moves with
    the key, not later); Escape, 1, o in one burst: the stages table gets the sort."""
    app = recorded_app(tmp_path)

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await show_recorded(app, pilot)
            burst(app, ["3", *"oak"])
            await pilot.pause(0.3)
            assert app.query_one("#search-input", Input).value == "oak"
            burst(app, ["escape", "1", "o"])
            await pilot.pause(0.3)
            assert app.focused is app.panels.stages_table
            assert app.panels.stages_table.view.sort_column == "host"

    asyncio.run(scenario())


# ---------------------------------------------------------------------- filter and sort
def test_filter_and_sort_stages_locks_and_queues(tmp_path):
    app = recorded_app(tmp_path)

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await show_recorded(app, pilot)
            table = app.panels.stages_table
            everything = table.keys()
            hosts = {k.split("/")[0] for k in everything}
            assert len(hosts) >= 2
            remote = sorted(hosts - {"local"})[0]
            table.focus()
            cells = {k: " ".join(table.cell_text(k, c) or "" for c, *_ in table.COLUMNS)
                     for k in everything}
            await pilot.press("slash", *remote)

            def matching() -> bool:    # every row with the text in a cell, no other row
                return table.keys() == [k for k in everything if remote in cells[k]]

            assert f"{remote}/worker" in table.keys() and len(table.keys()) < len(everything)
            assert matching()
            await pilot.press("enter")
            assert app.focused is table
            assert f"filter: {remote}" in app.panels.stages.border_subtitle
            # a refresh keeps the filter
            app.feed_status(load_fixture("status_busy.json"))
            await pilot.pause()
            assert f"{remote}/worker" in table.keys() and matching()
            await pilot.press("escape")
            assert table.keys() == everything and app.panels.stages.border_subtitle == ""
            # o: sort by the next column (host, then stage...), O reverses
            await pilot.press("o", "o")
            stages = [table.cell_text(k, "stage") for k in table.keys()]
            assert stages == sorted(stages, key=sort_key) and stages != [
                table.cell_text(k, "stage") for k in everything]
            assert "sort: stage ▲" in app.panels.stages.border_subtitle
            await pilot.press("O")
            assert [table.cell_text(k, "stage") for k in table.keys()] == \
                sorted(stages, key=sort_key, reverse=True)
            # the DB locks table
            locks = app.query_one(LocksTable)
            locks.focus()
            writer = next(k for k in locks.keys() if k.endswith(":writer"))
            await pilot.press("slash", *"writer", "enter")
            assert locks.keys() == [writer]
            # the queues panel: filter hides rows, sort by images orders them
            queues = app.query_one(QueuesPanel)
            queues.focus()
            await pilot.press("slash", *"down", "enter")
            shown = [r.state for r in queues.query(QueueRow) if r.display]
            assert shown == ["downloaded"]
            await pilot.press("slash", "escape")
            await pilot.press("o", "o")        # queue, then images
            rows = [r for r in queues.query(QueueRow) if r.display]
            depths = [sort_key(str(r.query_one(".queue-depth").content)) for r in rows]
            assert len(rows) > 2 and depths == sorted(depths)

    asyncio.run(scenario())


def test_sort_key_orders_counts_durations_and_rates_by_value():
    assert sort_key("1,200") > sort_key("950")
    assert sort_key("5m") > sort_key("59s") and sort_key("3.2h") > sort_key("90m")
    assert sort_key("2/s") > sort_key("30/min")
    assert sort_key("running") > sort_key("12") and sort_key("") > sort_key("zzz")


# ---------------------------------------------------------------------- log keys
def test_log_follow_matches_wrap_and_full_screen(tmp_path):
    app = recorded_app(tmp_path)
    lines = [f"line {i} {'ERROR disk' if i % 7 == 3 else 'fine'}" for i in range(60)]

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            logs = app.panels.logs
            logs.show_lines(lines)
            await pilot.pause()
            logs.view.focus()
            await pilot.press("slash", *"error", "enter")
            assert app.focused is logs.view          # n / N work at once
            matches = len(logs.match_rows)
            assert matches == len([line for line in lines if "ERROR" in line]) > 2
            await pilot.press("n")
            assert logs.current_match == 0 and f"match 1 of {matches}" in logs.border_subtitle
            await pilot.press("n", "n", "N")
            assert logs.current_match == 1
            await pilot.press("N", "N")
            assert logs.current_match == matches - 1      # wraps around
            await pilot.press("escape")
            assert logs.needle == "" and any("line 59" in t for t in logs.visible_text())
            # follow off: new lines are held, the view stays still
            await pilot.press("f")
            assert not logs.follow and "follow off" in logs.border_subtitle
            logs.show_lines(lines + ["NEW LINE"])
            await pilot.pause()
            assert not any("NEW LINE" in t for t in logs.visible_text())
            await pilot.press("f")
            assert any("NEW LINE" in t for t in logs.visible_text())
            # wrap
            logs.show_lines(lines + ["long " * 60])
            await pilot.pause()
            before = len(logs.visible_text())
            await pilot.press("w")
            assert logs.view.wrap and len(logs.visible_text()) > before
            await pilot.press("w")
            assert len(logs.visible_text()) == before
            # full screen: z, then Escape; Enter too
            await pilot.press("z")
            assert app.screen.maximized is logs
            await pilot.press("escape")
            assert app.screen.maximized is None
            logs.view.focus()
            await pilot.press("enter")
            assert app.screen.maximized is logs
            await pilot.press("z")
            assert app.screen.maximized is None

    asyncio.run(scenario())


# ---------------------------------------------------------------------- one stage
def test_pause_resume_and_restart_one_stage(tmp_path):
    from tests.console_support import seed_images

    root = make_root(tmp_path / "root")
    seed_images(root, 400)
    start_detached(root, "selftest", ["--work-s", "0.05"])
    first_pid = stage_status(root, "selftest")["pid"]
    app = ConsoleApp(root)
    row = "local/selftest"

    async def scenario() -> None:
        async with app.run_test(size=(140, 45)) as pilot:
            table = app.query_one(StagesTable)
            await wait_until(pilot, lambda: table.cell_text(row, "state") == "running",
                             what="selftest running")
            table.focus()
            await pilot.press("ctrl+home", *["down"] * table.keys().index(row))
            await pilot.press("p")
            await wait_until(pilot, lambda: table.cell_text(row, "state") == "paused",
                             what="paused after p")
            assert root.file("PAUSE_SELFTEST").exists()
            await pilot.press("p")
            await wait_until(pilot, lambda: "refused: local/selftest is already paused" in logged(app))
            await pilot.press("u")
            await wait_until(pilot, lambda: table.cell_text(row, "state") == "running",
                             what="running after u")
            assert not root.file("PAUSE_SELFTEST").exists()
            await pilot.press("S")
            await wait_until(pilot, lambda: table.cell_text(row, "state") == "running"
                             and table.cell_text(row, "pid") not in ("", str(first_pid)),
                             what="running again with a new pid")
            assert "restart local/selftest" in logged(app)
            assert "start selftest: running" in logged(app)

    try:
        asyncio.run(scenario())
        from pipeline.core.procs import pid_alive

        assert not pid_alive(first_pid)
        assert stage_status(root, "selftest")["pid"] != first_pid
    finally:
        stop_if_running(root)
