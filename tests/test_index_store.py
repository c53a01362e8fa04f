"""The index store: imports, shard rollover, duplicates, refusals, verify catching damage."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.index import BatchRejected, FingerprintMismatch, IndexStore, verify
from pipeline.index import flatfile
from pipeline.index.verifier import verify_store
from tests.index_support import (DIMS, FP, ORDER, add_batch, assert_exactly_once, open_db,
                                 vectors_for)
from tests.support import run_cli

pytestmark = pytest.mark.timeout(120)


def _store(root, capacity=50, **kw) -> IndexStore:
    store = IndexStore(root.embeddings_dir, capacity=capacity, **kw)
    store.open()
    return store


def _problems(store, conn):
    store.open(conn)
    return verify_store(store, conn, (ORDER, DIMS))[0]


def test_import_verify_and_rollover(tmp_root):
    conn = open_db(tmp_root)
    store = _store(tmp_root, capacity=50)
    all_ids = []
    for b, n in [(1, 30), (2, 30), (3, 45)]:  # batch 2 and 3 straddle shard boundaries
        ids = add_batch(conn, b, n, 1000 * b)
        res = store.import_batch(b, ids, vectors_for(ids), FP, conn)
        assert res.imported == n and not res.skipped
        all_ids.extend(ids.tolist())
    assert [s.rows for s in store.shards] == [50, 50, 5]
    assert [s.full for s in store.shards] == [True, True, False]
    assert _problems(store, conn) == []
    assert_exactly_once(store, conn, all_ids)
    # the batch rows and the global rows
    row = conn.execute("SELECT state, shard, first_row, fingerprint FROM batches WHERE batch_id=2").fetchone()
    assert row == ("imported", 0, 30, FP)
    assert conn.execute("SELECT shard, shard_row, global_row FROM image_status WHERE "
                        "listing_id = 3039").fetchone() == (1, 49, 99)
    # image_index.json rows: [lid, iid, global_row, h1..h7]
    rows = json.loads((store.shards[1].image_index_path).read_text())
    assert rows[0][:3] == [2020, 1, 50] and len(rows[0]) == 3 + len(ORDER)
    # CLI agrees
    proc = run_cli("index", "verify", root=tmp_root)
    assert proc.returncode == 0, proc.stderr + proc.stdout


def test_derived_faiss_files_search_like_numpy(tmp_root):
    import faiss

    conn = open_db(tmp_root)
    store = _store(tmp_root, capacity=40)
    ids = add_batch(conn, 1, 60, 5000)
    vecs = vectors_for(ids)
    store.import_batch(1, ids, vecs, FP, conn)
    for shard, lo, hi in [(store.shards[0], 0, 40), (store.shards[1], 40, 60)]:
        for m in ("clip_vitb32", "dinov2_large"):
            index = faiss.read_index(str(shard.faiss_path(m)), faiss.IO_FLAG_MMAP)
            assert (index.ntotal, index.d) == (hi - lo, DIMS[m])
            q = vecs[m][lo + 3:lo + 4]
            scores, rows = index.search(q, 5)
            want = np.argsort(-(vecs[m][lo:hi] @ q[0]))[:5]
            assert rows[0].tolist() == want.tolist()


def test_flat_layout_matches_faiss():
    import faiss

    x = np.random.default_rng(1).standard_normal((3, 8)).astype("float32")
    index = faiss.IndexFlatIP(8)
    index.add(x)
    blob = faiss.serialize_index(index).tobytes()
    assert blob == flatfile.header_bytes(8, 3) + x.tobytes()
    assert faiss.serialize_index(faiss.IndexFlatIP(8)).tobytes() == flatfile.header_bytes(8, 0)


def test_duplicate_batch_imported_once(tmp_root):
    conn = open_db(tmp_root)
    store = _store(tmp_root)
    ids = add_batch(conn, 7, 20, 100)
    assert store.import_batch(7, ids, vectors_for(ids), FP, conn).imported == 20
    again = store.import_batch(7, ids, vectors_for(ids), FP, conn)
    assert again.imported == 0 and again.already
    # also from a fresh process-like store object
    other = _store(tmp_root)
    assert other.import_batch(7, ids, vectors_for(ids), FP, conn).already
    assert other.total_rows() == 20
    assert_exactly_once(other, conn, ids)


def test_fingerprint_refused_and_bad_shapes(tmp_root):
    conn = open_db(tmp_root)
    store = _store(tmp_root)
    ids = add_batch(conn, 1, 10, 100)
    store.import_batch(1, ids, vectors_for(ids), FP, conn)
    ids2 = add_batch(conn, 2, 10, 200)
    with pytest.raises(FingerprintMismatch, match="differs from the index store"):
        store.import_batch(2, ids2, vectors_for(ids2), "another-fp", conn)
    bad = vectors_for(ids2)
    bad["dinov2_base"] = bad["dinov2_base"][:, :100]
    with pytest.raises(BatchRejected, match="dinov2_base"):
        store.import_batch(2, ids2, bad, FP, conn)
    bad = vectors_for(ids2)
    del bad["clip_vitl14_text"]
    with pytest.raises(BatchRejected, match="clip_vitl14_text"):
        store.import_batch(2, ids2, bad, FP, conn)
    bad = vectors_for(ids2)
    bad["clip_vitb32"][3, 5] = np.nan
    with pytest.raises(BatchRejected, match="NaN"):
        store.import_batch(2, ids2, bad, FP, conn)
    assert store.total_rows() == 10
    assert conn.execute("SELECT COUNT(*) FROM image_status WHERE state='batched'").fetchone()[0] == 10
    assert _problems(store, conn) == []


def test_rows_not_batched_are_skipped(tmp_root):
    conn = open_db(tmp_root)
    store = _store(tmp_root)
    ids = add_batch(conn, 1, 10, 100)
    stray = np.array([[999, 1]], dtype=np.int64)  # not in the DB
    both = np.concatenate([ids, stray, ids[:2]])   # plus two rows twice
    res = store.import_batch(1, both, vectors_for(both), FP, conn)
    assert res.imported == 10
    assert res.skipped == [(999, 1, "unknown image")]
    assert_exactly_once(store, conn, ids)


def test_torn_manifest_line_and_orphan_parts_are_dropped(tmp_root):
    conn = open_db(tmp_root)
    store = _store(tmp_root)
    ids = add_batch(conn, 1, 10, 100)
    store.import_batch(1, ids, vectors_for(ids), FP, conn)
    shard = store.shards[0]
    (shard.parts_dir / "b000002.ids.npy").write_bytes(b"half a part")
    with open(shard.manifest_path, "ab") as fh:
        fh.write(b'{"kind": "batch", "seq": 2, "batch_id": 2, "sta')
    store2 = _store(tmp_root)
    assert store2.total_rows() == 10
    assert not (shard.parts_dir / "b000002.ids.npy").exists()
    assert shard.manifest_path.read_bytes().endswith(b"}\n")
    assert _problems(store2, conn) == []


def test_corrupt_committed_line_is_refused(tmp_root):
    store = _store(tmp_root)
    ids = np.array([[1, 1], [2, 1]])
    store.import_batch(1, ids, vectors_for(ids), FP)
    store.import_batch(2, ids + 10, vectors_for(ids + 10), FP)
    path = store.shards[0].manifest_path
    lines = path.read_bytes().split(b"\n")
    lines[1] = lines[1].replace(b'"batch_id":1', b'"batch_id":9')
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(Exception, match="line 2 fails its checksum"):
        _store(tmp_root)


@pytest.mark.parametrize("damage", ["faiss_row", "part_row", "image_index_hash", "db_row",
                                    "faiss_short", "image_index_missing"])
def test_verify_names_the_damage(tmp_root, damage):
    conn = open_db(tmp_root)
    store = _store(tmp_root, capacity=30)
    ids = add_batch(conn, 1, 40, 100)
    store.import_batch(1, ids, vectors_for(ids), FP, conn)
    assert _problems(store, conn) == []
    shard = store.shards[1]
    m = "dinov2_base"
    if damage == "faiss_row":       # row 4 of shard 1, model dinov2_base
        path = shard.faiss_path(m)
        with open(path, "r+b") as fh:
            fh.seek(flatfile.HEADER_SIZE + 4 * DIMS[m] * 4 + 8)
            fh.write(b"\x01\x02\x03\x04")
        want = "shard_0001 row 4 model dinov2_base"
    elif damage == "part_row":
        path = shard.parts_dir / f"b{shard.slices[0].seq:06d}.{m}.npy"
        arr = np.load(path)
        arr[4, 0] += 1.0
        np.save(path, arr)
        want = "shard_0001 row 4 model dinov2_base"
    elif damage == "image_index_hash":
        rows = json.loads(shard.image_index_path.read_text())
        rows[4][3 + ORDER.index(m)] = "000000000000"
        shard.image_index_path.write_text(json.dumps(rows))
        want = "shard_0001 row 4 model dinov2_base"
    elif damage == "db_row":
        conn.execute("UPDATE image_status SET state='batched', shard=NULL, shard_row=NULL, "
                     "global_row=NULL WHERE listing_id = ?", (int(ids[34][0]),))
        want = "shard_0001 row 4: image 134_1 is in the index but the DB has state batched"
    elif damage == "faiss_short":
        path = shard.faiss_path(m)
        flatfile.truncate_to(path, DIMS[m], 9)
        want = "shard_0001 model dinov2_base: dinov2_base.faiss holds 9 rows"
    else:
        shard.image_index_path.unlink()
        want = "shard_0001: image_index.json is missing"
    # verify without repairing derived files (the CLI's path opens with repair: see below)
    store.open(conn, refresh_derived=False)
    problems = verify_store(store, conn, (ORDER, DIMS))[0]
    assert any(want in p for p in problems), problems
    proc = run_cli("index", "verify", root=tmp_root)
    assert proc.returncode == 1
    assert want in proc.stdout, proc.stdout
    # damage in a derived file is repaired by rebuild; in a part or the DB it is not
    run_cli("index", "rebuild", root=tmp_root, check=True)
    proc = run_cli("index", "verify", root=tmp_root)
    assert proc.returncode == (1 if damage in ("part_row", "db_row") else 0), proc.stdout


def test_verify_refuses_dims_that_differ_from_registry(tmp_root):
    order, dims = ["clip_vitb32"], {"clip_vitb32": 8}
    store = IndexStore(tmp_root.embeddings_dir, capacity=10, order=order, dims=dims)
    store.open()
    ids = np.array([[1, 1]])
    store.import_batch(1, ids, vectors_for(ids, order, dims), FP)
    problems, _ = verify(tmp_root, None, registry=True)
    assert any("model order" in p for p in problems)
    assert any("dim 8 in the manifest, registry says 512" in p for p in problems)


def test_configured_types_keep_row_order_and_rebuild(tmp_root):
    import faiss

    order, dims = ["a", "b"], {"a": 16, "b": 16}
    types = {"a": "HNSW16", "b": "IVF4,Flat"}
    store = IndexStore(tmp_root.embeddings_dir, capacity=200, order=order, dims=dims,
                       index_types=types, train_rows=200)
    store.open()
    ids = np.stack([np.arange(250), np.ones(250, int)], 1)
    vecs = vectors_for(ids, order, dims)
    store.import_batch(1, ids, vecs, FP)
    final, active = store.shards
    assert final.derived_state()["files"]["a"]["type"] == "HNSW16"
    assert flatfile.read_header(active.faiss_path("a")) == (16, 50)   # active: exact
    for m in order:
        index = faiss.read_index(str(final.faiss_path(m)))
        if m == "b":
            faiss.extract_index_ivf(index).nprobe = 4
        _, rows = index.search(vecs[m][:200], 1)
        assert (rows[:, 0] == np.arange(200)).mean() > 0.95
    assert verify_store(store, None, None)[0] == []
    # rebuild re-derives them; the result still verifies
    before = final.faiss_path("a").stat().st_mtime_ns
    IndexStore(tmp_root.embeddings_dir, index_types=types, train_rows=200).rebuild()
    assert final.faiss_path("a").stat().st_mtime_ns != before
    store.open()
    assert verify_store(store, None, None)[0] == []


def test_rebuild_cli_restores_deleted_files(tmp_root):
    conn = open_db(tmp_root)
    store = IndexStore.for_root(tmp_root)
    store.open(conn)
    ids = add_batch(conn, 1, 12, 100)
    store.import_batch(1, ids, vectors_for(ids), FP, conn)
    conn.close()
    shard = store.shards[0]
    shard.faiss_path("dinov3_base").unlink()
    shard.image_index_path.write_text("[]")
    assert run_cli("index", "rebuild", root=tmp_root).returncode == 0
    assert flatfile.read_header(shard.faiss_path("dinov3_base")) == (768, 12)
    proc = run_cli("index", "verify", "--json", root=tmp_root)
    assert proc.returncode == 0 and json.loads(proc.stdout)["ok"], proc.stdout
