"""Lock holders: helper processes hold the DB in each mode; /proc/locks, the F_GETLK probe and
`imageselector locks --json` must all name them correctly."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pipeline.core import db
from pipeline.core.locks import holders_from_probe, holders_from_proc_locks, parse_proc_locks
from tests.support import run_cli

HOLDER_SCRIPT = r"""
import sqlite3, sys
path, mode = sys.argv[1], sys.argv[2]
conn = sqlite3.connect(path, isolation_level=None, timeout=10)
if mode == "writer":
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO sync_state(key, value) VALUES ('holder', '1')")
elif mode == "reader":
    conn.execute("BEGIN")
    conn.execute("SELECT COUNT(*) FROM image_status").fetchone()
elif mode == "open":
    pass  # connected, never queried
print("ready", flush=True)
sys.stdin.read()  # hold until the test closes our stdin
"""


@pytest.fixture
def holders(tmp_root):
    conn = db.open_db(tmp_root)
    with db.transaction(conn):
        db.add_discovered_images(conn, [(1, 1)])
    conn.close()
    procs = {}
    try:
        for mode in ("writer", "reader", "open"):
            proc = subprocess.Popen([sys.executable, "-c", HOLDER_SCRIPT, str(tmp_root.db_path), mode],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            assert proc.stdout.readline().strip() == "ready"
            procs[mode] = proc
        yield tmp_root, {mode: p.pid for mode, p in procs.items()}
    finally:
        for proc in procs.values():
            proc.stdin.close()
            proc.wait(timeout=10)


def test_proc_locks_names_writer_reader_and_open(holders):
    root, pids = holders
    out = run_cli("locks", "--json", root=root, check=True)
    by_pid = {h["pid"]: h for h in json.loads(out.stdout)}
    assert by_pid[pids["writer"]]["mode"] == "writer"
    assert by_pid[pids["reader"]]["mode"] == "reader"
    assert by_pid[pids["open"]]["mode"] == "open"
    for holder in by_pid.values():
        assert {"pid", "name", "cmdline", "mode", "since"} <= set(holder)
    assert "python" in by_pid[pids["writer"]]["name"]
    assert "-c" in by_pid[pids["writer"]]["cmdline"]


def test_getlk_probe_agrees_with_proc_locks(holders):
    root, pids = holders
    from_proc = holders_from_proc_locks(root.db_path)
    from_probe = holders_from_probe(root.db_path)
    assert from_proc[pids["writer"]] == "writer"
    assert from_probe[pids["writer"]] == "writer"
    assert from_proc[pids["reader"]] == "reader"
    # F_GETLK reports one holder per byte: the reader's slot shows the reader (or the
    # writer, which also holds a read mark); it never calls the writer anything else
    assert from_probe.get(pids["reader"], "reader") == "reader"
    assert pids["open"] not in from_probe or from_probe[pids["open"]] == "open"
    # a mode the probe gives must be the mode /proc/locks gives
    for pid, mode in from_probe.items():
        assert from_proc.get(pid) == mode


def test_probe_method_through_the_cli(holders):
    root, pids = holders
    out = run_cli("locks", "--json", "--method", "probe", root=root, check=True)
    by_pid = {h["pid"]: h["mode"] for h in json.loads(out.stdout)}
    assert by_pid[pids["writer"]] == "writer"
    assert by_pid[pids["open"]] == "open"  # found by psutil's open files


def test_writer_gone_is_no_longer_reported(tmp_root):
    conn = db.open_db(tmp_root)
    conn.close()
    proc = subprocess.Popen([sys.executable, "-c", HOLDER_SCRIPT, str(tmp_root.db_path), "writer"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    assert holders_from_proc_locks(tmp_root.db_path).get(proc.pid) == "writer"
    proc.stdin.close()
    proc.wait(timeout=10)
    assert proc.pid not in holders_from_proc_locks(tmp_root.db_path)


def test_parse_proc_locks_skips_waiters_and_reads_eof():
    text = ("1: POSIX  ADVISORY  WRITE 4242 00:2f:1234 120 120\n"
            "1: -> POSIX  ADVISORY  WRITE 4343 00:2f:1234 120 120\n"
            "2: FLOCK  ADVISORY  WRITE 17 fd:01:99 0 EOF\n")
    locks = parse_proc_locks(text)
    assert [(l["pid"], l["start"], l["end"]) for l in locks] == [(4242, 120, 120), (17, 0, None)]
    assert locks[0]["dev"] == (0x00, 0x2F)


def test_tracker_rescans_open_holders_only_as_often_as_asked(tmp_root):
    """A live display reads /proc/locks every poll but the descriptor scan less often."""
    from pipeline.core.locks import LockTracker

    conn = db.open_db(tmp_root)
    conn.close()
    tracker = LockTracker(open_scan_s=3600.0, persist=False)
    assert tracker.holders(tmp_root.db_path) == []
    proc = subprocess.Popen([sys.executable, "-c", HOLDER_SCRIPT, str(tmp_root.db_path), "open"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    writer = subprocess.Popen([sys.executable, "-c", HOLDER_SCRIPT, str(tmp_root.db_path), "writer"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready" and writer.stdout.readline().strip() == "ready"
        modes = {h.pid: h.mode for h in tracker.holders(tmp_root.db_path)}
        assert modes.get(writer.pid) == "writer"   # /proc/locks: read every time
        assert proc.pid not in modes                # descriptor scan: not due yet
        tracker.open_scan_s = 0.0
        modes = {h.pid: h.mode for h in tracker.holders(tmp_root.db_path)}
        assert modes.get(proc.pid) == "open"
    finally:
        for p in (proc, writer):
            p.stdin.close()
            p.wait(timeout=10)
