"""All-image tars: order, offsets, verification, DB marking, crash recovery, kills."""
from __future__ import annotations

import hashlib
import json
import os
import random
import tarfile

import pytest

from pipeline.core.db import connect
from pipeline.stages.archive.tarindex import read_image, write_combined_index
from pipeline.stages.archive.tarmembers import TarError, read_member_at, tar_name
from pipeline.stages.archive.tars import Archiver, journal_path
from tests.archive_support import add_images, fork_and_kill, write_config


@pytest.fixture
def root(tmp_root):
    return write_config(tmp_root, "[archive]\nimages_per_tar = 20\nverify_sample = 5\nmissing_grace_s = 3600.0")


def _states(root):
    conn = connect(root.db_path)
    try:
        return {(l, i): (s, t, o) for l, i, s, t, o in conn.execute(
            "SELECT listing_id, image_id, state, tar_name, tar_offset FROM image_status")}
    finally:
        conn.close()


def _archive_all(root):
    conn = connect(root.db_path)
    try:
        arch = Archiver(root, conn)
        arch.recover()
        return [arch.write(p) for p in arch.next_plans() if not p.waiting]
    finally:
        conn.close()


def _assert_nothing_lost(root, hashes):
    """Every image readable (from its tar or its loose file) with its original bytes, every
    visible tar complete, and tarred images have no loose file left."""
    conn = connect(root.db_path)
    try:
        for (lid, iid), digest in hashes.items():
            data = read_image(root, conn, lid, iid)
            assert hashlib.sha256(data).hexdigest() == digest, (lid, iid)
    finally:
        conn.close()
    for name in os.listdir(root.tars_dir):
        if name.endswith(".tar"):
            with tarfile.open(root.tars_dir / name) as tf:
                assert len(tf.getmembers()) == 20, name


def test_tars_hold_row_ranges_in_order_with_offsets(root):
    hashes = add_images(root, 50)
    written = _archive_all(root)
    assert written == [tar_name(0), tar_name(1)]      # rows 40-49 do not fill tar 2
    with tarfile.open(root.tars_dir / tar_name(1)) as tf:
        members = tf.getmembers()
    conn = connect(root.db_path)
    expect = [f"{l}_{i}.jpg" for l, i in conn.execute(
        "SELECT listing_id, image_id FROM image_status WHERE global_row BETWEEN 20 AND 39 ORDER BY global_row")]
    conn.close()
    assert [m.name for m in members] == expect
    states = _states(root)
    for m in members:
        lid, iid = map(int, m.name[:-4].split("_"))
        assert states[(lid, iid)] == ("tarred", tar_name(1), m.offset_data)
        assert not (root.bgremoved_dir / m.name).exists()
        data = read_member_at(root.tars_dir / tar_name(1), m.offset_data, m.name)
        assert hashlib.sha256(data).hexdigest() == hashes[(lid, iid)]
    assert sum(1 for s in states.values() if s[0] == "embedded") == 10
    assert len(list(root.bgremoved_dir.iterdir())) == 10
    # the original's combined index shape and meaning: header offsets (TarInfo.offset)
    write_combined_index(root.tars_dir)
    idx = json.loads((root.tars_dir / "tar_index.json").read_text())
    assert set(idx["tars"]) == {tar_name(0), tar_name(1)}
    first = members[0]
    assert idx["tars"][tar_name(1)][first.name] == first.offset
    assert idx["reverse"][first.name[:-4]] == [tar_name(1), first.offset]
    assert len(idx["reverse"]) == 40
    _assert_nothing_lost(root, hashes)


def test_missing_loose_file_waits_then_tar_goes_without_it(root):
    add_images(root, 20)
    victim = sorted(root.bgremoved_dir.iterdir())[3]
    victim.unlink()
    assert _archive_all(root) == []          # within the grace period: wait
    conn = connect(root.db_path)
    arch = Archiver(root, conn, missing_grace_s=0)
    plans = list(arch.next_plans())
    assert len(plans) == 1 and len(plans[0].missing) == 1 and not plans[0].waiting
    arch.write(plans[0])
    assert list(arch.next_plans()) == []     # the tar exists: not planned again
    conn.close()
    lid, iid = map(int, victim.name[:-4].split("_"))
    assert _states(root)[(lid, iid)][0] == "embedded"
    with tarfile.open(root.tars_dir / tar_name(0)) as tf:
        assert len(tf.getmembers()) == 19


def test_reader_refuses_a_wrong_offset_or_name(root):
    add_images(root, 20)
    _archive_all(root)
    path = root.tars_dir / tar_name(0)
    with tarfile.open(path) as tf:
        m = tf.getmembers()[2]
    with pytest.raises(TarError):
        read_member_at(path, m.offset_data + 512, m.name)     # not a header before it
    with pytest.raises(TarError):
        read_member_at(path, m.offset_data, "1_2.jpg")        # another member
    with pytest.raises(TarError):
        read_member_at(path, m.offset_data, m.name, max_size=10)


def test_crash_after_rename_before_db_commit_is_completed(root, monkeypatch):
    hashes = add_images(root, 20)
    conn = connect(root.db_path)
    arch = Archiver(root, conn)
    plan = next(iter(arch.next_plans()))
    monkeypatch.setattr(Archiver, "_commit", lambda self, name, members: (_ for _ in ()).throw(OSError("boom")))
    with pytest.raises(OSError):
        arch.write(plan)
    monkeypatch.undo()
    assert (root.tars_dir / tar_name(0)).exists() and journal_path(root).exists()
    assert all(s[0] == "embedded" for s in _states(root).values())
    assert "completed" in Archiver(root, conn).recover()
    conn.close()
    assert all(s[0] == "tarred" for s in _states(root).values())
    assert not journal_path(root).exists() and not list(root.bgremoved_dir.iterdir())
    _assert_nothing_lost(root, hashes)


def test_crash_before_rename_rolls_back(root, monkeypatch):
    add_images(root, 20)
    conn = connect(root.db_path)
    arch = Archiver(root, conn)
    plan = next(iter(arch.next_plans()))
    real_replace = os.replace

    def failing_replace(a, b):
        if str(b).endswith(".tar"):
            raise OSError("power cut")
        return real_replace(a, b)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError):
        arch.write(plan)
    monkeypatch.undo()
    assert "rolled back" in Archiver(root, conn).recover()
    assert sorted(os.listdir(root.tars_dir)) == []
    assert len(list(root.bgremoved_dir.iterdir())) == 20
    assert _archive_all(root) == [tar_name(0)]
    conn.close()


def test_sigkill_at_random_moments_loses_nothing(root):
    rng = random.Random(8)
    hashes = add_images(root, 60)            # 3 tars of 20
    next_row = 60

    def work():
        _archive_all(root)

    for i in range(20):
        if all(s[0] == "tarred" for s in _states(root).values()):
            hashes.update(add_images(root, 60, start_row=next_row))   # always work to kill
            next_row += 60
        fork_and_kill(work, rng.uniform(0.0, 0.12))
        # no half tar is ever visible and nothing is lost, whatever the moment
        _assert_nothing_lost(root, hashes)
    _archive_all(root)
    states = _states(root)
    assert all(s[0] == "tarred" for s in states.values())
    assert not list(root.bgremoved_dir.iterdir())
    assert not journal_path(root).exists()
    assert not [n for n in os.listdir(root.tars_dir) if n.endswith(".partial")]
    _assert_nothing_lost(root, hashes)
