"""SVG snapshots of each panel at a fixed size, drawn from recorded status snapshots
(tests/console_fixtures/) with an injected clock and half-block thumbnails, so they are
stable. Update them with `pytest tests/test_console_snapshots.py --snapshot-update` and look
at the report before committing."""
from __future__ import annotations

import io
import time

import pytest
from PIL import Image, ImageDraw
from textual.app import App

from console.command_log import CommandEntry
from console.history import QueueHistory
from console.screens.escalate_screen import EscalateScreen
from console.widgets.backups_panel import BackupsPanel
from console.widgets.command_log_panel import CommandLogPanel
from console.widgets.locks_panel import LocksPanel
from console.widgets.logs_panel import LogsPanel
from console.widgets.queues_panel import QueuesPanel
from console.widgets.runner_panel import RunnerPanel
from console.widgets.search_pane import SearchPane
from console.widgets.stages_panel import StagesPanel
from tests.console_support import FIXED_NOW, PanelApp, fixed_clock, load_fixture, make_root

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.filterwarnings("ignore:Image.Image.getdata:DeprecationWarning")]


@pytest.fixture(autouse=True)
def utc(monkeypatch):
    """Clock times are drawn in local time: make that UTC everywhere."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def busy():
    return load_fixture("status_busy.json")


def all_stage_rows() -> list[dict]:
    rows = busy()["stages"]
    for host, host_rows in load_fixture("hosts_rows.json").items():
        rows += [{**r, "host": host} for r in host_rows]
    return rows


def stages_app() -> App:
    return PanelApp(StagesPanel, lambda app: app.query_one(StagesPanel).show(
        all_stage_rows(), {"local/sync"}, ["worker hosts: sleight did not answer"]))


def queue_history() -> QueueHistory:
    history = QueueHistory(600)
    for sample in load_fixture("queue_history.json"):
        history.add(sample["at"], sample["queues"])
    return history


def queues_app() -> App:
    from console.panel_feed import running_rates
    from pipeline.status.queue_reasons import queue_reasons

    rows = all_stage_rows()
    history = queue_history()
    reasons = queue_reasons(history.samples[-1][1], rows, batch_size=10000, per_tar=10000,
                            now=FIXED_NOW)
    return PanelApp(QueuesPanel, lambda app: app.query_one(QueuesPanel).show(
        history, running_rates(rows), reasons=reasons))


def locks_app() -> App:
    from pipeline.status.lock_owners import name_holders

    snap = busy()
    holders = name_holders(snap["locks"], snap["stages"], hostname="imac")
    return PanelApp(LocksPanel, lambda app: app.query_one(LocksPanel).show(holders, FIXED_NOW))


def backups_app() -> App:
    snap = busy()
    return PanelApp(BackupsPanel, lambda app: app.query_one(BackupsPanel).show(
        snap["backups"], snap["schedule"], snap["backup_jobs"]))


def backups_before_scheduler_app() -> App:
    snap = busy()
    return PanelApp(BackupsPanel, lambda app: app.query_one(BackupsPanel).show(
        snap["backups"], None, snap["backup_jobs"]))


def logs_app(needle: str) -> App:
    def show(app):
        panel = app.query_one(LogsPanel)
        panel.set_title("Log: local/download")
        panel.show_lines(load_fixture("download_log.json"))
        if needle:
            panel.needle = needle
            panel.set_title("Log: local/download")
            panel._redraw()
    return PanelApp(lambda: LogsPanel(context=1), show)


def command_log_app() -> App:
    entries = [CommandEntry(FIXED_NOW - 300, "start download on local"),
               CommandEntry(FIXED_NOW - 299, "start download: running (pid 4212)", "ok"),
               CommandEntry(FIXED_NOW - 60, "stop local/download"),
               CommandEntry(FIXED_NOW - 59, "stop download: KILL_DL written, waiting for it to exit "
                                            "(pid 4212)", "ok"),
               CommandEntry(FIXED_NOW - 10, "deploy to sleight: remote/deploy.py: not available yet",
                            "error")]

    def show(app):
        for entry in entries:
            app.query_one(CommandLogPanel).add(entry)
    return PanelApp(CommandLogPanel, show)


def runner_app() -> App:
    snap = busy()
    states = {r["name"]: r["state"] for r in snap["stages"]}
    pipeline_row = next(r for r in snap["stages"] if r["name"] == "pipeline")

    def show(app):
        panel = app.query_one(RunnerPanel)
        panel.show_runner(pipeline_row)
        panel.show_view(load_fixture("runner_view.json"), states)
    return PanelApp(RunnerPanel, show)


def thumbnail(colour, shape: str) -> Image.Image:
    image = Image.new("RGB", (96, 64), (245, 245, 240))
    draw = ImageDraw.Draw(image)
    if shape == "table":
        draw.rectangle((10, 14, 86, 22), fill=colour)
        draw.rectangle((16, 22, 22, 58), fill=colour)
        draw.rectangle((74, 22, 80, 58), fill=colour)
    else:
        draw.rectangle((30, 6, 66, 34), fill=colour)
        draw.rectangle((26, 34, 70, 42), fill=colour)
        draw.rectangle((28, 42, 34, 60), fill=colour)
        draw.rectangle((62, 42, 68, 60), fill=colour)
    return image


def search_app() -> App:
    from textual_image.widget import HalfcellImage

    results = [
        ({"listing_id": 1129384, "title": "Mid-century walnut side table with drawer", "price": 240.0,
          "currency": "USD", "shop": "OakAndIron", "score": 0.0491, "agree": 5,
          "models": {"clip_vitb32": {"rank": 1}, "clip_vitl14": {"rank": 1}, "dinov2_base": {"rank": 2},
                     "dinov2_large": {"rank": 1}, "dinov3_base": {"rank": 3}}},
         thumbnail((120, 72, 40), "table")),
        ({"listing_id": 2203311, "title": "Oak dining chair", "price": 129.5, "currency": "USD",
          "shop": "Benchly", "score": 0.0312, "agree": 3,
          "models": {"clip_vitb32": {"rank": 4}, "dinov2_base": {"rank": 1}, "dinov3_base": {"rank": 2}}},
         thumbnail((160, 110, 60), "chair")),
        ({"listing_id": 9911, "title": "Pine stool (no image)", "price": 35, "currency": "USD",
          "shop": "misc", "score": 0.0163, "agree": 1, "models": {"clip_vitb32": {"rank": 7}}}, None),
    ]

    async def show(app):
        await app.query_one(SearchPane).show_results("results for 'walnut table'", results,
                                                     ["model dinov3_base: index missing in shard 3"])
    return PanelApp(lambda: SearchPane(image_class=HalfcellImage), show)


class ScreenApp(App):
    """An empty app that shows one modal screen."""

    def __init__(self, screen):
        from console.app import CSS_FILE

        self.CSS_PATH = str(CSS_FILE)
        super().__init__()
        self.modal = screen

    def on_mount(self) -> None:
        self.push_screen(self.modal)


def escalate_app() -> App:
    return ScreenApp(EscalateScreen("download", 4212, busy()["locks"], 10.0))


def dashboard_app(tmp_path):
    from console.app import ConsoleApp

    root = make_root(tmp_path / "root")
    app = ConsoleApp(root, clock=fixed_clock, poll=False, image_class=None)
    app.root_text = "/srv/isroot (production)"

    async def feed(pilot):
        for sample in load_fixture("queue_history.json")[:-1]:
            app.history.add(sample["at"], sample["queues"])
        snap = busy()
        app.hosts = [{"name": name} for name in load_fixture("hosts_rows.json")]
        app.host_rows = {k: v for k, v in load_fixture("hosts_rows.json").items()}
        app.feed_status(snap)
        for entry in ("stop local/download", "stop download: KILL_DL written"):
            app.log_command(entry)
        app.panels.logs.show_lines(load_fixture("download_log.json"))
        await pilot.pause()
    return app, feed


PANELS = {
    "stages": (stages_app, (160, 18)),
    "queues": (queues_app, (90, 17)),
    "locks": (locks_app, (90, 8)),
    "backups": (backups_app, (90, 17)),
    "backups_before_scheduler": (backups_before_scheduler_app, (90, 14)),
    "logs": (lambda: logs_app(""), (100, 14)),
    "logs_search": (lambda: logs_app("503"), (100, 14)),
    "command_log": (command_log_app, (70, 9)),
    "runner": (runner_app, (120, 30)),
    "search": (search_app, (120, 22)),
    "escalate": (escalate_app, (120, 22)),
}


@pytest.mark.parametrize("name", sorted(PANELS))
def test_panel_snapshot(snap_compare, name):
    make, size = PANELS[name]
    assert snap_compare(make(), terminal_size=size)


def test_dashboard_snapshot(snap_compare, tmp_path):
    app, feed = dashboard_app(tmp_path)
    assert snap_compare(app, terminal_size=(160, 48), run_before=feed)


def test_help_snapshot(snap_compare, tmp_path):
    from console.app import ConsoleApp

    root = make_root(tmp_path / "root", console={"keymap": {"stop": "k"}})
    app = ConsoleApp(root, clock=fixed_clock, poll=False, image_class=None)
    app.root_text = "/srv/isroot (production)"
    assert snap_compare(app, press=["question_mark"], terminal_size=(130, 40))
