"""Hostile tar members are refused and reported; nothing is written outside the destination."""
from __future__ import annotations

import io
import os
import tarfile

import pytest

from pipeline.stages.archive.tarextract import safe_extract
from pipeline.stages.archive.tarmembers import TarError


def _add(tf, name, data=b"x", **kw):
    info = tarfile.TarInfo(name)
    for k, v in kw.items():
        setattr(info, k, v)
    if info.type in (tarfile.REGTYPE, tarfile.AREGTYPE):
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    else:
        tf.addfile(info)


@pytest.fixture
def hostile(tmp_path):
    path = tmp_path / "evil.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        _add(tf, "good.jpg", b"fine")
        _add(tf, "../x.jpg", b"escape")
        _add(tf, "/tmp/abs_evil.jpg", b"absolute")
        _add(tf, "sub/../../y.jpg", b"escape2")
        _add(tf, "link.jpg", type=tarfile.SYMTYPE, linkname="/etc/passwd")
        _add(tf, "hard.jpg", type=tarfile.LNKTYPE, linkname="good.jpg")
        _add(tf, "dev.jpg", type=tarfile.CHRTYPE, devmajor=1, devminor=3)
        _add(tf, "fifo.jpg", type=tarfile.FIFOTYPE)
        _add(tf, "big.jpg", b"z" * 5000)
        _add(tf, "unlisted.jpg", b"not in the manifest")
    return path


ALLOWED = ["good.jpg", "../x.jpg", "/tmp/abs_evil.jpg", "sub/../../y.jpg", "link.jpg", "hard.jpg",
           "dev.jpg", "fifo.jpg", "big.jpg"]


def test_hostile_members_are_refused(tmp_path, hostile):
    dest = tmp_path / "out" / "dest"
    before = set(os.listdir(tmp_path))
    report = safe_extract(hostile, dest, ALLOWED, max_size=1000)
    assert report.extracted == ["good.jpg"]
    reasons = dict(report.refused)
    assert reasons["../x.jpg"] == "path with '..'"
    assert reasons["/tmp/abs_evil.jpg"] == "absolute path"
    assert reasons["sub/../../y.jpg"] == "path with '..'"
    assert reasons["link.jpg"] == "link" and reasons["hard.jpg"] == "link"
    assert reasons["dev.jpg"] == "device or fifo" and reasons["fifo.jpg"] == "device or fifo"
    assert reasons["big.jpg"].startswith("oversized")
    assert reasons["unlisted.jpg"] == "not named in the manifest"
    assert sorted(os.listdir(dest)) == ["good.jpg"]
    assert (dest / "good.jpg").read_bytes() == b"fine"
    assert set(os.listdir(tmp_path)) == before | {"out"}
    assert os.listdir(tmp_path / "out") == ["dest"]
    assert not os.path.exists("/tmp/abs_evil.jpg")


def test_strict_mode_raises_after_reporting(tmp_path, hostile):
    with pytest.raises(TarError, match="refused 9 member"):
        safe_extract(hostile, tmp_path / "d", ALLOWED, max_size=1000, strict=True)


def test_symlinked_destination_subfolder_cannot_escape(tmp_path):
    """A member path through a symlink planted in the destination stays refused."""
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    os.symlink(outside, dest / "sub")
    path = tmp_path / "t.tar"
    with tarfile.open(path, "w") as tf:
        _add(tf, "sub/a.jpg", b"through a link")
    report = safe_extract(path, dest, None)
    assert report.refused == [("sub/a.jpg", "escapes the destination")]
    assert os.listdir(outside) == []


def test_not_a_tar_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(TarError, match="unreadable tar"):
        safe_extract(bad, tmp_path / "d", None)
