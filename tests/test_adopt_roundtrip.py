"""Adopting a generated original root: the new root's index verify, status and search agree
with the generated truth; the original is never written; a second adoption changes nothing;
a dry run writes nothing and reports what it would adopt."""
from __future__ import annotations

import json
import os
import shutil
import sqlite3

import pytest

from original_support import (ORDER, SYNC_PROGRESS, adopted_digest, build_original,
                              root_config, tree_digest)
from support import run_cli

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    base = tmp_path_factory.mktemp("orig")
    return build_original(base / "orig")


@pytest.fixture(scope="module")
def adopted(original, tmp_path_factory):
    """One adoption by the CLI, shared by the read-only checks below."""
    base = tmp_path_factory.mktemp("adopted")
    before = tree_digest(original.path)
    root_path = base / "root"
    root_config(root_path, original.spec)
    proc = run_cli("adopt", "--from", original.path, "--json", root=root_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    from pipeline.core.root import Root

    return {"root": Root(root_path), "report": json.loads(proc.stdout), "before": before}


def test_the_original_is_never_written(original, adopted):
    after = tree_digest(original.path)
    assert after == adopted["before"]
    # no -wal / -shm appeared next to the original's DB
    assert sorted(p.name for p in (original.path / "data" / "db").iterdir()) == \
        ["etsy_data.db", "furniture_taxonomy_config.json"]


def test_index_verify_agrees(original, adopted):
    proc = run_cli("index", "verify", "--json", root=adopted["root"])
    out = json.loads(proc.stdout)
    assert proc.returncode == 0 and out["ok"], out["problems"]
    assert out["rows"] == sum(original.shards) == 250
    assert [s["rows"] for s in out["per_shard"]] == original.shards


def test_status_matches_the_original(original, adopted):
    proc = run_cli("status", "--json", root=adopted["root"])
    snap = json.loads(proc.stdout)
    assert snap["queues"] == original.states()
    assert adopted["report"]["adopted"]["status"] == original.states()


def test_search_by_listing_finds_its_twin_and_opens_its_primary(original, adopted):
    from pipeline.stages.archive.tarmembers import read_member_at

    for a, b in list(original.twins.items())[:2]:
        proc = run_cli("search", "--listing", a, "-k", "3", "--json", root=adopted["root"])
        assert proc.returncode == 0, proc.stderr
        results = json.loads(proc.stdout)
        top = results[0]
        assert top["listing_id"] == b
        assert top["agree"] == 5
        assert top["title"] == original.listings[b]["title"]
        prim = top["primary_image"]
        assert prim["offset"] is not None and "imageprimary_" in prim["path"]
        from pathlib import Path

        assert read_member_at(Path(prim["path"]), prim["offset"], f"{b}.jpg") == original.primary[b]


def test_every_image_opens_by_offset_and_loose_files_are_in_place(original, adopted):
    from pipeline.core.db import open_db
    from pipeline.stages.archive.primary import open_primary
    from pipeline.stages.archive.tarindex import read_image

    root = adopted["root"]
    conn = open_db(root)
    try:
        for key, v in original.images.items():
            row = conn.execute("SELECT state, shard, shard_row, global_row, tar_name FROM "
                               "image_status WHERE listing_id = ? AND image_id = ?", key).fetchone()
            assert row[0] == v["state"], key
            if v["grow"] is not None:
                assert row[3] == v["grow"] and row[1] == v["grow"] // original.spec.shard_rows
            if v["state"] == "tarred":
                assert row[4] == v["tar"][0]
                assert read_image(root, conn, *key) == original.jpeg[key]
            elif v["state"] == "embedded":
                assert (root.bgremoved_dir / f"{key[0]}_{key[1]}.jpg").read_bytes() == original.jpeg[key]
            elif v["state"] == "downloaded":
                assert (root.download_dir / f"{key[0]}_{key[1]}.jpg").read_bytes() == original.jpeg[key]
        for lid, data in original.primary.items():
            assert open_primary(root, lid, conn) == data
        # queued images keep their URL (from the row, or the .dl marker)
        urls = dict(((a, b), u) for a, b, u in conn.execute("SELECT listing_id, image_id, url FROM images"))
        for key, v in original.images.items():
            if v["code"] in (0, 1, 2):
                assert urls[key] == v["url"]
    finally:
        conn.close()


def test_tables_and_crawl_progress_are_mapped(original, adopted):
    db = sqlite3.connect(adopted["root"].db_path)
    try:
        titles = dict(db.execute("SELECT listing_id, title FROM listings_static"))
        assert titles == {lid: v["title"] for lid, v in original.listings.items()}
        assert db.execute("SELECT COUNT(*) FROM listings_dynamic").fetchone()[0] == 2 * len(original.listings)
        assert db.execute("SELECT COUNT(*) FROM reviews").fetchone()[0] == 36
        assert db.execute("SELECT COUNT(*) FROM shops_static WHERE last_activity_ts IS NULL").fetchone()[0] == 0
        units = db.execute("SELECT exhausted, next_offset FROM crawl_units ORDER BY min_price").fetchall()
        cur, offset, done = SYNC_PROGRESS
        assert [u[0] for u in units] == [1 if (i in done or i < cur) else 0 for i in range(4)]
        assert units[cur][1] == offset
        value = db.execute("SELECT value FROM sync_state WHERE key = 'original:last_review_timestamps'").fetchone()
        assert json.loads(value[0]) == {"500": 1_650_000_003}
    finally:
        db.close()


def test_finalized_files_are_linked_not_copied(original, adopted):

    root = adopted["root"]
    o = original.path
    assert os.path.samefile(root.tars_dir / "imageall_00000.tar", o / "images/imagetarred/imageall_00000.tar")
    assert os.path.samefile(root.embeddings_dir / "shard_0000/dinov2_large.faiss",
                            o / "data/embeddings/shard_0000/dinov2_large.faiss")
    # finalized shards: the original's flat files are the parts and the derived files
    # (one inode, three names); the active shard is a copy (the original rewrites it)
    for s in range(len(original.shards) - 1):
        for m in ORDER:
            src = os.stat(o / f"data/embeddings/shard_{s:04d}/{m}.faiss")
            shard_dir = root.embeddings_dir / f"shard_{s:04d}"
            part = os.stat(shard_dir / f"parts/b000001.{m}.flat.faiss")
            derived = os.stat(shard_dir / f"{m}.faiss")
            assert part.st_ino == derived.st_ino == src.st_ino and src.st_nlink == 3
    assert not list((root.embeddings_dir / "shard_0000/parts").glob("*.clip_vitb32.npy"))
    assert adopted["report"]["adopted"]["files"]["copied"] == len(ORDER) + 1   # + last primary tar
    for m in ORDER:
        assert os.stat(o / f"data/embeddings/shard_0002/{m}.faiss").st_nlink == 1
    # the active shard and the last primary tar are new files (appended to later)
    assert not os.path.samefile(root.embeddings_dir / "shard_0002/dinov2_large.faiss",
                                o / "data/embeddings/shard_0002/dinov2_large.faiss")
    last = sorted((o / "images/imageprimary").glob("imageprimary_*.tar"))[-1]
    assert not os.path.samefile(root.primary_dir / last.name, last)
    assert os.path.samefile(root.primary_dir / "imageprimary_00000.tar",
                            o / "images/imageprimary/imageprimary_00000.tar")


def test_rebuild_and_later_imports_leave_the_linked_files_alone(original, tmp_path, monkeypatch):
    """The original is only ever opened read-only (adoption, `index rebuild`, imports that
    fill the adopted active shard and open a new one): hard links share the inode, so one
    write would change the original. Afterwards verify passes and search finds the twin."""
    from index_support import WriteOpenRecorder, add_batch, file_ids, sha_of, vectors_for
    from pipeline.adopt import adopt
    from pipeline.core.db import open_db
    from pipeline.index import IndexStore, rebuild
    from pipeline.core.root import Root

    flat = sorted((original.path / "data/embeddings").glob("shard_*/*.faiss"))
    before, digest = sha_of(flat), tree_digest(original.path)
    recorder = WriteOpenRecorder(monkeypatch, file_ids(p for p in original.path.rglob("*") if p.is_file()))
    root_config(tmp_path / "root", original.spec)
    root = Root(tmp_path / "root")
    assert adopt(root, original.path).ok
    assert rebuild(root) == [0, 1, 2]
    store = IndexStore.for_root(root)
    store.open()
    conn = open_db(root)
    try:
        ids = add_batch(conn, 1, 60, 9_000_000)   # 50 fill shard 2, 10 open shard 3
        res = store.import_batch(1, ids, vectors_for(ids), store.fingerprint, conn)
        assert res.imported == 60 and [sl[0] for sl in res.slices] == [2, 3]
    finally:
        conn.close()
    assert recorder.opens > 100 and recorder.hits == []
    monkeypatch.undo()
    assert sha_of(flat) == before and tree_digest(original.path) == digest
    for m in ORDER:
        assert os.path.samefile(root.embeddings_dir / f"shard_0001/{m}.faiss",
                                original.path / f"data/embeddings/shard_0001/{m}.faiss")
    proc = run_cli("index", "verify", "--json", root=root)
    out = json.loads(proc.stdout)
    assert proc.returncode == 0 and out["ok"], out["problems"]
    assert [s["rows"] for s in out["per_shard"]] == [100, 100, 100, 10]
    a, b = next(iter(original.twins.items()))
    proc = run_cli("search", "--listing", a, "-k", "3", "--json", root=root)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)[0]["listing_id"] == b


