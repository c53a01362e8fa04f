"""Files under the original's names keep the original's meaning (DECISIONS.md, "Shapes on the
wire"): `tar_index.json` and `primary_index.json` hold header offsets (Python's
`TarInfo.offset`), read back with the original's rule; the project's own stores (the DB,
`imageall_NNNNN.idx.json`, `primary_index.bin`, search's `primary_image`) hold data offsets;
pax and GNU extension headers are followed, never assumed to be 512 bytes; adopted original
files with such headers still resolve."""
from __future__ import annotations

import io
import json
import random
import tarfile

import pytest

from pipeline.core.db import connect
from tests.archive_support import add_images, cli, fake_jpeg, write_config

pytestmark = pytest.mark.timeout(180)


# ---- the original's reading rules ------------------------------------------------------------
def read_by_original_rule(tar_path, header_offset: int) -> tuple[str, bytes]:
    """The original's reader: open the tar, seek to the header offset, read the 512-byte header
    with TarInfo.frombuf, then the member's bytes right after it."""
    with open(tar_path, "rb") as fh:
        fh.seek(header_offset)
        info = tarfile.TarInfo.frombuf(fh.read(512), "utf-8", "surrogateescape")
        assert info.type in (tarfile.REGTYPE, tarfile.AREGTYPE)
        return info.name, fh.read(info.size)


def read_as_tarfile_does(tar_path, header_offset: int) -> tuple[str, bytes]:
    """The same rule where a member may sit behind pax or GNU long-name headers: the header
    chain at the offset read by tarfile itself (TarInfo.fromtarfile), then the data."""
    with tarfile.open(tar_path, "r:") as tf:
        tf.fileobj.seek(header_offset)
        info = tarfile.TarInfo.fromtarfile(tf)
        tf.fileobj.seek(info.offset_data)
        return info.name, tf.fileobj.read(info.size)


def _walk(tar_path) -> list[tarfile.TarInfo]:
    with tarfile.open(tar_path, "r:") as tf:
        return list(tf)


# ---- new tars, written by this project's tar and primary stages -------------------------------
def test_new_tars_read_with_the_original_rule(tmp_root):
    from pipeline.stages.archive.primary import BIN_NAME, JSON_NAME, load_state, primary_location
    from pipeline.stages.archive.tarindex import image_location, read_idx

    root = write_config(tmp_root, "[archive]\nimages_per_tar = 10\nverify_sample = 3\nprimary_per_tar = 4")
    add_images(root, 25)                      # listings 1000.., 3 images each
    proc = cli("run", "tar", "--once", root=root)
    assert proc.returncode == 0, proc.stderr
    proc = cli("run", "primary", "--once", root=root)
    assert proc.returncode == 0, proc.stderr

    # tar_index.json: every member, by its header offset, with the original's rule
    index = json.loads((root.tars_dir / "tar_index.json").read_text())
    assert sorted(index["tars"]) == ["imageall_00000.tar", "imageall_00001.tar"]
    seen = 0
    for tar, members in index["tars"].items():
        walked = {i.name: i for i in _walk(root.tars_dir / tar)}
        assert set(members) == set(walked)
        for name, header in members.items():
            assert header == walked[name].offset       # TarInfo.offset, not offset_data
            lid, iid = map(int, name[:-4].split("_"))
            assert read_by_original_rule(root.tars_dir / tar, header) == (name, fake_jpeg(lid, iid))
            seen += 1
    assert seen == 20 == len(index["reverse"])
    conn = connect(root.db_path)
    try:
        for key, (tar, header) in index["reverse"].items():
            lid, iid = map(int, key.split("_"))
            assert read_by_original_rule(root.tars_dir / tar, header)[1] == fake_jpeg(lid, iid)
            # the project's own stores keep data offsets: the DB, the per-tar index, image_location
            db_off = conn.execute("SELECT tar_offset FROM image_status WHERE listing_id = ? AND "
                                  "image_id = ?", (lid, iid)).fetchone()[0]
            info = next(i for i in _walk(root.tars_dir / tar) if i.name == f"{key}.jpg")
            assert db_off == info.offset_data != header
            assert image_location(root, conn, lid, iid)["offset"] == info.offset_data
        idx = read_idx(root.tars_dir, "imageall_00001.tar")
        assert idx["fields"][:2] == ["name", "data_offset"] and idx["fields"][-1] == "header_offset"
        walked = _walk(root.tars_dir / "imageall_00001.tar")
        assert [(r[1], r[4]) for r in idx["members"]] == [(i.offset_data, i.offset) for i in walked]

        # primary_index.json: header offsets; primary_index.bin and search's lookup: data offsets
        pindex = json.loads((root.primary_dir / JSON_NAME).read_text())
        state = load_state(root.primary_dir)
        assert (root.primary_dir / BIN_NAME).exists() and len(pindex["reverse"]) == len(state.records) > 0
        prim = dict(conn.execute("SELECT listing_id, image_id FROM images WHERE is_primary = 1"))
        for lid_text, (tar, header) in pindex["reverse"].items():
            lid = int(lid_text)
            want = fake_jpeg(lid, prim[lid])
            assert read_by_original_rule(root.primary_dir / tar, header) == (f"{lid}.jpg", want)
            assert pindex["tars"][tar][f"{lid}.jpg"] == header
            loc = primary_location(root, lid)
            info = next(i for i in _walk(root.primary_dir / tar) if i.name == f"{lid}.jpg")
            assert (loc["offset"], loc["size"]) == (info.offset_data, len(want))
            assert state.records[lid].offset == info.offset_data and state.records[lid].header == header
            with open(loc["path"], "rb") as fh:              # one seek to the bytes
                fh.seek(loc["offset"])
                assert fh.read(loc["size"]) == want
    finally:
        conn.close()


