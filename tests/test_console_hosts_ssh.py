"""Worker hosts over a real sshd on loopback: the worker's row comes from its run/worker.json
read over one cached SSH connection; start, stop and restart from the keyboard write the
expected files there (the kill file for stop; restart starts only after the exit); a host
that does not answer is unreachable while the other panels keep refreshing, and comes back
when it answers again."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

import pipeline.core.hoststages as hoststages
from console.app import ConsoleApp
from console.widgets.stages_panel import StagesTable
from tests.console_support import label_text, make_root, seed_images, wait_until
from tests.sshd_support import free_port, own_sshd, sshd  # noqa: F401 - fixtures

pytestmark = pytest.mark.timeout(90)
LIMIT = 5.0   # seconds per host call: a limit, not an expectation (a loaded 2-core VM)

# The "python" of the test worker hosts: instead of starting the real worker stage (models),
# it records its arguments and writes a running heartbeat, as `imageselector start` leaves.
FAKE_START = r'''
import json, os, sys, time
args = sys.argv[1:]
root = args[args.index("--root") + 1]
with open(os.path.join(root, "started_args.json"), "w") as f:
    json.dump(args, f)
now = time.time()
os.makedirs(os.path.join(root, "run"), exist_ok=True)
tmp = os.path.join(root, "run", "worker.json.tmp")
with open(tmp, "w") as f:
    json.dump({"stage": "worker", "pid": os.getpid(), "state": "running", "started": now,
               "heartbeat": now, "current": "batch 1", "rate": 3.0, "exit": None}, f)
os.replace(tmp, os.path.join(root, "run", "worker.json"))
print(f"worker: running (pid {os.getpid()}); log {root}/logs/worker.log")
'''


def heartbeat(worker_root: Path, **fields) -> dict:
    now = time.time()
    hb = {"stage": "worker", "pid": 4242, "state": "running", "started": now - 60,
          "heartbeat": now, "current": "batch 7", "rate": 2.5, "exit": None, **fields}
    (worker_root / "run").mkdir(parents=True, exist_ok=True)
    tmp = worker_root / "run" / "worker.json.tmp"
    tmp.write_text(json.dumps(hb))
    os.replace(tmp, worker_root / "run" / "worker.json")
    return hb


def worker_root(base: Path, name: str) -> Path:
    path = base / f"wroot-{name}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def fake_python(base: Path) -> Path:
    script = base / "fake_start.py"
    script.write_text(FAKE_START)
    wrapper = base / "python.sh"
    wrapper.write_text(f"#!/bin/sh\nexec '{sys.executable}' '{script}' \"$@\"\n")
    wrapper.chmod(0o755)
    return wrapper


def write_hosts(root, server, workers: dict[str, Path], python: Path,
                dead: str | None = None) -> None:
    server.write_known_hosts(root.path / "known_hosts")
    out = ['known_hosts = "known_hosts"']
    for name, wroot in workers.items():
        out.append(f'[workers.{name}]\naddress = "127.0.0.1"\nport = {server.port}\n'
                   f'user = "{server.user}"\nkey_file = "{server.client_key}"\n'
                   f'root = "{wroot}"\npython = "{python}"')
    if dead:  # nothing listens on this port
        out.append(f'[workers.{dead}]\naddress = "127.0.0.1"\nport = {free_port()}\n'
                   f'user = "{server.user}"\nkey_file = "{server.client_key}"\n'
                   f'root = "/nowhere"\npython = "{python}"')
    (root.path / "hosts.toml").write_text("\n".join(out) + "\n")


@pytest.fixture(autouse=True)
def _close_links():
    yield
    hoststages.close_all()


def _link(root, name: str, timeout_s: float):
    return hoststages._links[(str(root.path), name, float(timeout_s))]


def test_rows_from_heartbeats_over_one_cached_connection(tmp_path, sshd):  # noqa: F811
    root = make_root(tmp_path / "root", stage={"stale_after_s": 30.0})
    roots = {n: worker_root(tmp_path, n) for n in ("w1", "w2", "w3", "w4")}
    hb = heartbeat(roots["w1"])
    heartbeat(roots["w2"], heartbeat=time.time() - 1000)          # alive once, silent now
    heartbeat(roots["w3"], state="stopped",
              exit={"code": 0, "outcome": "stopped", "reason": "stopped by KILL_WORKER"})
    heartbeat(roots["w4"], pid=5151)
    (roots["w4"] / "KILL_WORKER").write_text("stop\n")             # asked to stop, still up
    write_hosts(root, sshd, {**roots, "noroot": tmp_path / "absent"}, fake_python(tmp_path),
                dead="gone")

    rows = {n: hoststages.host_stage_rows(root, n, LIMIT) for n in (*roots, "noroot", "gone")}
    w1 = rows["w1"][0]
    assert (w1["name"], w1["host"], w1["state"], w1["pid"], w1["current"]) == \
        ("worker", "w1", "running", 4242, "batch 7")
    assert w1["rate"] == 2.5 and w1["uptime_s"] >= 60 and w1["heartbeat_age_s"] < 30
    assert w1["started"] == hb["started"] and w1["error"] is None
    assert (rows["w2"][0]["state"], rows["w2"][0]["pid"]) == ("stale", None)
    assert (rows["w3"][0]["state"], rows["w3"][0]["pid"]) == ("stopped", None)
    assert rows["w3"][0]["last_exit"]["outcome"] == "stopped"
    assert (rows["w4"][0]["state"], rows["w4"][0]["pid"]) == ("stopping", 5151)
    noroot = rows["noroot"][0]
    assert noroot["state"] == "unreachable" and "does not exist" in noroot["error"]
    gone = rows["gone"][0]
    assert gone["state"] == "unreachable" and "connection refused" in gone["error"]

    # one connection per host, reused by every poll; a lost session is re-made
    for _ in range(3):
        assert hoststages.host_stage_rows(root, "w1", LIMIT)[0]["state"] == "running"
    conn = _link(root, "w1", LIMIT).transport.conn
    assert conn.connects == 1
    from tests.sshd_support import client_port

    assert sshd.kill_session(client_port(conn)) >= 1
    # the poll that meets the dead session may say so; the next ones run on a new connection
    states = [hoststages.host_stage_rows(root, "w1", LIMIT)[0]["state"] for _ in range(4)]
    assert states[-2:] == ["running", "running"]
    assert conn.connects >= 2

    # the remote log, and a missing one said plainly
    (roots["w1"] / "logs").mkdir()
    (roots["w1"] / "logs" / "worker.log").write_text("".join(f"line {i}\n" for i in range(50)))
    assert hoststages.host_log_tail(root, "w1", "worker", 3, LIMIT) == \
        ["line 47", "line 48", "line 49"]
    from pipeline.core.errors import UserError

    with pytest.raises(UserError, match="no log yet"):
        hoststages.host_log_tail(root, "w2", "worker", 3, LIMIT)
    with pytest.raises(UserError, match="does not run on worker hosts"):
        hoststages.stop_remote(root, "w1", "sync", LIMIT)

    # stop: nothing is written for a stage that is not running there
    assert "not running" in hoststages.stop_remote(root, "w3", "worker", LIMIT)
    assert not (roots["w3"] / "KILL_WORKER").exists()


def test_a_host_whose_clock_is_behind_is_aged_by_its_own_clock(tmp_path, sshd):  # noqa: F811
    """The host's heartbeat carries the host's clock: a worker two minutes behind us that
    writes its heartbeat now is running, not stale (and the offset is in the row)."""
    root = make_root(tmp_path / "root", stage={"stale_after_s": 30.0})
    wroot = worker_root(tmp_path, "late")
    heartbeat(wroot, started=time.time() - 180, heartbeat=time.time() - 120)
    late_python = tmp_path / "late_python.sh"   # that host's Python: its clock reads 120 s less
    late_python.write_text(f"#!/bin/sh\nexec '{sys.executable}' -c "
                           f"'import time; print(repr(time.time() - 120))'\n")
    late_python.chmod(0o755)
    write_hosts(root, sshd, {"late": wroot}, late_python)
    row = hoststages.host_stage_rows(root, "late", LIMIT)[0]
    assert row["state"] == "running" and row["pid"] == 4242
    assert row["heartbeat_age_s"] < 30 and 55 <= row["uptime_s"] < 120
    assert -121 < row["clock_offset_s"] < -119


def test_a_hung_call_never_blocks_past_the_limit(tmp_path, monkeypatch):
    """The SSH work runs in a thread the caller stops waiting for: a transport that never
    answers gives "unreachable" after timeout_s (this test would hang otherwise)."""
    root = make_root(tmp_path / "root")
    (root.path / "hosts.toml").write_text(
        '[workers.hang]\naddress = "127.0.0.1"\nuser = "x"\nkey_file = "k"\n'
        'root = "/w"\npython = "/p"\n')
    release = threading.Event()
    calls = []

    class Hanging:
        name, root = "hang", "/w"

        def join(self, relpath):
            return f"/w/{relpath}"

        def read_bytes(self, path, max_bytes):
            calls.append(path)
            release.wait(60)
            return b""

        def close(self):
            pass

    monkeypatch.setattr(hoststages, "_new_transport", lambda *a: Hanging())
    try:
        first = hoststages.host_stage_rows(root, "hang", 0.3)
        assert first[0]["state"] == "unreachable" and "no answer within 0.3s" in first[0]["error"]
        # the next call waits for the hung one only until its own limit, then says so
        second = hoststages.host_stage_rows(root, "hang", 0.3)
        assert second[0]["state"] == "unreachable" and "busy" in second[0]["error"]
        assert calls == ["/w/run/worker.json"]
    finally:
        release.set()


async def _select(pilot, table: StagesTable, key: str) -> None:
    await wait_until(pilot, lambda: key in table.keys(), what=f"row {key}")
    table.focus()
    await pilot.press("ctrl+home", *["down"] * table.keys().index(key))
    assert table.selected_key() == key


def test_console_starts_stops_and_restarts_a_remote_worker(tmp_path, sshd):  # noqa: F811
    root = make_root(tmp_path / "root", console={"source_timeout_s": 3.0},
                     stage={"stale_after_s": 120.0})
    w1 = worker_root(tmp_path, "w1")
    (w1 / "logs").mkdir()
    (w1 / "logs" / "worker.log").write_text("worker log on w1: ready\n")
    write_hosts(root, sshd, {"w1": w1}, fake_python(tmp_path), dead="gone")
    app = ConsoleApp(root)

    async def scenario() -> None:
        async with app.run_test(size=(140, 45)) as pilot:
            table = app.query_one(StagesTable)
            await wait_until(pilot, lambda: table.cell_text("w1/worker", "state") == "stopped",
                             what="w1 stopped")
            await wait_until(pilot, lambda: table.cell_text("gone/worker", "state") ==
                             "unreachable", what="gone unreachable")
            assert "connection refused" in table.cell_text("gone/worker", "current")
            keys = table.keys()
            assert keys.index("local/sync") < keys.index("w1/worker") < keys.index("gone/worker")
            assert all(k.startswith("local/") for k in keys[:keys.index("w1/worker")])

            await _select(pilot, table, "w1/worker")
            logs = app.query_one("#logs")
            await wait_until(pilot, lambda: "worker log on w1" in screen_of(logs),
                             what="remote log shown")

            await pilot.press("s")
            await wait_until(pilot, lambda: (w1 / "started_args.json").exists(),
                             what="start ran there")
            args = json.loads((w1 / "started_args.json").read_text())
            assert args == ["-m", "imageselector", "start", "worker", "--root", str(w1)]
            pid = json.loads((w1 / "run" / "worker.json").read_text())["pid"]
            await wait_until(pilot, lambda: table.cell_text("w1/worker", "state") == "running",
                             what="w1 running")
            assert table.cell_text("w1/worker", "pid") == str(pid)
            assert table.cell_text("w1/worker", "current") == "batch 1"
            assert any("start worker on w1: worker: running" in e.text
                       for e in app.command_log.entries)

            await pilot.press("x")
            await wait_until(pilot, lambda: (w1 / "KILL_WORKER").exists(), what="kill file")
            assert table.cell_text("w1/worker", "state") == "stopping..."
            await wait_until(pilot, lambda: table.cell_class("w1/worker", "state") ==
                             "state--stopping", what="stopping seen over SSH")
            # the worker sees its kill file and exits: final heartbeat, kill file removed
            heartbeat(w1, pid=pid, state="stopped",
                      exit={"code": 0, "outcome": "stopped", "reason": "stopped by KILL_WORKER"})
            (w1 / "KILL_WORKER").unlink()
            await wait_until(pilot, lambda: table.cell_text("w1/worker", "state") == "stopped",
                             what="w1 stopped again")
            await wait_until(pilot, lambda: any("w1/worker exited: 0 stopped" in e.text
                                                for e in app.command_log.entries))
            assert table.cell_text("w1/worker", "last_exit") == "0 stopped"

            # restart (S) of the running worker: the kill file over SSH, a wait until that
            # host's heartbeat says it exited, then `imageselector start` there again
            (w1 / "started_args.json").unlink()
            await pilot.press("s")
            await wait_until(pilot, lambda: table.cell_text("w1/worker", "state") == "running",
                             what="w1 running again")
            first = json.loads((w1 / "run" / "worker.json").read_text())["pid"]
            (w1 / "started_args.json").unlink()
            await pilot.press("S")
            await wait_until(pilot, lambda: (w1 / "KILL_WORKER").exists(), what="restart's stop")
            assert not (w1 / "started_args.json").exists()   # not started before it exited
            assert table.cell_text("w1/worker", "state") == "stopping..."
            heartbeat(w1, pid=first, state="stopped",
                      exit={"code": 0, "outcome": "stopped", "reason": "stopped by KILL_WORKER"})
            (w1 / "KILL_WORKER").unlink()
            await wait_until(pilot, lambda: (w1 / "started_args.json").exists(),
                             what="restart's start")
            assert json.loads((w1 / "started_args.json").read_text()) == args
            second = json.loads((w1 / "run" / "worker.json").read_text())["pid"]
            assert second != first
            await wait_until(pilot, lambda: table.cell_text("w1/worker", "pid") == str(second),
                             what="the new process on its row")
            assert table.cell_text("w1/worker", "state") == "running"
            logged = [e.text for e in app.command_log.entries]
            steps = [max(i for i, t in enumerate(logged) if text in t) for text in (
                "restart w1/worker: stop, wait", "restart w1/worker: stop requested",
                "worker: running (pid")]
            assert steps == sorted(steps)

    asyncio.run(scenario())


def screen_of(widget) -> str:
    from tests.console_support import screen_text

    return screen_text(widget.app)


def test_hung_host_is_unreachable_while_the_rest_refreshes(tmp_path, own_sshd):  # noqa: F811
    root = make_root(tmp_path / "root", console={"source_timeout_s": 2.0},
                     stage={"stale_after_s": 120.0})
    seed_images(root, 2)
    w1 = worker_root(tmp_path, "w1")
    heartbeat(w1)
    write_hosts(root, own_sshd, {"w1": w1}, fake_python(tmp_path))
    listener = own_sshd.proc.pid
    app = ConsoleApp(root)

    async def scenario() -> None:
        async with app.run_test(size=(140, 45)) as pilot:
            table = app.query_one(StagesTable)
            await wait_until(pilot, lambda: table.cell_text("w1/worker", "state") == "running",
                             what="w1 running")
            assert table.cell_text("w1/worker", "pid") == "4242"
            # the host hangs: its sessions and its listener stop answering, TCP stays up
            os.kill(listener, signal.SIGSTOP)
            assert own_sshd.freeze_session() >= 1
            try:
                await wait_until(pilot, lambda: table.cell_text("w1/worker", "state") ==
                                 "unreachable", what="w1 unreachable")
                assert "host:w1" in app.problems
                seed_images(root, 9, start=100)
                await wait_until(pilot, lambda: label_text(
                    app.query_one("#queue-discovered .queue-depth")) == "11",
                    what="queues keep refreshing")
            finally:
                # thawed, not killed: a session killed while its shell holds a lock (pyenv's
                # rehash lock in root's .bashrc) would leave that lock behind for everyone
                os.kill(listener, signal.SIGCONT)
                own_sshd.signal_session(signal.SIGCONT)
            # it answers again: a fresh connection, the row is back
            await wait_until(pilot, lambda: table.cell_text("w1/worker", "state") == "running",
                             what="w1 back")
            assert "host:w1" not in app.problems

    try:
        asyncio.run(scenario())
    finally:
        os.kill(listener, signal.SIGCONT)
        own_sshd.signal_session(signal.SIGCONT)
        hoststages.close_all()
        deadline = time.monotonic() + 10   # let the sessions end by themselves
        while own_sshd.sessions() and time.monotonic() < deadline:
            time.sleep(0.1)