def test_second_adoption_changes_nothing(original, adopted, tmp_path):
    from pipeline.adopt import adopt
    from pipeline.core.root import Root

    root = Root(tmp_path / "again")
    shutil.copytree(adopted["root"].path, root.path, symlinks=True)
    # the new system has moved on a little: the tar stage consumed one loose file
    key = next(k for k, v in original.images.items() if v["state"] == "embedded")
    loose = root.bgremoved_dir / f"{key[0]}_{key[1]}.jpg"
    loose.unlink()
    db = sqlite3.connect(root.db_path)
    with db:
        db.execute("UPDATE image_status SET state = 'tarred', tar_name = 'imageall_00011.tar', "
                   "tar_offset = 512 WHERE listing_id = ? AND image_id = ?", key)
    db.close()
    before = adopted_digest(root)
    files_before = tree_digest(root.path / "images"), tree_digest(root.path / "data" / "embeddings")
    report = adopt(root, original.path)
    assert report.ok, report.bad_inputs
    assert adopted_digest(root) == before
    assert (tree_digest(root.path / "images"), tree_digest(root.path / "data" / "embeddings")) == files_before
    assert report.adopted["images"]["rows written"] == 0
    assert not loose.exists()                 # a consumed loose file does not come back
    assert "linked" not in report.adopted.get("files", {})
    assert all(t["written"] == 0 for t in report.adopted["tables"].values())
    assert report.adopted["shards"] == {"adopted before": 3}


def test_dry_run_writes_nothing_and_reports(original, tmp_path):
    root_path = tmp_path / "dry"
    root_config(root_path, original.spec)
    proc = run_cli("adopt", "--from", original.path, "--dry-run", root=root_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "DRY RUN" in out and "would adopt" in out and "estimate: about" in out
    assert "shards: checked and adoptable 3" in out
    assert "tarred 220" in out
    assert not (root_path / "data" / "db" / "etsy_data.db").exists()
    assert not any((root_path / "data" / "embeddings").iterdir())
    assert not any((root_path / "images" / "imageall_tars").iterdir())
    assert not [p for p in (root_path / "run").iterdir() if p.name.startswith(".adopt-dry")]
