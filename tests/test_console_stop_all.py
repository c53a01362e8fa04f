"""Stop all writes the kill files in the order its dialog lists, says what it stops, and leaves
the sandbox's local Etsy API (which sync needs) running, saying so."""
from __future__ import annotations

import asyncio
import json
import subprocess
import time

import pytest

from console.actions import stop_all_kept, stop_all_order, stop_all_text
from console.app import ConsoleApp
from console.screens.confirm_screen import ConfirmScreen
from console.widgets.stages_panel import StagesTable
from pipeline.core.fsutil import atomic_write_json
from pipeline.core.procs import process_start_time
from pipeline.core.stage import spec
from tests.console_support import make_root, wait_until

pytestmark = pytest.mark.timeout(120)
STAGES = ("tar", "sync", "etsy-api", "download")   # written in this order: the dialog reorders


def fake_running(root, name: str, proc: subprocess.Popen) -> None:
    """A heartbeat that names a real process of ours, so the stage reads as running."""
    now = time.time()
    atomic_write_json(root.heartbeat_path(name), {
        "stage": name, "pid": proc.pid, "host": "testhost", "state": "running",
        "proc_start": process_start_time(proc.pid), "started": now, "heartbeat": now,
        "counters": {}, "info": {}, "rate": 0.0})


def test_stop_all_dialog_lists_the_order_and_what_it_leaves():
    rows = [{"name": n, "host": h, "state": "running", "pid": p} for n, h, p in [
        ("etsy-api", "local", 9), ("tar", "local", 4), ("sync", "local", 2), ("worker", "mbp", 7)]]
    order = stop_all_order(rows)
    assert [r["name"] for r in order] == ["sync", "tar", "worker"]
    text = stop_all_text(order, stop_all_kept(rows))
    lines = text.splitlines()
    assert lines[1:4] == ["  1. local/sync  (KILL_SD, pid 2)", "  2. local/tar  (KILL_TAR, pid 4)",
                          "  3. mbp/worker  (KILL_WORKER, pid 7)"]
    assert lines[-1].startswith("Left running: local/etsy-api, the sandbox's local Etsy API")


def test_stop_all_writes_kill_files_in_the_order_shown_and_keeps_the_etsy_api(tmp_path):
    root = make_root(tmp_path / "root")
    procs = {name: subprocess.Popen(["sleep", "120"], stdin=subprocess.DEVNULL)
             for name in STAGES}
    try:
        for name, proc in procs.items():
            fake_running(root, name, proc)
        app = ConsoleApp(root)

        async def scenario() -> tuple[str, list[str]]:
            async with app.run_test(size=(160, 48)) as pilot:
                table = app.query_one(StagesTable)
                await wait_until(pilot, lambda: all(table.cell_text(f"local/{n}", "state")
                                                    == "running" for n in STAGES))
                await pilot.press("A")
                await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
                body = app.screen.body
                await pilot.press("y")
                await wait_until(pilot, lambda: all(
                    root.file(spec(n).kill_file).exists() for n in ("sync", "download", "tar")),
                    what="the kill files")
                await wait_until(pilot, lambda: any("stop tar" in e.text
                                                    for e in app.command_log.entries),
                                 what="the last stop logged")
                return body, [e.text for e in app.command_log.entries]

        body, logged = asyncio.run(scenario())
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait()
    listed = [line.split(". ", 1)[1].split()[0] for line in body.splitlines()
              if line.strip()[:2] in ("1.", "2.", "3.")]
    assert listed == ["local/sync", "local/download", "local/tar"]
    assert "Left running: local/etsy-api" in body
    written = sorted(("sync", "download", "tar"),
                     key=lambda n: json.loads(root.file(spec(n).kill_file).read_text())["at"])
    assert [f"local/{n}" for n in written] == listed          # the order the dialog showed
    assert not root.file(spec("etsy-api").kill_file).exists()
    assert "stop all, in this order: local/sync, local/download, local/tar" in logged


def test_cli_stop_all_shares_the_rule_and_says_what_it_leaves(tmp_path):
    """`imageselector stop --all` leaves the sandbox's local Etsy API running (the rule the
    console's A follows, pipeline.core.stage.STOP_ALL_KEEPS) and says so; --everything, or
    naming it, stops it."""
    from tests.support import run_cli

    root = make_root(tmp_path / "root")
    procs = {name: subprocess.Popen(["sleep", "120"], stdin=subprocess.DEVNULL)
             for name in STAGES}
    try:
        fake_running(root, "etsy-api", procs["etsy-api"])
        only_api = run_cli("stop", "--all", root=root, check=True).stdout
        assert "no other stage is running" in only_api
        assert "etsy-api: left running, the sandbox's local Etsy API" in only_api
        for name, proc in procs.items():
            fake_running(root, name, proc)
        out = run_cli("stop", "--all", root=root, check=True).stdout
        lines = out.splitlines()
        assert lines[0] == "stop --all stops, in this order: sync, download, tar"
        assert [line.split(":")[0] for line in lines if "written" in line] == \
            ["sync", "download", "tar"]
        assert any(line.startswith("etsy-api: left running") for line in lines)
        assert all(root.file(spec(n).kill_file).exists() for n in ("sync", "download", "tar"))
        assert not root.file(spec("etsy-api").kill_file).exists()

        bad = run_cli("stop", "--everything", root=root)
        assert bad.returncode != 0 and "--everything goes with --all" in bad.stderr
        out = run_cli("stop", "--all", "--everything", root=root, check=True).stdout
        assert out.splitlines()[0].endswith("sync, download, tar, etsy-api")
        assert root.file(spec("etsy-api").kill_file).exists()
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait()
