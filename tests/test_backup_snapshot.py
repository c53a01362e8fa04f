"""Snapshots: restore drill, links and retention, writers running, faults, kills."""
from __future__ import annotations

import json
import os
import random
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.stages.backup.generations import generations
from pipeline.stages.backup.restore import restore
from pipeline.stages.backup.snapshot import snapshot
from pipeline.stages.backup.status import backup_status
from pipeline.stages.backup.targets import load_targets
from pipeline.stages.backup.verify import verify_generation
from pipeline.core.db import connect
from tests.archive_support import (add_images, cli, fork_and_kill, grow_db, try_mount_tmpfs,
                                   umount, write_config, write_shard)


def _root_with_target(tmp_root, target_path, extra="", kind="folder"):
    # no disk floor (tests/test_disk_floors.py has it): these tests reach the copy's own checks
    root = write_config(tmp_root, f'[backup.targets.main]\nkind = "{kind}"\npath = "{target_path}"\n'
                                  f'generations = 3\n{extra}\n[disk]\nbackup_min_free_gb = 0.0')
    add_images(root, 40)
    write_shard(root, 40)
    return root


def _snap(root):
    conn = connect(root.db_path)
    try:
        return snapshot(root, conn, load_targets(root)[0])
    finally:
        conn.close()


def _status(root):
    conn = connect(root.db_path)
    try:
        return {s["target"]: s for s in backup_status(root, conn)}
    finally:
        conn.close()


def test_restore_drill_on_the_command_line(tmp_root, tmp_path):
    root = _root_with_target(tmp_root, tmp_path / "bk", "create = true")
    proc = cli("run", "backup", "--once", root=root)
    assert proc.returncode == 0, proc.stderr
    gens = generations(tmp_path / "bk")
    assert len(gens) == 1
    gen = gens[0]
    assert not os.stat(gen).st_mode & 0o222 and not os.stat(gen / "data/db/etsy_data.db").st_mode & 0o222
    manifest = json.loads((gen / "MANIFEST.json").read_text())
    assert manifest["checks"]["quick_check"] == "ok"
    assert "data/embeddings/shard_0000/image_index.json" in manifest["files"]
    status = json.loads(cli("backup", "status", "--json", root=root).stdout)
    assert status[0]["target"] == "main" and status[0]["verified"] is True
    assert status[0]["overdue"] is False and status[0]["age_s"] >= 0 and status[0]["last_success"]
    into = tmp_path / "restored"
    proc = cli("backup", "restore", "--target", "main", "--into", into, root=root)
    assert proc.returncode == 0, proc.stderr
    proc = cli("status", "--json", root=into)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["queues"]["embedded"] == 40
    assert (into / "data/embeddings/shard_0000/parts/b000001.ids.npy").exists()
    # a restore never overwrites a root
    proc = cli("backup", "restore", "--target", "main", "--into", into, root=root)
    assert proc.returncode == 2 and "not empty" in proc.stderr


def test_status_shows_a_target_no_longer_configured_and_survives_a_bad_backup_config(tmp_root, tmp_path):
    """One backups view (status --json, the console, backup status): a renamed target keeps its
    history, the new one is overdue until it runs; a backup config that does not parse still
    shows what the DB remembers, with the error named."""
    root = _root_with_target(tmp_root, tmp_path / "bk", "create = true")
    assert _snap(root).ok
    text = root.config_path.read_text().replace("[backup.targets.main]", "[backup.targets.fresh]")
    root.config_path.write_text(text)
    snap = json.loads(cli("status", "--json", root=root).stdout)
    by_name = {b["target"]: b for b in snap["backups"]}
    assert by_name["main"]["configured"] is False and by_name["main"]["last_success"]
    assert by_name["main"]["overdue"] is False
    assert by_name["fresh"]["configured"] is True and by_name["fresh"]["overdue"] is True
    assert by_name["fresh"]["last_success"] is None
    out = cli("status", root=root).stdout
    assert "no longer configured" in out and "OVERDUE" in out
    root.config_path.write_text(text.replace('kind = "folder"', 'kind = "tape"'))
    proc = cli("status", "--json", root=root)
    snap = json.loads(proc.stdout)
    assert [b["target"] for b in snap["backups"]] == ["main"]
    assert any(e.startswith("backups: ") and "tape" in e for e in snap["errors"])


