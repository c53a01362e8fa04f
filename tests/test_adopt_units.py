"""The pieces of an adoption on their own: the state mapping, the streaming JSON reader,
tar checks (offset kinds, truncation, undecodable members), linking with its copy fallback,
and shard structure checks."""
from __future__ import annotations

import errno
import json
import os
import random

import numpy as np
import pytest

from original_support import _write_tar, make_jpeg, short_hash

pytestmark = pytest.mark.timeout(60)


# ---- download_done -> state ------------------------------------------------------------
CASES = [
    # code, in shard, tar, refused, tarbad, bg file, raw file, url -> state, reason part, link
    (3, True, True, None, None, False, False, "u", "tarred", None, None),
    (4, True, True, None, None, False, False, None, "tarred", None, None),
    (2, True, False, None, None, True, False, "u", "embedded", None, "embedded"),
    (2, True, False, None, None, False, False, "u", "embedded", None, None),
    (4, True, False, None, "its tar x was refused", False, False, None, "embedded", "was refused", None),
    (4, False, True, "shard_0001 refused: bad", None, False, False, None, "failed", "shard_0001", None),
    (-1, False, False, None, None, False, False, "u", "dead", "original: dead", None),
    (0, False, False, None, None, False, False, "u", "discovered", None, None),
    (1, False, False, None, None, False, False, None, "discovered", None, None),
    (2, False, False, None, None, False, True, "u", "downloaded", None, "download"),
    (2, False, False, None, None, False, False, "u", "discovered", None, None),
    (2, False, False, None, None, False, False, None, "failed", "neither its file nor its url", None),
    (3, False, False, None, None, False, False, "u", "failed", "in no shard", None),
    (0, True, False, None, None, False, False, "u", "embedded", None, None),
    (7, False, False, None, None, False, False, "u", "failed", "unknown download_done", None),
]


@pytest.mark.parametrize("code,shard,tar,refused,tarbad,bg,raw,url,state,reason,link", CASES)
def test_map_image(code, shard, tar, refused, tarbad, bg, raw, url, state, reason, link):
    from pipeline.adopt.dbmap import map_image

    m = map_image(1, 2, code, url, 0 if shard else None, 5 if shard else None, 5 if shard else None,
                  "imageall_00000.tar" if tar else None, 1536 if tar else None, refused, tarbad,
                  None, bg, raw)
    assert m.state == state
    if reason is None:
        assert m.reason is None or state == "embedded"
    else:
        assert reason in m.reason
    assert m.link == link
    if state == "tarred":
        assert (m.tar_name, m.tar_offset, m.global_row) == ("imageall_00000.tar", 1536, 5)
    if shard and code in (0, 1, -1):
        assert m.issue[0] == "db_state_disagrees"


# ---- streaming JSON ----------------------------------------------------------------------
def test_streaming_json_matches_json_loads_across_chunk_boundaries(tmp_path, monkeypatch):
    from pipeline.adopt import jsonstream

    doc = {"tars": {f"t{i}.tar": {f"{i}_{k}.jpg": 512 * (k + 1) + 123456789 for k in range(7)}
                    for i in range(30)},
           "reverse": {f"{i}_{k}": [f"t{i}.tar", 1024 * k] for i in range(30) for k in range(7)},
           "other": [1, {"a": [2.5, None, True, 'x"y']}]}
    path = tmp_path / "idx.json"
    path.write_text(json.dumps(doc, indent=1))
    monkeypatch.setattr(jsonstream, "CHUNK", 7)
    for key in ("tars", "reverse"):
        got = dict(jsonstream.iter_member(path, key))
        assert got == doc[key]
    assert list(jsonstream.iter_member(path, "absent")) == []
    rows = [[i, i + 1, "abcdef012345"] for i in range(100)]
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    assert list(jsonstream.iter_array(tmp_path / "rows.json")) == rows
    (tmp_path / "bad.json").write_text('{"tars": {"a": {"x": 1}, "b": {"y": ')
    with pytest.raises(jsonstream.JSONShapeError):
        dict(jsonstream.iter_member(tmp_path / "bad.json", "tars"))


