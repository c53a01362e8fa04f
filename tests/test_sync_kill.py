"""Stopping the sync at any moment (kill file, pause, SIGKILL, a real CLI process) and
resuming gives the same DB, with no duplicate rows and no finished page fetched again
beyond the one in hand. The local API runs in a forked process; crawls run in forked
children of this (thread-free) test process."""
from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time

from etsy_support import (ServerProcess, assert_matches, db_state, expected_state, make_root,
                          run_sync)
from pipeline.core.fsutil import read_json_or_none
from pipeline.sandbox.catalogue import Catalogue
from support import wait_for


def _fork_sync(root, threads=1) -> int:
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = run_sync(root, threads=threads)
        finally:
            os._exit(code)
    return pid


def _exit_code(pid: int, timeout: float = 60) -> int | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError("sync child did not finish")


def _lift_rate(root) -> None:
    (root.db_dir / "qps_config.json").write_text('{"qps": 1000, "daily_floor": 50}')


def _catalogue(server, listings, epoch):
    return Catalogue(listings=listings, epoch=epoch, image_base=server.root_url + "/img")


def _refetched(table: dict) -> int:
    """How many requests asked for something already asked for."""
    return sum(n - 1 for n in table.values())


def _no_duplicates(db_path) -> None:
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT COUNT(*) - COUNT(DISTINCT listing_id) FROM listings_dynamic").fetchone()[0] == 0
        assert conn.execute("SELECT COUNT(*) - COUNT(DISTINCT shop_id) FROM shops_dynamic").fetchone()[0] == 0
        counts = dict(conn.execute("SELECT state, n FROM queue_counts"))
        assert counts["discovered"] == conn.execute("SELECT COUNT(*) FROM image_status").fetchone()[0]
    finally:
        conn.close()


def test_kill_file_mid_crawl_then_resume(tmp_path):
    epoch = int(time.time())
    with ServerProcess(listings=200, epoch=epoch) as server:
        # 20 requests a second: the listings take about two seconds, the kill lands among them
        root = make_root(tmp_path / "root", server.base_url, sync={"page_size": 10}, qps=20)
        pid = _fork_sync(root)
        wait_for(lambda: server.stats()["counters"].get("search", 0) >= 3, what="a few pages")
        root.file("KILL_SD").write_text("stop")
        assert _exit_code(pid) == 0
        hb = read_json_or_none(root.heartbeat_path("sync"))
        assert hb["exit"]["outcome"] == "stopped"
        assert not root.file("KILL_SD").exists()
        conn = sqlite3.connect(root.db_path)
        stored = conn.execute("SELECT COUNT(*) FROM listings_static").fetchone()[0]
        conn.close()
        assert 0 < stored < 200
        _lift_rate(root)
        assert _exit_code(_fork_sync(root)) == 0
        stats = server.stats()
        assert_matches(db_state(root.db_path), expected_state(_catalogue(server, 200, epoch)))
        _no_duplicates(root.db_path)
        assert _refetched(stats["search"]) <= 1 and _refetched(stats["batch"]) <= 1
        assert _refetched(stats["shops"]) == 0


def test_pause_parks_the_crawl_then_it_goes_on(tmp_path):
    epoch = int(time.time())
    with ServerProcess(listings=80, epoch=epoch) as server:
        root = make_root(tmp_path / "root", server.base_url, sync={"page_size": 10, "threads": 2},
                         qps=20)
        pid = _fork_sync(root, threads=2)
        wait_for(lambda: server.stats()["counters"].get("search", 0) >= 2, what="a few pages")
        root.file("PAUSE_SD").write_text("pause")
        wait_for(lambda: root.file("PAUSED_SD").exists(), what="PAUSED_SD")
        parked = server.stats()["counters"]["requests"]
        time.sleep(0.5)
        assert server.stats()["counters"]["requests"] == parked, "requests went on while paused"
        hb = read_json_or_none(root.heartbeat_path("sync"))
        assert hb["state"] == "paused"
        root.file("PAUSE_SD").unlink()
        assert _exit_code(pid) == 0
        assert not root.file("PAUSED_SD").exists()
        assert_matches(db_state(root.db_path), expected_state(_catalogue(server, 80, epoch)))


def test_sigkill_at_random_moments_then_resume(tmp_path):
    epoch = int(time.time())
    rng = random.Random(1234)
    with ServerProcess(listings=240, epoch=epoch) as server:
        root = make_root(tmp_path / "root", server.base_url, sync={"page_size": 10}, qps=60)
        kills = 0
        finished = False
        for _ in range(20):
            # kill after a random number of new requests, a few random milliseconds later,
            # so the kill lands anywhere in fetching, writing or committing a page
            seen = server.stats()["counters"].get("requests", 0)
            wanted = seen + rng.randint(1, 8)
            pid = _fork_sync(root)
            deadline = time.monotonic() + 30
            status = None
            while server.stats()["counters"].get("requests", 0) < wanted and time.monotonic() < deadline:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    break
                status = None
                time.sleep(0.003)
            if status is None:
                time.sleep(rng.uniform(0, 0.02))
                os.kill(pid, signal.SIGKILL)  # a zombie at worst: not reaped yet
                _, status = os.waitpid(pid, 0)
            if os.WIFEXITED(status):
                assert os.WEXITSTATUS(status) == 0, "the sync failed on its own"
                finished = True
                break
            kills += 1
        if not finished:
            assert _exit_code(_fork_sync(root)) == 0
        assert kills >= 5, "the crawl finished too soon to test anything"
        stats = server.stats()
        assert_matches(db_state(root.db_path), expected_state(_catalogue(server, 240, epoch)))
        _no_duplicates(root.db_path)
        # each kill may cost the page (or shop) in hand, nothing more
        assert _refetched(stats["search"]) <= kills
        assert _refetched(stats["batch"]) <= kills
        assert _refetched(stats["shops"]) <= kills
        conn = sqlite3.connect(root.db_path)
        outcomes = [r[0] for r in conn.execute("SELECT outcome FROM stage_runs ORDER BY run_id")]
        conn.close()
        # a child killed before it recorded its start leaves no row; every other is closed
        assert outcomes.count("crashed") >= 1 and outcomes[-1] == "ok"
        assert None not in outcomes


def test_sigkill_of_a_real_cli_process_then_resume(tmp_path):
    epoch = int(time.time())
    with ServerProcess(listings=150, epoch=epoch) as server:
        root = make_root(tmp_path / "root", server.base_url, sync={"page_size": 10}, qps=20)
        env = dict(os.environ)
        env.pop("IMAGESELECTOR_ROOT", None)
        argv = [sys.executable, "-m", "imageselector", "--root", str(root.path), "run", "sync", "--once"]
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda: server.stats()["counters"].get("batch", 0) >= 3, timeout=60,
                     what="the CLI crawl to get going")
        finally:
            proc.kill()
            proc.wait()
        assert proc.returncode == -signal.SIGKILL
        _lift_rate(root)
        done = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "ended without recording an exit" in root.log_path("sync").read_text()
        stats = server.stats()
        assert_matches(db_state(root.db_path), expected_state(_catalogue(server, 150, epoch)))
        _no_duplicates(root.db_path)
        assert _refetched(stats["search"]) <= 1 and _refetched(stats["batch"]) <= 1
