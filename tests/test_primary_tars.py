"""Primary tars: append-only updates, lookups by listing id, --full, crash recovery."""
from __future__ import annotations

import hashlib
import json
import os
import random
import tarfile

import pytest

from pipeline.core.db import connect, transaction
from pipeline.stages.archive.primary import (BIN_NAME, JSON_NAME, PrimaryUpdater, load_state, open_primary,
                              primary_location)
from pipeline.stages.archive.tars import Archiver
from tests.archive_support import add_images, cli, fake_jpeg, fork_and_kill, write_config


@pytest.fixture
def root(tmp_root):
    return write_config(tmp_root, "[archive]\nimages_per_tar = 12\nverify_sample = 2\nprimary_per_tar = 5")


def _update(root, full=False, between=None):
    conn = connect(root.db_path)
    try:
        return PrimaryUpdater(root, conn).update(full=full, between=between)
    finally:
        conn.close()


def _tar_some(root):
    conn = connect(root.db_path)
    arch = Archiver(root, conn)
    for plan in arch.next_plans():
        arch.write(plan)
    conn.close()


def _primaries(root):
    conn = connect(root.db_path)
    try:
        return dict(conn.execute("SELECT listing_id, image_id FROM images WHERE is_primary = 1"))
    finally:
        conn.close()


def _check_all(root, expect_n=None):
    prim = _primaries(root)
    conn = connect(root.db_path)
    embedded = {l for (l,) in conn.execute(
        "SELECT i.listing_id FROM images i JOIN image_status s USING (listing_id, image_id) "
        "WHERE i.is_primary = 1 AND s.state IN ('embedded', 'tarred')")}
    conn.close()
    for lid in embedded:
        data = open_primary(root, lid)
        assert data == fake_jpeg(lid, prim[lid]), lid
        loc = primary_location(root, lid)
        assert loc["path"].endswith(".tar") and loc["size"] == len(data)
    if expect_n is not None:
        assert len(load_state(root.primary_dir).records) == expect_n


def test_primaries_from_tars_and_loose_files(root):
    add_images(root, 30)                  # 10 listings, rank 1 is primary
    _tar_some(root)                       # rows 0-23 tarred, the rest loose
    res = _update(root)
    assert res.added == 10 and res.skipped == 0
    _check_all(root, 10)
    names = sorted(p.name for p in root.primary_dir.glob("*.tar"))
    assert names == ["imageprimary_00000.tar", "imageprimary_00001.tar"]
    with tarfile.open(root.primary_dir / names[0]) as tf:
        assert [m.name for m in tf.getmembers()] == [f"{1000 + k}.jpg" for k in range(5)]
    idx = json.loads((root.primary_dir / JSON_NAME).read_text())
    loc = primary_location(root, 1003)
    # primary_index.json holds header offsets (the original's meaning); the lookup, data offsets
    with tarfile.open(loc["path"]) as tf:
        header = next(m.offset for m in tf if m.name == "1003.jpg")
        assert tf.getmember("1003.jpg").offset_data == loc["offset"]
    assert idx["reverse"]["1003"] == [os.path.basename(loc["path"]), header]
    assert idx["tars"][os.path.basename(loc["path"])]["1003.jpg"] == header
    assert primary_location(root, 999999) is None


def test_append_only_keeps_committed_bytes_and_replaces_changed(root):
    add_images(root, 9)                   # 3 listings
    _update(root)
    tar0 = root.primary_dir / "imageprimary_00000.tar"
    state = load_state(root.primary_dir)
    end = state.ends[0]
    before = hashlib.sha256(tar0.read_bytes()[:end]).hexdigest()
    add_images(root, 9, start_row=9)      # 3 more listings
    # listing 1000's primary changes to its rank-2 image
    conn = connect(root.db_path)
    with transaction(conn):
        conn.execute("UPDATE images SET is_primary = 0, rank = 2 WHERE image_id = 10001")
        conn.execute("UPDATE images SET is_primary = 1, rank = 1 WHERE image_id = 10002")
    conn.close()
    res = _update(root)
    assert (res.added, res.replaced) == (3, 1)
    assert hashlib.sha256(tar0.read_bytes()[:end]).hexdigest() == before
    assert open_primary(root, 1000) == fake_jpeg(1000, 10002)
    _check_all(root, 6)
    assert _update(root).added == 0       # nothing new: nothing written
    # --full gives the same answers from fresh tars
    res = _update(root, full=True)
    assert res.added == 6
    _check_all(root, 6)
    assert not (root.primary_dir / ".full").exists()


def test_killed_update_is_cut_back_and_finished(root):
    rng = random.Random(3)
    add_images(root, 60)                  # 20 listings
    next_row = 60

    def work():
        _update(root, between=lambda i: True)

    for i in range(12):
        if len(load_state(root.primary_dir).records) == len(_primaries(root)):
            add_images(root, 30, start_row=next_row)
            next_row += 30
        fork_and_kill(work, rng.uniform(0.0, 0.05))
        # committed state is always readable, whatever the moment
        state = load_state(root.primary_dir)
        for lid, rec in state.records.items():
            assert open_primary(root, lid) == fake_jpeg(lid, rec.image_id)
    _update(root)
    _check_all(root, len(_primaries(root)))
    for tar in root.primary_dir.glob("*.tar"):
        with tarfile.open(tar) as tf:
            tf.getmembers()               # a clean archive: the crash garbage is cut off


def test_killed_full_rebuild_keeps_the_old_state(root):
    add_images(root, 30)
    _update(root)
    before = (root.primary_dir / BIN_NAME).read_bytes()
    fork_and_kill(lambda: _update(root, full=True, between=lambda i: (os.kill(os.getpid(), 9) if i == 3 else True)), 5)
    assert (root.primary_dir / ".full").exists()
    assert (root.primary_dir / BIN_NAME).read_bytes() == before
    _update(root)                         # recovery removes the unfinished rebuild
    assert not (root.primary_dir / ".full").exists()
    _check_all(root, 10)


def test_primary_location_falls_back_to_the_all_image_tar(root):
    add_images(root, 12)
    _tar_some(root)
    conn = connect(root.db_path)
    loc = primary_location(root, 1001, conn)
    assert loc["path"].endswith("imageall_00000.tar") and loc["offset"] and loc["size"]
    assert open_primary(root, 1001, conn) == fake_jpeg(1001, 10011)
    conn.close()


def test_primary_stage_once_and_full(tmp_root):
    root = write_config(tmp_root, "[archive]\nprimary_per_tar = 4")
    add_images(root, 15)
    proc = cli("run", "primary", "--once", root=root)
    assert proc.returncode == 0, proc.stderr
    assert len(load_state(root.primary_dir).records) == 5
    proc = cli("run", "primary", "--full", root=root)
    assert proc.returncode == 0, proc.stderr
    _check_all(root, 5)
