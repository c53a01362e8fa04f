"""Helpers for the console's tests: roots with fast settings, waiting inside Pilot, a process
that holds the DB write lock, recorded status snapshots, and an app that shows one panel."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from textual.app import App, ComposeResult
from textual.widgets import Input

FIXTURES = Path(__file__).resolve().parent / "console_fixtures"
# The injected clock of snapshot tests: every age is counted from here (2026-11-25 05:46:40 UTC).
FIXED_NOW = 1795600000.0
PYTHON = sys.executable


def fixed_clock() -> float:
    return FIXED_NOW


def load_fixture(name: str):
    return json.loads((FIXTURES / name).read_text())


def make_root(path: Path, console: dict | None = None, stage: dict | None = None):
    """A production root whose console refreshes fast (tests never wait on a 1 s refresh)."""
    from pipeline.core.root import Root

    path.mkdir(parents=True, exist_ok=True)
    console = {"refresh_s": 0.2, "source_timeout_s": 5.0, "thumbnails": "none", **(console or {})}
    stage = {"heartbeat_s": 0.2, "poll_s": 0.05, **(stage or {})}
    lines = []
    for section, values in (("console", console), ("stage", stage)):
        lines.append(f"[{section}]")
        for key, value in values.items():
            lines.append(f"{key} = {toml_value(value)}")
    (path / "imageselector.toml").write_text("\n".join(lines) + "\n")
    return Root(path).ensure()


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(str(value))


def seed_images(root, n: int, start: int = 1) -> None:
    from pipeline.core.db import add_discovered_images, open_db, transaction

    conn = open_db(root)
    try:
        with transaction(conn):
            add_discovered_images(conn, [(i, i) for i in range(start, start + n)])
    finally:
        conn.close()


def run_selftest_once(root) -> None:
    """One unit of the selftest stage, in a child process (a heartbeat left by this process
    would look alive): the stage then has a row in the stages panel, and a log."""
    out = subprocess.run([PYTHON, "-m", "imageselector", "--root", str(root.path), "run",
                          "selftest", "--units", "1", "--work-s", "0"],
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    if out.returncode != 0:
        raise AssertionError(f"selftest run failed: {out.stderr}")


async def wait_until(pilot, predicate, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await pilot.pause(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def label_text(widget) -> str:
    return str(widget.content)


class WriteLockHolder:
    """A separate process inside BEGIN IMMEDIATE on the DB until released."""

    SCRIPT = (
        "import sqlite3, sys\n"
        "conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)\n"
        "conn.execute('BEGIN IMMEDIATE')\n"
        "conn.execute(\"INSERT INTO meta(key, value) VALUES ('holder', 'x') \"\n"
        "             \"ON CONFLICT(key) DO UPDATE SET value = 'y'\")\n"
        "print('ready', flush=True)\n"
        "sys.stdin.read()\n"
        "conn.execute('ROLLBACK')\n"
    )

    def __init__(self, db_path: Path):
        self.db_path = db_path
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "WriteLockHolder":
        self.proc = subprocess.Popen([PYTHON, "-c", self.SCRIPT, str(self.db_path)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.proc.kill()
            raise AssertionError(f"write-lock holder did not start: {line!r}")
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def release(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __exit__(self, *exc) -> None:
        self.release()


def stop_if_running(root, name: str = "selftest") -> None:
    """Test cleanup: a stage a test started never outlives it (kill file, then SIGKILL)."""
    from pipeline.core.procs import pid_alive
    from pipeline.core.stage_control import request_stop
    from pipeline.core.stage_observe import stage_status

    status = stage_status(root, name)
    pid = status.get("pid")
    if not pid:
        return
    request_stop(root, name)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.05)
    if pid_alive(pid):
        os.kill(pid, 9)


class PanelApp(App):
    """One panel alone, shown from recorded data (snapshot tests)."""

    def __init__(self, make_panel, show, css_path: str | None = None):
        from console.app import CSS_FILE

        self.CSS_PATH = css_path or str(CSS_FILE)
        super().__init__()
        self.make_panel = make_panel
        self.show_data = show

    def compose(self) -> ComposeResult:
        yield self.make_panel()

    async def on_mount(self) -> None:
        for field in self.query(Input):
            field.cursor_blink = False
        result = self.show_data(self)
        if asyncio.iscoroutine(result):
            await result


def screen_text(app) -> str:
    """The screen as plain text (for reading a layout while writing tests)."""
    import io

    from rich.console import Console

    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), force_terminal=True,
                      color_system="truecolor", record=True, legacy_windows=False)
    console.print(app.screen._compositor.render_update(full=True))
    return console.export_text(styles=False)
