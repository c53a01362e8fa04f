"""Resume after SIGKILL, the kill file, the disk floor: DB and disk always agree.

A real `imageselector run download` process is killed and stopped; a loop of ~20 random
SIGKILLs runs the stage in forked children of this (already imported) process."""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

import download_support as ds
from support import wait_for

pytestmark = pytest.mark.timeout(180)


def _cli(root, *args) -> list[str]:
    return [sys.executable, "-m", "imageselector", "--root", str(root.path), "run", "download", *args]


def _downloaded(root) -> int:
    return sum(1 for r in ds.db_rows(root).values() if r["state"] == "downloaded")


def _serve_many(server, root, n, lid=7) -> dict:
    sources = {}
    rows = []
    for i in range(n):
        body = ds.jpeg_bytes(64, 48, seed=1000 + i)
        sources[(lid, i)] = body
        rows.append((lid, i, server.add(f"/m{i}.jpg", body)))
    ds.seed(root, rows)
    return sources


def test_resume_after_sigkill_of_real_process(tmp_root):
    root = tmp_root
    ds.write_config(root)
    with ds.ImageServer(delay_s=0.02) as server:
        sources = _serve_many(server, root, 300)
        proc = subprocess.Popen(_cli(root, "--once", "--workers", "4"), env=ds.env_for(root),
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda: _downloaded(root) >= 30 or proc.poll() is not None, timeout=60,
                     what="some images downloaded")
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
        before = ds.db_rows(root)
        done_before = {k for k, r in before.items() if r["state"] == "downloaded"}
        assert 0 < len(done_before) < 300
        # Mid-run state: every downloaded row has its whole file; no file is partial.
        for name, data in ds.disk_files(root).items():
            lid, iid = map(int, name[:-4].split("_"))
            assert data == sources[(lid, iid)], name
        for lid, iid in done_before:
            assert (root.download_dir / f"{lid}_{iid}.jpg").exists()

        done = subprocess.run(_cli(root, "--once"), env=ds.env_for(root), stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
    rows = ds.check_db_matches_disk(root, sources)
    assert all(r["state"] == "downloaded" for r in rows.values())
    assert len(ds.disk_files(root)) == 300
    hb = json.loads(root.heartbeat_path("download").read_text())
    assert hb["last_exit"] is None or hb["exit"]["outcome"] == "ok"


def _child_run(root) -> None:
    """In a forked child: run the stage, exit without running the parent's atexit hooks."""
    code = 1
    try:
        from pipeline.core.stage_runtime import run_stage

        code = run_stage(root, "download", once=True, install_signals=False,
                         args=argparse.Namespace(once=True, workers=4, max_in_flight=None,
                                                 per_host=None))
    finally:
        os._exit(code)


def test_random_sigkill_loop_keeps_db_and_disk_in_step(tmp_root):
    root = tmp_root
    ds.write_config(root, commit_interval_s=0.05, commit_batch=7)
    rng = random.Random(4)
    with ds.ImageServer(delay_s=0.01) as server:
        sources = _serve_many(server, root, 500)
        kills = 0
        for _ in range(20):
            pid = os.fork()
            if pid == 0:
                _child_run(root)
            time.sleep(rng.uniform(0.05, 0.5))
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            kills += os.WIFSIGNALED(status)
            # At any kill moment: downloaded rows have their whole files; no partial file
            # under a final name (a whole file may wait for adoption: row still discovered).
            rows = ds.db_rows(root)
            files = ds.disk_files(root)
            for (lid, iid), r in rows.items():
                assert r["state"] in ("discovered", "downloaded"), r
                if r["state"] == "downloaded":
                    assert files[f"{lid}_{iid}.jpg"] == sources[(lid, iid)]
            for name, data in files.items():
                lid, iid = map(int, name[:-4].split("_"))
                assert data == sources[(lid, iid)], name
        assert kills >= 10
        progress = sum(r["state"] == "downloaded" for r in ds.db_rows(root).values())
        assert 0 < progress
        pid = os.fork()
        if pid == 0:
            _child_run(root)
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    rows = ds.check_db_matches_disk(root, sources)
    assert all(r["state"] == "downloaded" for r in rows.values())


def test_kill_file_stops_within_seconds_db_and_disk_agree(tmp_root):
    root = tmp_root
    ds.write_config(root)
    with ds.ImageServer(delay_s=0.03) as server:
        sources = _serve_many(server, root, 600)
        proc = subprocess.Popen(_cli(root, "--workers", "4"), env=ds.env_for(root),
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda: _downloaded(root) >= 20, timeout=60, what="downloads")
            root.file("KILL_DL").touch()
            proc.wait(timeout=30)  # a hang guard; the stop itself takes well under a second
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0
    assert not root.file("KILL_DL").exists()
    rows = ds.check_db_matches_disk(root, sources)
    states = [r["state"] for r in rows.values()]
    assert 20 <= states.count("downloaded") < 600
    assert states.count("downloaded") + states.count("discovered") == 600
    hb = json.loads(root.heartbeat_path("download").read_text())
    assert hb["exit"]["outcome"] == "stopped"
    assert hb["counters"]["done"] == states.count("downloaded")


def test_kill_file_releases_stalled_downloads(tmp_root):
    """Downloads stuck in a stalled body are released after stop_grace_s, not waited for
    until their 600 s read timeout; their images stay discovered, with no file."""
    root = tmp_root
    ds.write_config(root, read_timeout_s=600.0, stop_grace_s=0.5)
    with ds.ImageServer() as server:
        ds.seed(root, [(8, i, server.add(f"/s{i}", ds.jpeg_bytes(200, 150, seed=i), mode="stall"))
                       for i in range(6)])
        proc = subprocess.Popen(_cli(root, "--workers", "4"), env=ds.env_for(root),
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        try:
            wait_for(lambda: server.active >= 4, timeout=60, what="4 stalled downloads")
            root.file("KILL_DL").touch()
            # a hang guard far below the read timeout: only released stalls let the stage end in time
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, proc.stderr.read()[-2000:]
    rows = ds.check_db_matches_disk(root)
    assert {r["state"] for r in rows.values()} == {"discovered"}
    log = root.log_path("download").read_text()
    assert "released" in log


def test_disk_floor_blocks_the_stage(tmp_root):
    root = tmp_root
    ds.write_config(root)
    with ds.ImageServer() as server:
        ds.seed(root, [(9, 1, server.add("/d1", ds.jpeg_bytes()))])
        env = ds.env_for(root, IMAGESELECTOR_DISK_MIN_FREE_GB="1000000000")
        proc = subprocess.Popen(_cli(root), env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            def blocked():
                hb = ds_read_json(root.heartbeat_path("download"))
                return hb and hb.get("state") == "blocked" and hb
            hb = wait_for(blocked, timeout=60, what="blocked heartbeat")
            assert hb["blocked_reason"].startswith(f"disk low: {root.download_dir} ")
            from pipeline.core.stage_observe import stage_status

            assert stage_status(root, "download")["state"] == "blocked"
            assert server.requests == 0
            root.file("KILL_DL").touch()
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0
    assert ds.db_rows(root)[(9, 1)]["state"] == "discovered"
    assert ds.disk_files(root) == {}


def ds_read_json(path):
    from pipeline.core.fsutil import read_json_or_none

    return read_json_or_none(path)


def test_pause_drains_commits_and_resumes(tmp_root):
    root = tmp_root
    ds.write_config(root)
    with ds.ImageServer(delay_s=0.03) as server:
        sources = _serve_many(server, root, 400)
        proc = subprocess.Popen(_cli(root, "--workers", "4"), env=ds.env_for(root),
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda: _downloaded(root) >= 10, timeout=60, what="downloads")
            root.file("PAUSE_DL").touch()
            wait_for(lambda: root.file("PAUSED_DL").exists(), timeout=30, what="PAUSED_DL")
            # Paused: everything handed out finished and was committed; nothing new starts.
            seen = server.requests
            paused_rows = ds.check_db_matches_disk(root, sources)
            time.sleep(0.5)
            assert server.requests == seen
            assert ds.db_rows(root) == paused_rows
            root.file("PAUSE_DL").unlink()
            done_at_pause = sum(r["state"] == "downloaded" for r in paused_rows.values())
            wait_for(lambda: _downloaded(root) > done_at_pause, timeout=60, what="resumed downloads")
            root.file("KILL_DL").touch()
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0
    assert not root.file("PAUSED_DL").exists()
    ds.check_db_matches_disk(root, sources)