def test_rebuild_index_rewrites_tar_index_in_the_original_meaning(tmp_root):
    from pipeline.stages.archive.tarindex import idx_path, read_idx

    root = write_config(tmp_root, "[archive]\nimages_per_tar = 10\nverify_sample = 3")
    add_images(root, 20)
    assert cli("run", "tar", "--once", root=root).returncode == 0
    combined = root.tars_dir / "tar_index.json"
    good = json.loads(combined.read_text())
    # a tar_index.json in the old (data offset) meaning, and an old per-tar index without
    # header offsets: the rebuild puts header offsets back and upgrades the per-tar index
    stale = {"tars": {t: {n: o + 512 for n, o in m.items()} for t, m in good["tars"].items()},
             "reverse": {k: [t, o + 512] for k, (t, o) in good["reverse"].items()}}
    combined.write_text(json.dumps(stale))
    idx = read_idx(root.tars_dir, "imageall_00000.tar")
    old = dict(idx, format=1, members=[r[:4] for r in idx["members"]])
    old.pop("fields")
    idx_path(root.tars_dir, "imageall_00000.tar").write_text(json.dumps(old))

    proc = cli("run", "tar", "--rebuild-index", root=root)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(combined.read_text()) == good
    assert read_idx(root.tars_dir, "imageall_00000.tar")["members"] == idx["members"]


# ---- extension headers: long names, pax records --------------------------------------------------
def _extension_tar(path, fmt) -> list[tuple[str, bytes]]:
    """A tar as other writers leave it: GNU long names, or pax records (a long name, a float
    mtime as tarfile.add leaves it), so a header chain spans more than one block."""
    from original_support import make_jpeg

    members = [(f"{'d' * 120}/{i}_{i}.jpg" if i % 2 else f"{100 + i}_{200 + i}.jpg",
                make_jpeg(i, 16)) for i in range(5)]   # real JPEGs: adoption decodes a sample
    with tarfile.open(path, "w", format=fmt) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_700_000_000.25 if fmt == tarfile.PAX_FORMAT else 1_700_000_000
            tf.addfile(info, io.BytesIO(data))
    return members


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT], ids=["pax", "gnu"])
def test_extension_headers_are_followed_not_assumed(tmp_path, fmt):
    from pipeline.adopt.tars import check_tar
    from pipeline.stages.archive.tarindex import idx_members, read_idx, write_combined_index, write_idx
    from pipeline.stages.archive.tarmembers import TarError, header_at, read_member_at, verify_tar

    tars = tmp_path / "tars"
    tars.mkdir()
    path = tars / "imageall_00000.tar"
    members = _extension_tar(path, fmt)
    walked = _walk(path)
    assert all(i.offset_data > i.offset + 512 for i in walked[1::2])   # behind extension headers

    # header_at reads the chain as tarfile does
    with open(path, "rb") as fh:
        for info in walked:
            got = header_at(fh, info.offset)
            assert (got.name, got.offset, got.offset_data, got.size) == \
                (info.name, info.offset, info.offset_data, info.size)
        with pytest.raises(TarError):
            header_at(fh, walked[1].offset + 512)   # inside a chain: an extension record, not a member

    # the original's index holds header offsets: each is turned into its member's data offset
    index = {i.name: i.offset for i in walked}
    check = check_tar(path, index, 2, random.Random(0))
    assert check.ok and not check.issues and check.header_offsets == len(walked) and not check.data_offsets
    assert [(m.offset, m.header) for m in check.members] == [(i.offset_data, i.offset) for i in walked]
    verify_tar(path, check.members, sample=5)

    # recorded, then derived: tar_index.json gives TarInfo.offset back, and those read right
    write_idx(tars, path.name, 0, check.members, path.stat().st_size)
    assert idx_members(read_idx(tars, path.name)) == check.members
    assert write_combined_index(tars) == len(members)
    combined = json.loads((tars / "tar_index.json").read_text())
    assert combined["tars"][path.name] == index
    for name, data in members:
        assert read_as_tarfile_does(path, combined["tars"][path.name][name]) == (name, data)
    # a reader by data offset checks the ustar header just before the data
    short = walked[0]
    assert read_member_at(path, short.offset_data, short.name) == members[0][1]

    # an old per-tar index (data offsets only) is upgraded from the tar's own headers
    idx = read_idx(tars, path.name)
    old = dict(idx, format=1, members=[r[:4] for r in idx["members"]])
    (tars / "imageall_00000.idx.json").write_text(json.dumps(old))
    (tars / "tar_index.json").unlink()
    write_combined_index(tars)
    assert json.loads((tars / "tar_index.json").read_text())["tars"][path.name] == index
    assert idx_members(read_idx(tars, path.name)) == check.members


