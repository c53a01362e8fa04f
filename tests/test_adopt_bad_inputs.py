"""Bad inputs: each is named in the report with what was done about it, the rest is adopted,
and the original is never written."""
from __future__ import annotations

import json
import shutil
import sqlite3

import pytest

from original_support import (DIMS, Spec, build_original, drop_last_row, flip_vector, rename_column,
                              root_config, tree_digest, truncate_file)
from support import run_cli

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return build_original(tmp_path_factory.mktemp("pristine") / "orig")


@pytest.fixture
def orig(pristine, tmp_path):
    """A private copy of the generated original, to break."""
    path = tmp_path / "orig"
    shutil.copytree(pristine.path, path)
    return path


def _root(tmp_path, spec, name="root"):
    from pipeline.core.root import Root

    root_config(tmp_path / name, spec)
    return Root(tmp_path / name).ensure()


def _bad(report, what: str) -> dict:
    hits = [b for b in report.bad_inputs if what in b["what"]]
    assert hits, f"{what} not named in {report.bad_inputs}"
    return hits[0]


def _verify(root):
    from pipeline.core.db import open_db
    from pipeline.index import verify

    conn = open_db(root)
    try:
        return verify(root, conn)
    finally:
        conn.close()


def _states(root) -> dict:
    from pipeline.core.db import count_states_slowly, open_db, queue_depths

    conn = open_db(root)
    try:
        fast = queue_depths(conn)
        assert fast == count_states_slowly(conn)
        return fast
    finally:
        conn.close()


def test_row_count_truncated_tar_and_missing_indexes(pristine, orig, tmp_path):
    from pipeline.adopt import adopt
    from pipeline.core.db import open_db
    from pipeline.stages.archive.primary import open_primary

    drop_last_row(orig, 2, "dinov2_base")
    truncate_file(orig / "images/imagetarred/imageall_00003.tar", 0.5)
    (orig / "images/imagetarred/tar_index.json").unlink()
    (orig / "images/imageprimary/primary_index.json").unlink()
    before = tree_digest(orig)
    root = _root(tmp_path, pristine.spec)
    report = adopt(root, orig)
    assert tree_digest(orig) == before
    assert report.outcome == "adopted with problems"

    b = _bad(report, "shard_0002")
    assert "disagree in row count" in b["problem"] and "dinov2_base.faiss 49" in b["problem"]
    assert b["done"].startswith("refused")
    b = _bad(report, "imageall_00003.tar")
    assert "truncated" in b["problem"] or "unexpected end" in b["problem"]
    assert b["done"].startswith("refused")
    assert "rebuilt" in _bad(report, "imagetarred/tar_index.json")["done"]
    assert "rebuilt" in _bad(report, "primary_index.json")["done"]

    problems, summary = _verify(root)
    assert problems == [] and summary["rows"] == 200
    truth = pristine.states()
    states = _states(root)
    assert states["failed"] == 50                      # the refused shard's images
    assert states["tarred"] == truth["tarred"] - 20 - 20
    assert states["embedded"] == 20                    # the truncated tar's images
    for k in ("discovered", "downloaded", "dead"):
        assert states[k] == truth[k]
    conn = open_db(root)
    try:
        reasons = [r[0] for r in conn.execute(
            "SELECT reason FROM image_status WHERE state = 'embedded'")]
        assert reasons and all("imageall_00003.tar" in r for r in reasons)
        reasons = {r[0] for r in conn.execute("SELECT reason FROM image_status WHERE state = 'failed'")}
        assert all(r.startswith("adopt: shard_0002 refused") for r in reasons)
        # tars whose index was missing still open by offset; the newest primary member counts
        from pipeline.stages.archive.tarindex import read_image

        key = next(k for k, v in pristine.images.items() if v["tar"] and v["tar"][0] == "imageall_00004.tar")
        assert read_image(root, conn, *key) == pristine.jpeg[key]
        for lid, data in pristine.primary.items():
            assert open_primary(root, lid, conn) == data
    finally:
        conn.close()


def test_hash_mismatch_backup_other_schema_then_repair(pristine, orig, tmp_path):
    from pipeline.adopt import adopt

    flip_vector(orig, 0, 17, "dinov2_base", 768)       # its backup is good
    flip_vector(orig, 1, 5, "clip_vitb32", 512)        # no backup
    shutil.rmtree(orig / "backups" / "shard_0001")
    rename_column(orig, "image_status", "download_done", "status")
    root = _root(tmp_path, pristine.spec)
    report = adopt(root, orig)

    b = _bad(report, "data/embeddings/shard_0000")
    assert "row 17 model dinov2_base" in b["problem"] and "backups/shard_0000" in b["done"]
    b = _bad(report, "data/embeddings/shard_0001")
    assert "row 5 model clip_vitb32" in b["problem"] and b["done"].startswith("refused")
    assert "held back" in _bad(report, "data/embeddings/shard_0002")["problem"]
    b = _bad(report, "table image_status")
    assert "download_done" in b["problem"] and "not adopted" in b["done"]
    mism = report.inconsistencies["hash_mismatches"]
    assert mism["count"] == 2 and any("shard_0001 row 5 model clip_vitb32" in e for e in mism["examples"])
    problems, summary = _verify(root)
    assert problems == [] and summary["rows"] == 100
    assert _states(root)["failed"] == 150
    # the listings table was still adopted
    db = sqlite3.connect(root.db_path)
    assert db.execute("SELECT COUNT(*) FROM listings_static").fetchone()[0] == len(pristine.listings)
    db.close()

    # the operator restores the damaged file; adopting again takes what was refused
    shutil.copyfile(pristine.path / "data/embeddings/shard_0001/clip_vitb32.faiss",
                    orig / "data/embeddings/shard_0001/clip_vitb32.faiss")
    report = adopt(root, orig)
    assert report.adopted["shards"] == {"adopted before": 1, "adopted": 2}
    problems, summary = _verify(root)
    assert problems == [] and summary["rows"] == 250
    states = _states(root)
    assert states["failed"] == 0 and states["tarred"] + states["embedded"] == 250