def test_index_verify_on_the_restored_root(tmp_root, tmp_path):
    probe = cli("index", "verify", "--help")
    if probe.returncode != 0:
        pytest.skip("`imageselector index verify` does not exist yet (index store issue); "
                    "the restore drill above covers status")
    from pipeline.index import open_store
    from tests.index_support import FP, add_batch, vectors_for

    root = write_config(tmp_root, f'[backup.targets.main]\nkind = "folder"\npath = "{tmp_path / "bk"}"\n'
                                  f'create = true\n')
    conn = connect(root.db_path)
    for b in (1, 2):
        ids = add_batch(conn, b, 20, 1000 * b)
        open_store(root, conn).import_batch(b, ids, vectors_for(ids), FP, conn)
    out = snapshot(root, conn, load_targets(root)[0])
    conn.close()
    assert out.ok, out.error
    into = tmp_path / "restored"
    restore(generations(tmp_path / "bk")[-1], into)
    proc = cli("index", "verify", root=into)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert cli("status", root=into).returncode == 0


def test_unchanged_files_are_linked_and_generations_rotate(tmp_root, tmp_path):
    root = _root_with_target(tmp_root, tmp_path / "bk", "create = true")
    for _ in range(4):
        assert _snap(root).ok
    gens = generations(tmp_path / "bk")
    assert len(gens) == 3                          # retention
    rel = "data/embeddings/shard_0000/parts/b000001.ids.npy"
    assert os.stat(gens[0] / rel).st_ino == os.stat(gens[-1] / rel).st_ino   # copied once
    assert os.stat(gens[0] / "data/db/etsy_data.db").st_ino != os.stat(gens[-1] / "data/db/etsy_data.db").st_ino
    # a changed file is copied again
    (root.embeddings_dir / "shard_0000" / "clip_vitb32.faiss").write_bytes(os.urandom(9000))
    assert _snap(root).ok
    new = generations(tmp_path / "bk")[-1]
    assert os.stat(new / "data/embeddings/shard_0000/clip_vitb32.faiss").st_size == 9000
    assert verify_generation(new) == []


WRITER = r"""
import sys, time, sqlite3
db, tag = sys.argv[1], sys.argv[2]
conn = sqlite3.connect(db, timeout=30, isolation_level=None)
conn.execute("PRAGMA busy_timeout = 30000")
i = 0
while True:
    i += 1
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO alerts(at, kind, text) VALUES (?, ?, ?)", (time.time(), tag, "w" * 500))
    conn.execute("COMMIT")
    time.sleep(0.002)
"""


def test_backup_while_writers_keep_writing(tmp_root, tmp_path):
    root = _root_with_target(tmp_root, tmp_path / "bk", "create = true")
    grow_db(root, 3)
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(root.db_path), f"w{k}"])
               for k in range(2)]
    try:
        conn = connect(root.db_path)
        deadline = time.monotonic() + 20
        while conn.execute("SELECT COUNT(*) FROM alerts WHERE kind LIKE 'w%'").fetchone()[0] < 50:
            assert time.monotonic() < deadline, "writers did not start"
            time.sleep(0.05)
        committed = {k: conn.execute("SELECT MAX(alert_id) FROM alerts WHERE kind = ?", (k,)).fetchone()[0]
                     for k in ("w0", "w1")}
        before = conn.execute("SELECT COUNT(*) FROM alerts WHERE kind LIKE 'w%'").fetchone()[0]
        out = snapshot(root, conn, load_targets(root)[0])
        after = conn.execute("SELECT COUNT(*) FROM alerts WHERE kind LIKE 'w%'").fetchone()[0]
        conn.close()
    finally:
        for w in writers:
            w.kill()
            w.wait()
    assert out.ok, out.error
    copy = sqlite3.connect(f"file:{out.path}/data/db/etsy_data.db?mode=ro&immutable=1", uri=True)
    assert copy.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    for k, max_id in committed.items():
        got = copy.execute("SELECT COUNT(*) FROM alerts WHERE kind = ? AND alert_id <= ?", (k, max_id)).fetchone()[0]
        total = copy.execute("SELECT COUNT(*) FROM alerts WHERE alert_id <= ?", (max_id,)).fetchone()[0]
        assert got > 0 and total == max_id      # every row committed before the backup began
    copy.close()
    assert after > before                       # the writers were really running meanwhile