# ---- adopted original files (header offsets, pax headers) still resolve --------------------------
def _repax(tar_path) -> dict[str, int]:
    """Rewrite a tar as tarfile.add leaves one (a pax record per member for its float mtime);
    returns {member: header offset}, the last of a repeated name winning."""
    with tarfile.open(tar_path, "r:") as tf:
        members = [(i.name, tf.extractfile(i).read()) for i in tf]
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_700_000_000.5
            tf.addfile(info, io.BytesIO(data))
    walked = _walk(tar_path)
    assert all(i.offset_data > i.offset + 512 for i in walked)
    return {i.name: i.offset for i in walked}


def test_adopted_original_files_with_header_offsets_resolve(tmp_path):
    from original_support import build_original, root_config

    from pipeline.adopt import adopt
    from pipeline.core.db import open_db
    from pipeline.core.root import Root
    from pipeline.stages.archive.primary import JSON_NAME, load_state, open_primary, primary_location
    from pipeline.stages.archive.tarindex import read_image

    truth = build_original(tmp_path / "orig")
    orig = truth.path
    tars_dir, prim_dir = orig / "images/imagetarred", orig / "images/imageprimary"
    index = json.loads((tars_dir / "tar_index.json").read_text())
    for name in truth.tars[:2]:                                    # two tars behind pax records
        index["tars"][name] = _repax(tars_dir / name)
        for member, off in index["tars"][name].items():
            index["reverse"][member[:-4]] = [name, off]
    (tars_dir / "tar_index.json").write_text(json.dumps(index))
    pindex = json.loads((prim_dir / "primary_index.json").read_text())
    last = sorted(pindex["tars"])[-1]                              # the one with an appended update
    pindex["tars"][last] = _repax(prim_dir / last)
    for member, off in pindex["tars"][last].items():
        pindex["reverse"][member[:-4]] = [last, off]
    (prim_dir / "primary_index.json").write_text(json.dumps(pindex))

    root_config(tmp_path / "root", truth.spec)
    root = Root(tmp_path / "root").ensure()
    report = adopt(root, orig)
    assert "tar_index_disagrees" not in report.inconsistencies, report.inconsistencies
    assert "primary_index_disagrees" not in report.inconsistencies, report.inconsistencies
    assert not any("data offsets" in n for n in report.notes)

    conn = open_db(root)
    try:
        tarred = [k for k, v in truth.images.items() if v.get("tar")]
        assert tarred
        for key in tarred:                                          # the DB seeks by data offsets
            assert read_image(root, conn, *key) == truth.jpeg[key]
        for lid, data in truth.primary.items():
            assert open_primary(root, lid, conn) == data
            loc = primary_location(root, lid)
            with open(loc["path"], "rb") as fh:
                fh.seek(loc["offset"])
                assert fh.read(loc["size"]) == data
    finally:
        conn.close()
    # the new root's files under the original's names: header offsets, as the original's
    new_index = json.loads((root.tars_dir / "tar_index.json").read_text())
    assert new_index["tars"] == index["tars"]
    assert new_index["reverse"] == index["reverse"]
    for key, (tar, off) in new_index["reverse"].items():
        lid, iid = map(int, key.split("_"))
        assert read_as_tarfile_does(root.tars_dir / tar, off)[1] == truth.jpeg[(lid, iid)]
    new_pindex = json.loads((root.primary_dir / JSON_NAME).read_text())
    assert new_pindex["reverse"] == pindex["reverse"]
    state = load_state(root.primary_dir)
    for lid, (tar, off) in new_pindex["reverse"].items():
        assert read_as_tarfile_does(root.primary_dir / tar, off) == (f"{lid}.jpg", truth.primary[int(lid)])
        assert state.records[int(lid)].header == off
