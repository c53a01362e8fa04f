"""The tar stage on the command line: --once archives full ranges, the run is recorded."""
from __future__ import annotations

import json
import tarfile

from pipeline.core.db import connect
from tests.archive_support import add_images, cli, write_config


def test_run_tar_once_archives_and_records(tmp_root):
    root = write_config(tmp_root, "[archive]\nimages_per_tar = 10\nverify_sample = 3")
    add_images(root, 25)
    proc = cli("run", "tar", "--once", root=root)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in root.tars_dir.glob("*.tar")) == ["imageall_00000.tar", "imageall_00001.tar"]
    assert len(list(root.bgremoved_dir.iterdir())) == 5
    idx = json.loads((root.tars_dir / "tar_index.json").read_text())
    assert len(idx["reverse"]) == 20
    conn = connect(root.db_path)
    assert conn.execute("SELECT outcome FROM stage_runs WHERE stage = 'tar'").fetchone()[0] == "ok"
    assert conn.execute("SELECT n FROM queue_counts WHERE state = 'tarred'").fetchone()[0] == 20
    conn.close()
    hb = json.loads(root.heartbeat_path("tar").read_text())
    assert hb["counters"]["tars"] == 2 and hb["counters"]["done"] == 20
    with tarfile.open(root.tars_dir / "imageall_00001.tar") as tf:
        assert len(tf.getmembers()) == 10


def test_unmounted_tars_disk_blocks_with_a_clear_failure(tmp_root):
    root = tmp_root
    root.tars_dir.rmdir()
    root.tars_dir.symlink_to(root.path / "no_such_disk" / "imageall_tars")
    add_images(root, 3)
    proc = cli("run", "tar", "--once", root=root)
    assert proc.returncode == 1
    conn = connect(root.db_path)
    reason = conn.execute("SELECT reason FROM stage_runs WHERE stage = 'tar'").fetchone()[0]
    conn.close()
    assert "not there" in reason