def test_missing_target_fails_clearly_and_keeps_the_last_good(tmp_root, tmp_path):
    root = _root_with_target(tmp_root, tmp_path / "bk", "create = false")
    (tmp_path / "bk").mkdir()
    assert _snap(root).ok
    good = generations(tmp_path / "bk")[-1]
    os.rename(tmp_path / "bk", tmp_path / "bk_away")
    out = _snap(root)
    assert not out.ok and "does not exist" in out.error
    st = _status(root)["main"]
    assert st["last_error"] and "does not exist" in st["last_error"] and st["last_success"]
    os.rename(tmp_path / "bk_away", tmp_path / "bk")
    assert generations(tmp_path / "bk") == [good] and verify_generation(good) == []
    proc = cli("run", "backup", "--once", root=root, env_extra={
        "IMAGESELECTOR_BACKUP_TARGETS": json.dumps({"main": {"kind": "folder", "path": str(tmp_path / "nope")}})})
    assert proc.returncode == 1                 # the stage reports the failure


def test_volume_target_that_is_not_a_mount_point_is_refused(tmp_root, tmp_path):
    (tmp_path / "vol").mkdir()
    root = _root_with_target(tmp_root, tmp_path / "vol", kind="volume")
    out = _snap(root)
    assert not out.ok and "not a mounted volume" in out.error
    assert os.listdir(tmp_path / "vol") == []   # nothing written into the empty mount point


@pytest.fixture
def tmpfs(tmp_path):
    mounts = []

    def make(name, size="2m", readonly=False):
        p = tmp_path / name
        if not try_mount_tmpfs(p, size, readonly):
            return None
        mounts.append(p)
        return p

    yield make
    for p in mounts:
        umount(p)


def test_full_target_fails_and_keeps_the_last_good(tmp_root, tmp_path, tmpfs):
    vol = tmpfs("vol", "2m")
    if vol is None:
        # no tmpfs here (not root): the same check through a simulated quota
        (tmp_path / "vol").mkdir()
        root = _root_with_target(tmp_root, tmp_path / "vol", "max_bytes = 2000000")
    else:
        root = _root_with_target(tmp_root, vol, kind="volume")
    assert _snap(root).ok
    good = generations(Path(load_targets(root)[0].path))[-1]
    grow_db(root, 3)
    out = _snap(root)
    assert not out.ok and "full" in out.error
    st = _status(root)["main"]
    assert "full" in st["last_error"] and st["last_success"]
    assert generations(good.parent) == [good] and verify_generation(good) == []
    assert not [n for n in os.listdir(good.parent) if n.endswith(".tmp")]


def test_enospc_in_the_middle_of_the_copy_is_a_clean_failure(tmp_root, tmp_path, tmpfs, monkeypatch):
    vol = tmpfs("vol", "2m")
    if vol is None:
        pytest.skip("cannot mount a tmpfs here (needs root); the quota test covers a full target")
    root = _root_with_target(tmp_root, vol, kind="volume")
    assert _snap(root).ok
    good = generations(vol)[-1]
    grow_db(root, 3)
    import pipeline.stages.backup.snapshot as backup

    monkeypatch.setattr(backup, "_free_bytes", lambda p: 10 ** 12)   # the pre-check is fooled
    out = _snap(root)
    assert not out.ok and "full" in out.error
    assert generations(vol) == [good] and verify_generation(good) == []
    assert not [n for n in os.listdir(vol) if n.endswith(".tmp")]