def test_corrupt_db_is_named_and_the_files_are_adopted(pristine, orig, tmp_path):
    from pipeline.adopt import adopt

    (orig / "data/db/etsy_data.db").write_bytes(b"this is not an sqlite database" * 100)
    root = _root(tmp_path, pristine.spec)
    report = adopt(root, orig)
    b = _bad(report, "data/db/etsy_data.db")
    assert "not a readable SQLite database" in b["problem"] and "not adopted" in b["done"]
    problems, summary = _verify(root)
    assert problems == [] and summary["rows"] == 250
    states = _states(root)
    assert states["tarred"] == pristine.states()["tarred"] and states["embedded"] == 30


def test_wal_left_by_a_killed_original(tmp_path):
    from pipeline.adopt import adopt

    truth = build_original(tmp_path / "orig", Spec(listings=40, embedded=100, downloaded=4,
                                                   pending=2, queued=2, dead=2, twins=1,
                                                   leave_wal=True, backups=False))
    wal = truth.path / "data/db/etsy_data.db-wal"
    assert wal.stat().st_size > 0
    before = tree_digest(truth.path)
    root = _root(tmp_path, truth.spec)
    report = adopt(root, truth.path)
    assert report.ok, report.bad_inputs
    assert any("write-ahead log" in n for n in report.notes)
    assert tree_digest(truth.path) == before
    db = sqlite3.connect(root.db_path)
    assert db.execute("SELECT value FROM sync_state WHERE key = 'original:in_the_wal'").fetchone()[0] == "1"
    db.close()
    assert _states(root) == truth.states()


def test_a_folder_that_is_not_an_original_root(tmp_path, pristine):
    junk = tmp_path / "junk"
    (junk / "data").mkdir(parents=True)
    (junk / "notes.txt").write_text("hello")
    root_path = tmp_path / "root"
    root_config(root_path, pristine.spec)
    proc = run_cli("adopt", "--from", junk, root=root_path)
    assert proc.returncode == 2
    assert "not an original root" in proc.stderr and "etsy_data.db" in proc.stderr
    assert "nothing adopted" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (root_path / "data" / "db" / "etsy_data.db").exists()
    # a root of this program is refused too
    proc = run_cli("adopt", "--from", root_path, root=tmp_path / "other")
    assert proc.returncode == 2 and "root of this program" in proc.stderr


def test_dry_run_reports_each_inconsistency_and_an_estimate(pristine, orig, tmp_path):
    """Rows in the DB but in no shard, shard rows with no DB row, a missing tar, a hash
    that disagrees: all in the dry run's report, and nothing written."""
    db = sqlite3.connect(orig / "data/db/etsy_data.db")
    db.execute("INSERT INTO image_status VALUES (42, 4242, 0, NULL, 4)")
    lid, iid = next(k for k, v in pristine.images.items() if v["grow"] == 3)
    db.execute("DELETE FROM image_status WHERE listing_id = ? AND image_id = ?", (lid, iid))
    db.commit()
    db.close()
    (orig / "images/imagetarred/imageall_00005.tar").unlink()
    flip_vector(orig, 1, 9, "dinov3_base", 768)
    root_path = tmp_path / "root"
    root_config(root_path, pristine.spec)
    proc = run_cli("adopt", "--from", orig, "--dry-run", "--json", root=root_path)
    assert proc.returncode == 1, proc.stderr
    rep = json.loads(proc.stdout)
    inc = rep["inconsistencies"]
    assert inc["db_rows_in_no_shard"]["count"] == 1 and "42_4242" in inc["db_rows_in_no_shard"]["examples"][0]
    assert inc["shard_rows_without_db_row"]["count"] == 1
    assert f"{lid}_{iid}" in inc["shard_rows_without_db_row"]["examples"][0]
    assert inc["tars_missing"]["count"] == 1 and "imageall_00005.tar" in inc["tars_missing"]["examples"][0]
    assert inc["hash_mismatches"]["count"] == 1
    assert "shard_0001 row 9 model dinov3_base" in inc["hash_mismatches"]["examples"][0]
    # shard 1 has a good backup: the dry run says it would be taken from there
    assert "backups/shard_0001" in _bad_json(rep, "data/embeddings/shard_0001")["done"]
    # finalized shards are linked: extra disk is the active shard twice (its copied parts
    # and its appendable flat files) plus the small files, well under the vectors' size
    est = rep["estimate"]
    per_row = sum(DIMS.values()) * 4
    assert est["vector_bytes"] == sum(pristine.shards) * per_row
    assert est["seconds"] > 0
    assert 2 * pristine.shards[-1] * per_row < est["extra_bytes"] < est["vector_bytes"]
    assert rep["adopted"]["shards"] == {"checked and adoptable": 3}
    assert not (root_path / "data/db/etsy_data.db").exists()
    assert not any((root_path / "data/embeddings").iterdir())


def _bad_json(rep: dict, what: str) -> dict:
    hits = [b for b in rep["bad_inputs"] if what in b["what"]]
    assert hits, f"{what} not in {rep['bad_inputs']}"
    return hits[0]
