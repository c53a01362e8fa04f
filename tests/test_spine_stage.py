"""The stage contract end to end, with real detached processes (the selftest stage)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from pipeline.core import db
from pipeline.core.fsutil import read_json_or_none
from pipeline.core.procs import pid_alive
from pipeline.core.stage_observe import stage_status
from tests.support import cli_json, run_cli, wait_for


def _seed(root, n=200):
    conn = db.open_db(root)
    with db.transaction(conn):
        db.add_discovered_images(conn, [(i, i) for i in range(n)])
    conn.close()


def _runs(root):
    conn = db.open_db(root)
    rows = conn.execute("SELECT stage, pid, exit_code, outcome, reason, ended_at FROM stage_runs "
                        "ORDER BY run_id").fetchall()
    conn.close()
    return rows


def _fast(root):
    (root.path / "imageselector.toml").write_text("[stage]\nheartbeat_s = 0.2\npoll_s = 0.1\n"
                                                  "term_grace_s = 2.0\n")


def test_start_heartbeat_stop_exit_recorded(tmp_root):
    _fast(tmp_root)
    _seed(tmp_root)
    out = run_cli("start", "selftest", "--work-s", "0.05", root=tmp_root, check=True)
    assert "running" in out.stdout
    hb_path = tmp_root.heartbeat_path("selftest")
    first = read_json_or_none(hb_path)
    pid = first["pid"]
    assert pid != os.getpid() and pid_alive(pid)
    # the heartbeat advances, and so does the work
    wait_for(lambda: (read_json_or_none(hb_path) or {}).get("heartbeat", 0) > first["heartbeat"] + 0.3,
             what="heartbeat to advance")
    wait_for(lambda: (read_json_or_none(hb_path) or {}).get("counters", {}).get("done", 0) >= 3,
             what="units of work")
    # detached: own session, not our child
    assert os.getsid(pid) != os.getsid(0)
    import psutil

    assert psutil.Process(pid).ppid() != os.getpid()  # re-parented: not our child
    status = cli_json("status", root=tmp_root)
    row = next(s for s in status["stages"] if s["name"] == "selftest")
    assert row["state"] == "running" and row["pid"] == pid
    stop = run_cli("stop", "selftest", "--wait", "--timeout", "30", root=tmp_root)
    assert stop.returncode == 0, stop.stderr
    assert "stopped (exit 0" in stop.stdout
    assert not pid_alive(pid)
    assert not tmp_root.file("KILL_SELFTEST").exists()
    final = read_json_or_none(hb_path)
    assert final["state"] == "stopped"
    assert final["exit"]["code"] == 0 and final["exit"]["outcome"] == "stopped"
    runs = _runs(tmp_root)
    assert runs[-1][:4] == ("selftest", pid, 0, "stopped") and runs[-1][5] is not None
    assert stage_status(tmp_root, "selftest")["state"] == "stopped"
    # the work it acknowledged is in the DB, and the counters agree with the rows
    conn = db.open_db(tmp_root)
    assert db.queue_depths(conn) == db.count_states_slowly(conn)
    assert db.queue_depths(conn)["downloaded"] == final["counters"]["images"]


def test_stop_without_force_does_not_signal_a_stage_that_ignores_its_kill_file(tmp_root):
    _fast(tmp_root)
    _seed(tmp_root, 10)
    run_cli("start", "selftest", "--work-s", "0.05", "--ignore-kill", root=tmp_root, check=True)
    pid = read_json_or_none(tmp_root.heartbeat_path("selftest"))["pid"]
    try:
        out = run_cli("stop", "selftest", "--wait", "--timeout", "1", root=tmp_root)
        assert out.returncode == 1
        assert "has not honoured KILL_SELFTEST" in out.stdout
        assert pid_alive(pid)  # no signal was sent
        assert stage_status(tmp_root, "selftest")["state"] == "stopping"
        forced = run_cli("stop", "selftest", "--wait", "--timeout", "0.5", "--force", root=tmp_root)
        assert forced.returncode == 0, forced.stdout + forced.stderr
        assert "SIGTERM" in forced.stderr and "SIGKILL" in forced.stderr  # it ignores SIGTERM too
        assert "DB lock holders" in forced.stderr
        assert not pid_alive(pid)
        assert not tmp_root.file("KILL_SELFTEST").exists()
    finally:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_sigterm_is_handled_like_the_kill_file(tmp_root):
    _fast(tmp_root)
    _seed(tmp_root, 50)
    run_cli("start", "selftest", "--work-s", "0.05", root=tmp_root, check=True)
    pid = read_json_or_none(tmp_root.heartbeat_path("selftest"))["pid"]
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not pid_alive(pid), what="exit after SIGTERM")
    final = read_json_or_none(tmp_root.heartbeat_path("selftest"))
    assert final["exit"]["code"] == 0 and final["exit"]["outcome"] == "stopped"


def test_sigkill_leaves_crashed_state_and_next_start_recovers(tmp_root):
    _fast(tmp_root)
    _seed(tmp_root, 50)
    run_cli("start", "selftest", "--work-s", "0.05", root=tmp_root, check=True)
    pid = read_json_or_none(tmp_root.heartbeat_path("selftest"))["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(pid), what="SIGKILL")
    assert stage_status(tmp_root, "selftest")["state"] == "crashed"
    # what a SIGKILL in the middle of a heartbeat write leaves (atomic_write_bytes' temp name)
    half_written = tmp_root.run_dir / ".selftest.json.k1ll3d.tmp"
    half_written.write_text('{"pid": ')
    someone_elses = tmp_root.run_dir / ".sync.json.ab12cd.tmp"
    someone_elses.write_text('{"pid": ')
    status = cli_json("status", root=tmp_root)
    assert next(s for s in status["stages"] if s["name"] == "selftest")["state"] == "crashed"
    # the next start takes over the stale lock and records the crash
    run_cli("start", "selftest", "--work-s", "0.05", root=tmp_root, check=True)
    new_pid = read_json_or_none(tmp_root.heartbeat_path("selftest"))["pid"]
    assert new_pid != pid
    assert not half_written.exists()          # the restarted stage swept its own leftover
    assert someone_elses.exists()             # and left another stage's alone
    run_cli("stop", "selftest", "--wait", root=tmp_root, check=True)
    runs = _runs(tmp_root)
    assert [r[3] for r in runs] == ["crashed", "stopped"]
    assert "recovering" in tmp_root.log_path("selftest").read_text()


def test_single_instance_per_root(tmp_root):
    _fast(tmp_root)
    _seed(tmp_root, 50)
    run_cli("start", "selftest", "--work-s", "0.05", root=tmp_root, check=True)
    pid = read_json_or_none(tmp_root.heartbeat_path("selftest"))["pid"]
    try:
        again = run_cli("start", "selftest", root=tmp_root)
        assert again.returncode != 0 and "already running" in again.stderr
        # even a foreground run that bypasses the status check is refused by the lock
        fg = run_cli("run", "selftest", root=tmp_root)
        assert fg.returncode == 3 and f"pid {pid}" in fg.stderr
    finally:
        run_cli("stop", "selftest", "--wait", root=tmp_root, check=True)


def test_once_drains_the_queue_and_exits_zero(tmp_root):
    _fast(tmp_root)
    _seed(tmp_root, 30)
    out = run_cli("run", "selftest", "--once", "--work-s", "0", "--batch", "7", root=tmp_root)
    assert out.returncode == 0, out.stderr
    conn = db.open_db(tmp_root)
    assert db.queue_depths(conn)["discovered"] == 0
    assert db.queue_depths(conn)["downloaded"] == 30


def test_failed_work_gives_nonzero_exit_and_is_recorded(tmp_root):
    _fast(tmp_root)
    _seed(tmp_root, 5)
    out = run_cli("run", "selftest", "--work-s", "0", "--fail-after", "2", root=tmp_root)
    assert out.returncode == 1
    runs = _runs(tmp_root)
    assert runs[-1][2:4] == (1, "failed") and "on purpose" in runs[-1][4]


def test_pause_and_resume_protocol(tmp_root):
    _fast(tmp_root)
    _seed(tmp_root, 500)
    run_cli("start", "selftest", "--work-s", "0.05", root=tmp_root, check=True)
    try:
        out = run_cli("pause", "selftest", "--wait", "--timeout", "30", root=tmp_root)
        assert out.returncode == 0 and "selftest: paused" in out.stdout
        assert tmp_root.file("PAUSED_SELFTEST").exists()
        assert stage_status(tmp_root, "selftest")["state"] == "paused"
        # while paused, no work happens and no transaction is open (nobody holds the writer lock)
        done = read_json_or_none(tmp_root.heartbeat_path("selftest"))["counters"]["done"]
        time.sleep(0.5)
        assert read_json_or_none(tmp_root.heartbeat_path("selftest"))["counters"]["done"] == done
        locks = cli_json("locks", root=tmp_root)
        assert not [h for h in locks if h["mode"] == "writer"]
        run_cli("resume", "selftest", root=tmp_root, check=True)
        wait_for(lambda: not tmp_root.file("PAUSED_SELFTEST").exists(), what="acknowledgement removed")
        wait_for(lambda: read_json_or_none(tmp_root.heartbeat_path("selftest"))["counters"]["done"] > done,
                 what="work to resume")
    finally:
        run_cli("stop", "selftest", "--wait", root=tmp_root, check=True)


def test_kill_file_present_refuses_start(tmp_root):
    tmp_root.file("KILL_SELFTEST").write_text("")
    out = run_cli("run", "selftest", root=tmp_root)
    assert out.returncode == 2 and "KILL_SELFTEST exists" in out.stderr
    assert tmp_root.file("KILL_SELFTEST").exists()


def test_unknown_stage_is_one_clear_line(tmp_root):
    out = run_cli("start", "nosuch", root=tmp_root)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "unknown stage 'nosuch'" in out.stderr