# ---- tar checks ----------------------------------------------------------------------------
def _tar(tmp_path, n=6):
    members = [(f"{100 + i}_{200 + i}.jpg", make_jpeg(i, 16)) for i in range(n)]
    path = tmp_path / "imageall_00000.tar"
    offsets = _write_tar(path, members)
    return path, offsets, members


def test_tar_check_accepts_data_or_header_offsets(tmp_path):
    from pipeline.adopt.tars import check_tar

    path, offsets, members = _tar(tmp_path)
    c = check_tar(path, offsets, 2, random.Random(0))
    assert c.ok and not c.issues and c.header_offsets == 0
    assert [m.offset for m in c.members] == list(offsets.values())
    import hashlib

    assert [m.sha256 for m in c.members] == [hashlib.sha256(d).hexdigest() for _, d in members]
    headers = {k: v - 512 for k, v in offsets.items()}
    c = check_tar(path, headers, 2, random.Random(0))
    assert c.ok and not c.issues and c.header_offsets == len(members)
    wrong = dict(offsets)
    wrong["101_201.jpg"] += 7
    wrong["999_1.jpg"] = 4096
    c = check_tar(path, wrong, 2, random.Random(0))
    assert c.ok and len(c.issues) == 2
    assert any("101_201.jpg" in i and "data starts at" in i for i in c.issues)


def test_tar_check_walks_extension_headers_too(tmp_path):
    """pax and GNU long-name headers (not the original's, but any tar): the same answer."""
    import hashlib
    import io
    import tarfile

    from pipeline.adopt.tars import check_tar

    for fmt in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT):
        path = tmp_path / f"imageall_0000{fmt}.tar"
        data = [make_jpeg(i, 16) for i in range(3)]
        names = [f"{'d' * 120}/{i}_{i}.jpg" for i in range(3)]
        with tarfile.open(path, "w", format=fmt) as tf:
            for n, d in zip(names, data):
                info = tarfile.TarInfo(n)
                info.size = len(d)
                tf.addfile(info, io.BytesIO(d))
        with tarfile.open(path) as tf:
            want = {i.name: i.offset_data for i in tf}
        c = check_tar(path, want, 1, random.Random(0))
        assert c.ok and not c.issues, (c.problems, c.issues)
        assert [m.sha256 for m in c.members] == [hashlib.sha256(d).hexdigest() for d in data]


