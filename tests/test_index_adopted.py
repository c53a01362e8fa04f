"""Shards adopted from IndexFlatIP files (IndexStore.adopt_shard): a full shard's files become
its parts and its derived files by hard link, never copied and never written; rebuilds and
later imports leave them byte for byte; refusals name what is wrong."""
from __future__ import annotations

import errno
import os

import numpy as np
import pytest

from pipeline.core.errors import UserError
from pipeline.index import BatchRejected, FingerprintMismatch, IndexStore, rebuild
from pipeline.index import flatfile
from pipeline.index import parts as pt
from pipeline.index.verifier import verify_store
from tests.index_support import (DIMS, FP, ORDER, WriteOpenRecorder, add_batch, add_images,
                                 file_ids, open_db, sha_of, vectors_for)

pytestmark = pytest.mark.timeout(120)

CAP = 20


def _write_flat_files(folder, ids, salt=0) -> dict:
    """One IndexFlatIP file per model, written by faiss itself (the original's format)."""
    import faiss

    folder.mkdir(parents=True, exist_ok=True)
    vecs = vectors_for(ids, salt=salt)
    out = {}
    for m in ORDER:
        index = faiss.IndexFlatIP(DIMS[m])
        index.add(vecs[m])
        faiss.write_index(index, str(folder / f"{m}.faiss"))
        out[m] = folder / f"{m}.faiss"
    return out, vecs


def _hashes(vecs) -> np.ndarray:
    return np.stack([pt.vector_hashes(vecs[m]) for m in ORDER], axis=1)


def _ids(first, n):
    return np.array([(first + i, 1) for i in range(n)], dtype=np.int64)


def _original(tmp_path, sizes=(CAP, CAP, 7)):
    """Shards of IndexFlatIP files outside the store; their images in the DB as embedded
    images are after an adoption (added as batched, moved by the store's pointer)."""
    shards = []
    for s, n in enumerate(sizes):
        ids = _ids(10_000 * (s + 1), n)
        files, vecs = _write_flat_files(tmp_path / "orig" / f"shard_{s:04d}", ids, salt=s)
        shards.append((ids, files, vecs))
    return shards


def _adopt_all(root, shards, conn=None, link="auto"):
    store = IndexStore(root.embeddings_dir, capacity=CAP)
    store.open()
    results = []
    for s, (ids, files, vecs) in enumerate(shards):
        if conn is not None:
            add_images(conn, -(s + 1), ids)   # the adoption maps them; here: a batch per shard
        results.append(store.adopt_shard(s, ids, _hashes(vecs), files, FP, CAP,
                                         source_info={"shard": s}, link=link))
        if conn is not None:
            from pipeline.index import dbsync

            dbsync.apply_slice(conn, store.shards[-1], store.shards[-1].slices[-1])
    return store, results


def _all_source_files(shards):
    return [f for _ids, files, _v in shards for f in files.values()]


def test_exact_header_check_agrees_with_faiss_and_refuses_other_files(tmp_path):
    import faiss

    x = np.random.default_rng(3).standard_normal((5, 16)).astype("float32")
    ip = faiss.IndexFlatIP(16)
    ip.add(x)
    faiss.write_index(ip, str(tmp_path / "ip.faiss"))
    assert flatfile.read_exact_header(tmp_path / "ip.faiss") == (16, 5)
    os.link(tmp_path / "ip.faiss", tmp_path / "b000001.m.flat.faiss")
    got = pt.read_array(tmp_path / "b000001.m.flat.faiss")
    assert isinstance(got, np.memmap) and got.mode == "r" and np.array_equal(got, x)
    # an L2 index, a header byte changed (the metric), a trailing byte: never read as rows
    l2 = faiss.IndexFlatL2(16)
    l2.add(x)
    faiss.write_index(l2, str(tmp_path / "b000002.m.flat.faiss"))
    blob = bytearray((tmp_path / "ip.faiss").read_bytes())
    blob[33] = 1  # metric_type: METRIC_L2
    (tmp_path / "b000003.m.flat.faiss").write_bytes(bytes(blob))
    (tmp_path / "b000004.m.flat.faiss").write_bytes((tmp_path / "ip.faiss").read_bytes() + b"\0")
    for n in (2, 3, 4):
        with pytest.raises(ValueError, match="part b00000"):
            pt.read_array(tmp_path / f"b00000{n}.m.flat.faiss")
    assert pt.PART_RE.match("b000001.dinov2_large.flat.faiss").group(2) == "dinov2_large"
    assert not pt.PART_RE.match("b000001.dinov2_large.faiss")


