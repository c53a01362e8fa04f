"""The DB locks panel names each holder by its stage and host (the heartbeats' pids) and shows
its command without the interpreter's path; its "held" time is the one `imageselector locks`
prints, both ways round (the since-times are shared through run/locks_seen.json)."""
from __future__ import annotations

import asyncio
import json
import socket
import subprocess

import pytest

from console.app import ConsoleApp
from console.widgets.locks_panel import LocksTable
from pipeline.core.locks import LockTracker
from pipeline.core.stage_control import start_detached
from pipeline.core.stage_observe import stage_status
from pipeline.status.lock_owners import name_holders, short_command, short_host
from tests.console_support import (PYTHON, WriteLockHolder, make_root, seed_images,
                                   stop_if_running, wait_until)

pytestmark = pytest.mark.timeout(120)


def cli_locks(root) -> list[dict]:
    out = subprocess.run([PYTHON, "-m", "imageselector", "--root", str(root.path), "locks",
                          "--json"], capture_output=True, text=True, timeout=60,
                         stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_short_command_and_names():
    venv = "/srv/imageselector/.venv/bin/python3"
    assert short_command(f"{venv} -m imageselector --root /srv/r run download") == \
        "imageselector run download"
    assert short_command("/v/bin/imageselector --root=/r locks --json") == "imageselector locks --json"
    assert short_command("/usr/bin/sqlite3 /srv/r/data/db/state.db") == \
        "sqlite3 /srv/r/data/db/state.db"
    holders = [{"pid": 1, "mode": "writer", "name": "python3",
                "cmdline": f"{venv} -m imageselector --root /r run sync"},
               {"pid": 2, "mode": "reader", "name": "python3",
                "cmdline": f"{venv} -m imageselector --root /r run tar"},    # no heartbeat yet
               {"pid": 3, "mode": "open", "name": "python3",
                "cmdline": f"{venv} -m imageselector --root /r console"},
               {"pid": 4, "mode": "open", "name": "python3", "cmdline": f"{venv} -m pytest"},
               {"pid": 5, "mode": "open", "name": "sqlite3", "cmdline": "sqlite3 db"}]
    stages = [{"name": "sync", "pid": 1, "hostname": "imac.local"},
              {"name": "download", "pid": None, "hostname": "imac.local"}]
    named = {h["pid"]: (h["stage"], h["host"]) for h in
             name_holders(holders, stages, own_pid=4, hostname="imac.local")}
    assert named == {1: ("sync", "imac"), 2: ("tar", "imac"), 3: ("console", "imac"),
                     4: ("console", "imac"), 5: ("sqlite3", "imac")}


def test_locks_panel_names_a_running_stage_and_agrees_with_the_cli(tmp_path):
    root = make_root(tmp_path / "root")
    seed_images(root, 200)
    start_detached(root, "selftest", ["--work-s", "0.2"])   # keeps the DB open between units
    pid = stage_status(root, "selftest")["pid"]
    app = ConsoleApp(root)

    async def scenario() -> tuple[dict, float, list[dict]]:
        async with app.run_test(size=(160, 48)) as pilot:
            table = app.query_one(LocksTable)
            await wait_until(pilot, lambda: any(k.startswith(f"{pid}:") for k in table.keys()),
                             what="the stage among the lock holders")
            row_key = next(k for k in table.keys() if k.startswith(f"{pid}:"))
            cells = {col: table.cell_text(row_key, col) for col in ("stage", "host", "cmdline")}
            mine = next(h for h in app.lock_view.tracker.holders(root.db_path)
                        if h.pid == pid)
            # the CLI, run while the console watches, reads the same since-time
            return cells, mine.since, await asyncio.to_thread(cli_locks, root)

    try:
        cells, console_since, cli = asyncio.run(scenario())
    finally:
        stop_if_running(root)
    assert cells == {"stage": "selftest", "host": short_host(socket.gethostname()),
                     "cmdline": "run selftest --work-s 0.2"}
    cli_since = next(h["since"] for h in cli if h["pid"] == pid)
    assert cli_since == console_since


def test_held_time_agrees_whichever_looked_first(tmp_path):
    """The CLI saw the writer first: a console that sees it later shows the CLI's since-time;
    and the other way round."""
    root = make_root(tmp_path / "root")
    seed_images(root, 1)
    seen = root.run_dir / "locks_seen.json"
    with WriteLockHolder(root.db_path) as holder:
        key = f"{holder.pid}:writer"
        console = LockTracker(seen, open_scan_s=5.0, persist=True)   # open before the CLI ran
        cli_first = cli_locks(root)
        cli_since = next(h["since"] for h in cli_first if h["mode"] == "writer")
        later = next(h for h in console.holders(root.db_path, now=cli_since + 100)
                     if h.mode == "writer")
        assert later.since == cli_since
        assert json.loads(seen.read_text())[key] == cli_since

    seen.unlink()
    with WriteLockHolder(root.db_path) as holder:
        console = LockTracker(seen, open_scan_s=5.0, persist=True)
        first = next(h for h in console.holders(root.db_path, now=1000.0) if h.mode == "writer")
        cli = cli_locks(root)          # its own clock is far later: the console's time wins
        assert next(h["since"] for h in cli if h["pid"] == holder.pid) == first.since == 1000.0