def test_tar_check_refuses_truncated_or_undecodable(tmp_path):
    from pipeline.adopt.tars import check_tar, walk

    path, offsets, members = _tar(tmp_path)
    data = path.read_bytes()
    # cut exactly after the 4th member (a clean member boundary: no end-of-archive blocks)
    _, end, problem = walk(path)
    assert problem is None
    cut = offsets["103_203.jpg"] + ((len(members[3][1]) + 511) // 512) * 512
    path.write_bytes(data[:cut])
    c = check_tar(path, offsets, 2, random.Random(0))
    assert not c.ok and ("truncated" in c.problems[0] or "end-of-archive" in c.problems[0])
    path.write_bytes(data[: cut - 100])
    c = check_tar(path, offsets, 2, random.Random(0))
    assert not c.ok
    # a member that is not an image
    bad = tmp_path / "imageall_00001.tar"
    _write_tar(bad, [("1_2.jpg", b"\xff\xd8 not a jpeg at all " * 20)])
    c = check_tar(bad, None, 1, random.Random(0))
    assert not c.ok and "does not decode" in c.problems[0]


# ---- linking ------------------------------------------------------------------------------
def test_place_links_else_copies_and_is_idempotent(tmp_path, monkeypatch):
    from pipeline.adopt import files

    src = tmp_path / "a.tar"
    src.write_bytes(b"x" * 5000)
    dst = tmp_path / "out" / "a.tar"
    dst.parent.mkdir()
    assert files.place(src, dst).how == "linked"
    assert os.path.samefile(src, dst)
    assert files.place(src, dst).how == "present"

    def no_link(a, b, **kw):
        raise OSError(errno.EXDEV, "cross-device link")

    monkeypatch.setattr(files.os, "link", no_link)
    dst2 = tmp_path / "out" / "b.tar"
    placed = files.place(src, dst2)
    assert placed.how == "copied" and placed.bytes_copied == 5000
    assert dst2.read_bytes() == src.read_bytes() and not os.path.samefile(src, dst2)
    assert files.place(src, dst2, mode="copy").how == "present"
    assert not list((tmp_path / "out").glob(".*adopt-tmp"))


# ---- shard structure ----------------------------------------------------------------------
def test_read_source_names_each_structural_problem(tmp_path):
    import faiss

    from pipeline.adopt.shards import check_vectors, read_source

    order, dims = ["m1", "m2"], {"m1": 8, "m2": 4}
    d = tmp_path / "shard_0001"
    d.mkdir()
    rng = np.random.default_rng(0)
    vecs = {m: rng.standard_normal((5, dims[m])).astype("float32") for m in order}
    for m in order:
        idx = faiss.IndexFlatIP(dims[m])
        idx.add(vecs[m])
        faiss.write_index(idx, str(d / f"{m}.faiss"))
    rows = [[10, 20 + r, 10 + r, *[short_hash(vecs[m][r]) for m in order]] for r in range(5)]
    (d / "image_index.json").write_text(json.dumps(rows))
    src = read_source(1, d, "data/embeddings", order, dims, capacity=10, last=True)
    assert src.ok, src.problems
    check_vectors(src, order)
    assert src.ok and src.n_mismatch == 0

    rows[3][2] = 99
    (d / "image_index.json").write_text(json.dumps(rows))
    src = read_source(1, d, "data/embeddings", order, dims, capacity=10, last=True)
    assert "row 3 has global row 99, expected 13" in src.problems[0]
    src = read_source(1, d, "data/embeddings", order, {"m1": 8, "m2": 6}, capacity=10, last=True)
    assert any("m2.faiss has dim 4, the model registry says 6" in p for p in src.problems)
    rows[3][2] = 13
    rows[2][4] = "0123456789ab"
    (d / "image_index.json").write_text(json.dumps(rows))
    src = read_source(1, d, "data/embeddings", order, dims, capacity=10, last=False)
    assert any("finalized shard holds exactly 10" in p for p in src.problems)
    src = read_source(1, d, "data/embeddings", order, dims, capacity=10, last=True)
    check_vectors(src, order)
    assert src.n_mismatch == 1 and src.mismatches[0][:2] == (2, "m2")
    hnsw = faiss.IndexHNSWFlat(8, 8)
    hnsw.add(vecs["m1"])
    faiss.write_index(hnsw, str(d / "m1.faiss"))
    src = read_source(1, d, "data/embeddings", order, dims, capacity=10, last=True)
    assert any("m1.faiss is not an IndexFlatIP file" in p for p in src.problems)
    (d / "image_index.json").unlink()
    src = read_source(1, d, "data/embeddings", order, dims, capacity=10, last=True)
    assert any("image_index.json is missing" in p for p in src.problems)


def test_stop_request_leaves_a_resumable_root(tmp_path):
    """A stop between units ends the run as "stopped"; the next run completes it."""
    from original_support import Spec, build_original, root_config

    from pipeline.adopt import adopt
    from pipeline.core.root import Root

    truth = build_original(tmp_path / "orig", Spec(listings=40, embedded=100, downloaded=4,
                                                   pending=2, queued=2, dead=2, twins=1,
                                                   backups=False))
    root_config(tmp_path / "root", truth.spec)
    root = Root(tmp_path / "root").ensure()
    calls = {"n": 0}

    def stop():
        calls["n"] += 1
        return calls["n"] > 4

    report = adopt(root, truth.path, stop=stop)
    assert report.outcome == "stopped"
    report = adopt(root, truth.path)
    assert report.ok and report.adopted["status"] == truth.states()