def test_full_shards_are_hard_links_and_verify_passes(tmp_root):
    shards = _original(tmp_root.path)
    conn = open_db(tmp_root)
    store, results = _adopt_all(tmp_root, shards, conn)
    for s, (ids, files, _v) in enumerate(shards[:2]):
        shard = store.shards[s]
        assert results[s].linked == ORDER and results[s].copied == [] and results[s].derived_linked == 7
        for m in ORDER:
            part = shard.part_file(shard.slices[0], m)
            assert part.name == f"b000001.{m}.flat.faiss"
            src = os.stat(files[m])
            assert os.stat(part).st_ino == src.st_ino == os.stat(shard.faiss_path(m)).st_ino
            assert src.st_nlink == 3      # the original, the part, the derived file
    # the last shard has room: its source is copied (the original rewrites it in place)
    last = store.shards[2]
    assert results[2].linked == [] and results[2].copied == ORDER
    assert "room left" in results[2].why_copied
    for m in ORDER:
        assert os.stat(shards[2][1][m]).st_nlink == 1
        assert not os.path.samefile(last.faiss_path(m), last.part_file(last.slices[0], m))
    store.open(conn)
    problems, summary = verify_store(store, conn, (ORDER, DIMS))
    assert problems == [] and summary["rows"] == 2 * CAP + 7
    # vectors read back through the parts are the sources' rows
    assert np.array_equal(store.shards[1].part(store.shards[1].slices[0], "dinov2_large"),
                          shards[1][2]["dinov2_large"])
    # orphan cleanup keeps the flat parts and removes one no line names
    stray = store.shards[0].parts_dir / "b000002.clip_vitb32.flat.faiss"
    stray.write_bytes(b"x")
    store.open()
    assert not stray.exists() and store.shards[0].part_file(store.shards[0].slices[0], "clip_vitb32").exists()
    conn.close()


def test_rebuild_and_imports_never_write_the_linked_files(tmp_root, monkeypatch):
    shards = _original(tmp_root.path)
    conn = open_db(tmp_root)
    store, _ = _adopt_all(tmp_root, shards, conn)
    sources = _all_source_files(shards[:2])
    before = sha_of(sources)
    recorder = WriteOpenRecorder(monkeypatch, file_ids(sources))
    # a derived link lost, then a forced rebuild of everything: links again, no copy
    os.unlink(store.shards[0].faiss_path("clip_vitl14"))
    assert rebuild(tmp_root, capacity=CAP) == [0, 1, 2]
    # imports fill the adopted active shard and go on into new shards
    for b, n in [(1, 13), (2, 30)]:
        ids = add_batch(conn, b, n, 500_000 + 1000 * b)
        res = IndexStore(tmp_root.embeddings_dir, capacity=CAP).import_batch(
            b, ids, vectors_for(ids), FP, conn)
        assert res.imported == n
    assert recorder.opens > 0 and recorder.hits == []
    monkeypatch.undo()
    assert sha_of(sources) == before
    store = IndexStore(tmp_root.embeddings_dir, capacity=CAP)
    store.open(conn)
    assert [s.rows for s in store.shards] == [CAP, CAP, CAP, CAP, 10]
    for s in (0, 1):
        shard = store.shards[s]
        for m in ORDER:
            src = shards[s][1][m]
            assert os.path.samefile(shard.faiss_path(m), src)
            assert os.path.samefile(shard.part_file(shard.slices[0], m), src)
    problems, _ = verify_store(store, conn, (ORDER, DIMS))
    assert problems == []
    conn.close()