def test_not_writable_target_fails_clearly(tmp_root, tmp_path, tmpfs):
    vol = tmpfs("ro", "1m", readonly=True)
    if vol is None:
        if os.geteuid() == 0:
            pytest.skip("running as root without mount: a folder cannot be made unwritable")
        vol = tmp_path / "ro"
        vol.mkdir()
        vol.chmod(0o555)
    root = _root_with_target(tmp_root, vol, kind="folder")
    out = _snap(root)
    assert not out.ok and "not writable" in out.error


def test_sigkill_during_backup_keeps_the_previous_one_restorable(tmp_root, tmp_path):
    root = _root_with_target(tmp_root, tmp_path / "bk", "create = true")
    grow_db(root, 2)
    rng = random.Random(5)
    assert _snap(root).ok
    t = time.monotonic()
    assert _snap(root).ok
    duration = time.monotonic() - t
    for i in range(20):
        fork_and_kill(lambda: _snap(root), rng.uniform(0, duration * 1.2))
        gens = generations(tmp_path / "bk")
        assert gens, "no complete generation left"
        assert verify_generation(gens[-1], full=False) == []
    into = tmp_path / "restored"
    restore(generations(tmp_path / "bk")[-1], into)
    assert connect(into / "data/db/etsy_data.db").execute("PRAGMA quick_check").fetchone()[0] == "ok"
    # the next run cleans up and records the killed ones as failed
    proc = cli("run", "backup", "--once", root=root)
    assert proc.returncode == 0, proc.stderr
    assert not [n for n in os.listdir(tmp_path / "bk") if n.endswith(".tmp")]
    conn = connect(root.db_path)
    assert conn.execute("SELECT COUNT(*) FROM backups WHERE finished_at IS NULL").fetchone()[0] == 0
    conn.close()


def test_verify_finds_a_damaged_generation(tmp_root, tmp_path):
    root = _root_with_target(tmp_root, tmp_path / "bk", "create = true")
    assert _snap(root).ok
    gen = generations(tmp_path / "bk")[-1]
    victim = gen / "data/embeddings/shard_0000/clip_vitb32.faiss"
    os.chmod(victim.parent, 0o755)
    os.chmod(victim, 0o644)
    with open(victim, "r+b") as fh:
        fh.write(b"\xff" * 16)
    proc = cli("backup", "verify", root=root)
    assert proc.returncode == 1 and "checksum" in proc.stdout
    assert _status(root)["main"]["verified"] is False


def test_one_inode_under_two_names_is_copied_once(tmp_path):
    """An adopted shard's part and its derived index are one file: the snapshot keeps them
    one file too, instead of doubling those vectors on the backup disk."""
    import os

    from pipeline.stages.backup.verify import verify_generation
    from pipeline.core.db import open_db
    from pipeline.core.root import Root
    from tests.support import run_cli

    root = Root(tmp_path / "root").ensure()
    open_db(root).close()
    root.config_path.write_text(f'[backup.targets.t]\nkind = "folder"\npath = "{tmp_path / "bk"}"\n'
                                "create = true\n")
    shard = root.embeddings_dir / "extra"
    shard.mkdir(parents=True)
    (shard / "a.part").write_bytes(os.urandom(200_000))
    os.link(shard / "a.part", shard / "b.faiss")
    out = run_cli("run", "backup", "--once", root=root)
    assert out.returncode == 0, out.stderr
    (gen,) = [p for p in (tmp_path / "bk").iterdir() if p.name.startswith("data_")]
    a, b = gen / "data/embeddings/extra/a.part", gen / "data/embeddings/extra/b.faiss"
    assert a.read_bytes() == b.read_bytes() == (shard / "a.part").read_bytes()
    assert os.stat(a).st_ino == os.stat(b).st_ino
    assert verify_generation(gen) == []
