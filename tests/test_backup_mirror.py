"""Mirrors by rsync: the DB copied with writers paused, verification, clear failures."""
from __future__ import annotations

import json
import os
import shutil
import sqlite3

import pytest

from pipeline.stages.backup.mirror import mirror
from pipeline.stages.backup.status import backup_status
from pipeline.stages.backup.targets import load_mirrors
from pipeline.stages.backup.verify import verify_mirror
from pipeline.core.db import connect
from tests.archive_support import add_images, cli, write_config, write_shard
from tests.support import wait_for

pytestmark = pytest.mark.skipif(shutil.which("rsync") is None,
                                reason="rsync is not installed (apt-get install -y rsync)")


def _root(tmp_root, dest, extra=""):
    root = write_config(tmp_root, f'[backup.mirrors.ssd]\nkind = "folder"\ndest = "{dest}"\ncreate = true\n'
                                  f'sources = ["data", "images/imageprimary"]\njob = "mirror-data"\n{extra}')
    add_images(root, 30)
    write_shard(root, 30)
    (root.primary_dir / "imageprimary_00000.tar").write_bytes(os.urandom(20000))
    return root


def _status(root):
    conn = connect(root.db_path)
    try:
        return {s["target"]: s for s in backup_status(root, conn)}
    finally:
        conn.close()


def test_mirror_pauses_writers_copies_db_and_verifies(tmp_root, tmp_path):
    root = _root(tmp_root, tmp_path / "mirror", '[archive]\npoll_s = 0.2\n[stage]\npoll_s = 0.05\n')
    proc = cli("start", "tar", root=root)          # a live writer with a pause protocol
    assert proc.returncode == 0, proc.stderr
    try:
        conn = connect(root.db_path)
        m = load_mirrors(root)[0]
        out = mirror(root, conn, m)
        assert out.ok, out.error
        ver = verify_mirror(root, conn, m)
        assert ver.ok, ver.error
        conn.close()
        # the mirror removes PAUSE_TAR on its way out; the stage logs "resumed" at its next poll
        wait_for(lambda: "resumed" in root.log_path("tar").read_text(),
                 what="the tar stage to log that it resumed")
        log = root.log_path("tar").read_text()
        assert "paused (PAUSE_TAR present)" in log
        assert not root.file("PAUSE_TAR").exists()
    finally:
        cli("stop", "tar", "--wait", root=root)
    db = tmp_path / "mirror" / "data" / "db" / "etsy_data.db"
    copy = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    assert copy.execute("PRAGMA quick_check").fetchone()[0] == "ok"
    assert copy.execute("SELECT COUNT(*) FROM image_status").fetchone()[0] == 30
    copy.close()
    assert (tmp_path / "mirror/data/embeddings/shard_0000/parts/b000001.ids.npy").exists()
    assert (tmp_path / "mirror/images/imageprimary/imageprimary_00000.tar").stat().st_size == 20000
    st = _status(root)["ssd"]
    assert st["kind"] == "mirror" and st["verified"] is True and st["last_success"]
    # --delete: a file gone from the source goes from the mirror at the next run
    (root.primary_dir / "imageprimary_00000.tar").unlink()
    conn = connect(root.db_path)
    assert mirror(root, conn, m).ok
    conn.close()
    assert not (tmp_path / "mirror/images/imageprimary/imageprimary_00000.tar").exists()


def test_verification_catches_a_short_file(tmp_root, tmp_path):
    root = _root(tmp_root, tmp_path / "mirror")
    conn = connect(root.db_path)
    m = load_mirrors(root)[0]
    assert mirror(root, conn, m).ok
    with open(tmp_path / "mirror/images/imageprimary/imageprimary_00000.tar", "r+b") as fh:
        fh.truncate(100)
    ver = verify_mirror(root, conn, m)
    conn.close()
    assert not ver.ok and "1 of another size" in ver.error
    assert _status(root)["ssd"]["verified"] is False


def test_missing_rsync_is_a_clear_failure(tmp_root, tmp_path):
    root = _root(tmp_root, tmp_path / "mirror", '[backup]\nrsync = "rsync-not-installed-here"\n')
    conn = connect(root.db_path)
    out = mirror(root, conn, load_mirrors(root)[0])
    conn.close()
    assert not out.ok and "rsync is not installed" in out.error
    st = _status(root)["ssd"]
    assert st["last_success"] is None and st["overdue"] is True and "rsync" in st["last_error"]


def test_unmounted_volume_mirror_fails_and_the_stage_says_so(tmp_root, tmp_path):
    (tmp_path / "vol").mkdir()
    root = write_config(tmp_root, f'[backup.mirrors.hdd]\nkind = "volume"\ndest = "{tmp_path / "vol"}"\n'
                                  f'sources = ["images/imageprimary"]\njob = "mirror-tars"\n')
    proc = cli("run", "backup", "--once", "--job", "mirror-tars", root=root)
    assert proc.returncode == 1
    st = json.loads(cli("backup", "status", "--json", root=root).stdout)
    assert st[0]["target"] == "hdd" and "not a mounted volume" in st[0]["last_error"]
    assert os.listdir(tmp_path / "vol") == []
    # a job with nothing configured is a quiet no-op
    assert cli("run", "backup", "--once", "--job", "mirror-data-nightly", root=root).returncode == 0