def test_the_recorder_sees_a_write_open_of_a_linked_file(tmp_path, monkeypatch):
    (tmp_path / "a").write_bytes(b"abc")
    os.link(tmp_path / "a", tmp_path / "b")
    recorder = WriteOpenRecorder(monkeypatch, file_ids([tmp_path / "a"]))
    with open(tmp_path / "b", "rb"):
        pass
    assert recorder.hits == []
    with open(tmp_path / "b", "r+b"):
        pass
    assert recorder.hits and "(= " in recorder.hits[0]


def test_in_place_writers_refuse_a_shared_flat_file(tmp_path):
    flatfile.create(tmp_path / "a.faiss", 4)
    os.link(tmp_path / "a.faiss", tmp_path / "b.faiss")
    with pytest.raises(flatfile.SharedFile):
        flatfile.append_rows(tmp_path / "a.faiss", 4, 0, np.ones((2, 4), "float32"))
    with pytest.raises(flatfile.SharedFile):
        flatfile.truncate_to(tmp_path / "a.faiss", 4, 0)
    # creating a file over a shared name makes a new inode; the other name keeps its bytes
    before = (tmp_path / "b.faiss").read_bytes()
    flatfile.create(tmp_path / "a.faiss", 8)
    assert (tmp_path / "b.faiss").read_bytes() == before
    assert not os.path.samefile(tmp_path / "a.faiss", tmp_path / "b.faiss")
    os.link(tmp_path / "b.faiss", tmp_path / "c.faiss")
    pt.write_array(tmp_path / "b.faiss", np.zeros(3))
    assert (tmp_path / "c.faiss").read_bytes() == before
    assert np.array_equal(np.load(tmp_path / "b.faiss"), np.zeros(3))


def test_derived_files_with_other_links_are_replaced_not_appended(tmp_root):
    """An active shard's derived files linked from elsewhere (as an adopted shard's are):
    the next import writes new files; the other names keep their bytes."""
    conn = open_db(tmp_root)
    store = IndexStore(tmp_root.embeddings_dir, capacity=CAP)
    store.open()
    ids = add_batch(conn, 1, 5, 1000)
    store.import_batch(1, ids, vectors_for(ids), FP, conn)
    shard = store.shards[0]
    outside = tmp_root.path / "outside"
    outside.mkdir()
    names = [shard.faiss_path(m) for m in ORDER] + [shard.image_index_path]
    for p in names:
        os.link(p, outside / p.name)
    before = sha_of(outside.iterdir())
    ids = add_batch(conn, 2, 4, 2000)
    store.import_batch(2, ids, vectors_for(ids), FP, conn)
    assert sha_of(outside.iterdir()) == before
    assert all(os.stat(p).st_nlink == 1 for p in names)
    store.open(conn)
    assert verify_store(store, conn, (ORDER, DIMS))[0] == []
    conn.close()


def test_across_file_systems_the_files_are_copied_and_checked(tmp_root, monkeypatch):
    shards = _original(tmp_root.path, sizes=(CAP,))
    real_link = os.link

    def no_link(src, dst, *a, **kw):
        if "orig" in str(src):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_link(src, dst, *a, **kw)

    monkeypatch.setattr(os, "link", no_link)
    store, results = _adopt_all(tmp_root, shards)
    res = results[0]
    assert res.copied == ORDER and res.linked == [] and "another file system" in res.why_copied
    assert res.copied_bytes == sum(os.path.getsize(f) for f in shards[0][1].values())
    shard = store.shards[0]
    for m in ORDER:
        assert os.stat(shards[0][1][m]).st_nlink == 1
        # the derived file is still no second copy: a link of the copied part
        assert os.path.samefile(shard.faiss_path(m), shard.part_file(shard.slices[0], m))
    assert verify_store(store, None, (ORDER, DIMS))[0] == []
    # link="link" refuses instead of copying
    monkeypatch.undo()
    monkeypatch.setattr(os, "link", no_link)
    more = _original(tmp_root.path / "more", sizes=(CAP,))
    with pytest.raises(OSError):
        store.adopt_shard(1, more[0][0], _hashes(more[0][2]), more[0][1], FP, CAP, link="link")
    assert [s.number for s in store.shards] == [0]


