"""Housekeeping: log rotation for every stage log, disk use per folder."""
from __future__ import annotations

import json

from pipeline.housekeeping import disk_section, refresh_disk_usage, rotate_logs
from tests.archive_support import add_images, cli


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
