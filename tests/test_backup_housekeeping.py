"""Housekeeping: log rotation for every stage log, disk use per folder."""
from __future__ import annotations

import json
import os

from pipeline.core.fsutil import read_json_or_none
from pipeline.core.housekeeping import disk_section, refresh_disk_usage, rotate_logs
from tests.archive_support import add_images, cli
from tests.support import wait_for


def test_logs_over_the_limit_rotate_and_old_ones_drop(tmp_root):
    logs = tmp_root.logs_dir
    (logs / "sync.log").write_text("a" * 200)
    (logs / "tar.log").write_text("b" * 10)
    for i in range(3):
        assert rotate_logs(tmp_root, max_bytes=100, keep=2) == (["sync.log"] if i == 0 else [])
        (logs / "sync.log").write_text(str(i) * 200)
        if i < 2:
            rotate_logs(tmp_root, max_bytes=100, keep=2)
    names = sorted(p.name for p in logs.iterdir())
    assert names == ["sync.log", "sync.log.1", "sync.log.2", "tar.log"]
    assert (logs / "sync.log.1").read_text() == "1" * 200
    assert (logs / "sync.log.2").read_text() == "0" * 200
    assert (logs / "tar.log").read_text() == "b" * 10


def test_a_running_stage_follows_the_rotation_and_no_line_is_lost(tmp_root):
    """The log of a live, detached stage is renamed, not copied and truncated: the stage's
    next line opens a new log, and its stdout/stderr (the detached log) follow it."""
    root = tmp_root
    add_images(root, 5)
    assert cli("start", "selftest", "--work-s", "0.05", root=root).returncode == 0
    pid = read_json_or_none(root.heartbeat_path("selftest"))["pid"]
    try:
        log = root.log_path("selftest")
        before = log.read_text()
        assert "started selftest" in before
        assert rotate_logs(root, max_bytes=0, keep=3) == ["selftest.log"]
        assert root.logs_dir.joinpath("selftest.log.1").read_text().startswith(before)
        root.file("PAUSE_SELFTEST").touch()       # makes the stage log a line
        wait_for(lambda: log.exists() and "paused (PAUSE_SELFTEST present)" in log.read_text(),
                 what="the stage to write its next line into a new selftest.log")
        for fd in (1, 2):
            assert os.readlink(f"/proc/{pid}/fd/{fd}") == str(log)
        root.file("PAUSE_SELFTEST").unlink()
        wait_for(lambda: "resumed" in log.read_text(), what="resumed")
    finally:
        assert cli("stop", "selftest", "--wait", root=root).returncode == 0
    rotated = root.logs_dir.joinpath("selftest.log.1").read_text()
    current = log.read_text()
    assert "paused" not in rotated and "started selftest" not in current
    assert "stopped" in current or "kill file seen" in current


def test_disk_use_per_folder_is_cached_for_the_console(tmp_root):
    add_images(tmp_root, 10)
    assert disk_section(tmp_root, None) is None
    usage = refresh_disk_usage(tmp_root, max_age_s=0)
    by = {f["folder"]: f for f in usage["folders"]}
    assert by["images/imageall_new"]["files"] == 10 and by["images/imageall_new"]["bytes"] > 0
    assert by["data/db"]["bytes"] > 0 and by["data/db"]["free_bytes"] > 0
    assert disk_section(tmp_root, None)["folders"] == usage["folders"]
    proc = cli("housekeeping", "--json", root=tmp_root)
    assert proc.returncode == 0, proc.stderr
    assert "disk" in json.loads(proc.stdout)