def test_a_copy_that_differs_from_the_checked_hashes_is_refused(tmp_root):
    shards = _original(tmp_root.path, sizes=(7,))
    ids, files, vecs = shards[0]
    hashes = _hashes(vecs)
    hashes[3, 2] ^= 1
    store = IndexStore(tmp_root.embeddings_dir, capacity=CAP)
    store.open()
    with pytest.raises(BatchRejected, match="row 3 model clip_vitl14"):
        store.adopt_shard(0, ids, hashes, files, FP, CAP)
    store.open()
    assert store.shards == [] and not (tmp_root.embeddings_dir / ".adopt-staging").exists()


def test_refusals_name_what_is_wrong(tmp_root):
    import faiss

    shards = _original(tmp_root.path, sizes=(CAP, CAP))
    (ids0, files0, v0), (ids1, files1, v1) = shards
    store = IndexStore(tmp_root.embeddings_dir, capacity=CAP)
    store.open()
    with pytest.raises(BatchRejected, match="next shard is 0"):
        store.adopt_shard(1, ids1, _hashes(v1), files1, FP, CAP)
    with pytest.raises(BatchRejected, match="holds 20 rows of dim 512, expected 20 of dim 768"):
        store.adopt_shard(0, ids0, _hashes(v0), dict(files0, dinov2_base=files0["clip_vitb32"]), FP, CAP)
    with pytest.raises(BatchRejected, match="ids of shape"):
        store.adopt_shard(0, ids0[:, :1], _hashes(v0), files0, FP, CAP)
    hnsw = faiss.index_factory(DIMS["clip_vitb32"], "HNSW8", faiss.METRIC_INNER_PRODUCT)
    hnsw.add(v0["clip_vitb32"])
    faiss.write_index(hnsw, str(tmp_root.path / "hnsw.faiss"))
    with pytest.raises(BatchRejected, match="not an IndexFlatIP"):
        store.adopt_shard(0, ids0, _hashes(v0), dict(files0, clip_vitb32=tmp_root.path / "hnsw.faiss"),
                          FP, CAP)
    store.adopt_shard(0, ids0, _hashes(v0), files0, FP, CAP)
    with pytest.raises(FingerprintMismatch):
        store.adopt_shard(1, ids1, _hashes(v1), files1, "other-fp", CAP)
    with pytest.raises(UserError, match="link must be"):
        store.adopt_shard(1, ids1, _hashes(v1), files1, FP, CAP, link="symlink")
    assert [s.number for s in store.shards] == [0]


def test_a_dead_adoption_leaves_no_shard_and_a_bad_file_name_is_refused(tmp_root, monkeypatch):
    shards = _original(tmp_root.path, sizes=(CAP,))
    ids, files, vecs = shards[0]
    store = IndexStore(tmp_root.embeddings_dir, capacity=CAP)
    store.open()

    def die(*a, **kw):
        raise KeyboardInterrupt("killed before the rename")

    monkeypatch.setattr(os, "rename", die)
    with pytest.raises(KeyboardInterrupt):
        store.adopt_shard(0, ids, _hashes(vecs), files, FP, CAP)
    monkeypatch.undo()
    assert (tmp_root.embeddings_dir / ".adopt-staging" / "shard_0000").is_dir()
    store = IndexStore(tmp_root.embeddings_dir, capacity=CAP)
    store.open()
    assert store.shards == [] and not (tmp_root.embeddings_dir / ".adopt-staging").exists()
    store.adopt_shard(0, ids, _hashes(vecs), files, FP, CAP)
    shard = store.shards[0]
    s = shard.slices[0]
    s.entry = dict(s.entry, files={"clip_vitb32": "../../../etc/passwd"})
    with pytest.raises(UserError, match="not a part file of that line"):
        shard.part(s, "clip_vitb32")
