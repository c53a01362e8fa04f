"""Where an all-image tar's members are: the per-tar index files `imageall_NNNNN.idx.json`,
the combined `tar_index.json`, and locating (and reading) one image, tarred or still loose.

Offsets (tarmembers.py has the two kinds): `imageall_NNNNN.idx.json` (the project's own
file) holds each member's data offset and its header offset; `tar_index.json` (the
original's name) holds header offsets only, the original's meaning, so the original's
reader and the operator's scripts read the right bytes; the DB's `tar_offset` is the data
offset.

Scale: 533 tars of 10,000 would make a 5.3M-entry `tar_index.json` (hundreds of MB). The
durable per-tar index is `imageall_NNNNN.idx.json` (10,000 members, written once); the
fast reverse lookup is the DB's primary key (image_status.tar_name / tar_offset); the
combined `tar_index.json` in the original's shape is derived, streamed from the per-tar
files once per run that added a tar (archive.combined_index), never held in memory whole.
"""
from __future__ import annotations

import json
import os
import tarfile
import time
from pathlib import Path

from pipeline.core.fsutil import atomic_write_bytes, fsync_dir, read_json_or_none
from pipeline.stages.archive.tarmembers import (TAR_RE, Member, TarError, member_name, member_size_at,
                                                read_member_at, walk_headers)

IDX_SUFFIX = ".idx.json"
IDX_FORMAT = 2
# A member row of imageall_NNNNN.idx.json (format 1 rows lack the header offset: plain ustar
# members, whose header offset is data_offset - 512).
IDX_FIELDS = ["name", "data_offset", "size", "sha256", "header_offset"]
COMBINED_NAME = "tar_index.json"


def loose_path(root, listing_id: int, image_id: int) -> Path:
    """Where the worker's bg-removed image waits until it is tarred."""
    return root.bgremoved_dir / member_name(listing_id, image_id)


def idx_path(tars_dir: Path, name: str) -> Path:
    return Path(tars_dir) / (name[:-4] + IDX_SUFFIX)


# ---------------------------------------------------------------------------
# Per-tar index files and the combined tar_index.json
# ---------------------------------------------------------------------------
def write_idx(tars_dir: Path, name: str, first_row: int, members: list[Member], tar_bytes: int) -> None:
    body = {"format": IDX_FORMAT, "tar": name, "first_row": first_row, "count": len(members),
            "bytes": tar_bytes, "created": time.time(), "fields": IDX_FIELDS,
            "members": [[m.name, m.offset, m.size, m.sha256, m.header] for m in members]}
    atomic_write_bytes(idx_path(tars_dir, name), json.dumps(body, separators=(",", ":")).encode())


def read_idx(tars_dir: Path, name: str) -> dict | None:
    return read_json_or_none(idx_path(tars_dir, name))


def _members_with_headers(tars_dir: Path, name: str) -> list[Member]:
    """The members of a per-tar index; a format-1 index (data offsets only) first gets each
    member's header offset from a header walk of its tar (an adopted tar may carry extension
    headers, so data - 512 would be wrong there) and is rewritten in the current format."""
    idx = read_idx(tars_dir, name)
    if idx is None:
        return []
    if int(idx.get("format", 1)) >= IDX_FORMAT:
        return idx_members(idx)
    try:
        headers = {info.offset_data: info.offset for info in walk_headers(tars_dir / name)}
    except (tarfile.TarError, OSError) as exc:
        raise TarError(f"{tars_dir / name}: cannot read its headers to upgrade "
                       f"{idx_path(tars_dir, name).name} ({exc})") from None
    members = idx_members(idx)
    for m in members:
        if m.offset not in headers:
            raise TarError(f"{idx_path(tars_dir, name)}: no member of {name} has its data at "
                           f"{m.offset} ({m.name})")
        m.header = headers[m.offset]
    write_idx(tars_dir, name, int(idx["first_row"]), members, int(idx["bytes"]))
    return members


def idx_members(idx: dict) -> list[Member]:
    return [Member(row[0], int(row[1]), int(row[2]), row[3], int(row[4]) if len(row) > 4 else -1)
            for row in idx["members"]]


def final_tars(tars_dir: Path) -> list[str]:
    try:
        names = os.listdir(tars_dir)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if TAR_RE.match(n))


def write_combined_index(tars_dir: Path, out: Path | None = None) -> int:
    """Stream `tar_index.json` in the original's shape and meaning from the per-tar index
    files: {"tars": {tar: {member: header_offset}}, "reverse": {"{lid}_{iid}": [tar,
    header_offset]}}, header offsets being Python's `TarInfo.offset`. Two passes over the
    small per-tar files, so memory stays at one tar's worth."""
    tars_dir = Path(tars_dir)
    out = out or tars_dir / COMBINED_NAME
    names = [n for n in final_tars(tars_dir) if idx_path(tars_dir, n).exists()]
    tmp = out.with_name(f".{out.name}.tmp")
    count = 0
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write('{"tars": {')
            for i, name in enumerate(names):
                body = ",".join(f"{json.dumps(m.name)}: {m.header}"
                                for m in _members_with_headers(tars_dir, name))
                fh.write(("," if i else "") + f"{json.dumps(name)}: {{{body}}}")
            fh.write('}, "reverse": {')
            first = True
            for name in names:
                for m in _members_with_headers(tars_dir, name):
                    key = m.name[:-4] if m.name.endswith(".jpg") else m.name
                    fh.write(("" if first else ",") + f"{json.dumps(key)}: [{json.dumps(name)}, {m.header}]")
                    first = False
                    count += 1
            fh.write("}}")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(out.parent)
    return count


# ---------------------------------------------------------------------------
# Locating an image
# ---------------------------------------------------------------------------
def image_location(root, conn, listing_id: int, image_id: int) -> dict | None:
    """{"path", "offset", "size"} of an image: inside its tar (offset: the data offset, one
    seek away) once tarred, else its loose file in imageall_new/ (offset and size None).
    None if neither."""
    row = conn.execute("SELECT state, tar_name, tar_offset FROM image_status "
                       "WHERE listing_id = ? AND image_id = ?", (listing_id, image_id)).fetchone()
    if row and row[0] == "tarred" and row[1]:
        path = root.tars_dir / row[1]
        try:
            size = member_size_at(path, int(row[2]))
        except (OSError, TarError):
            size = None
        return {"path": str(path), "offset": int(row[2]), "size": size}
    loose = loose_path(root, listing_id, image_id)
    if loose.exists():
        return {"path": str(loose), "offset": None, "size": None}
    return None


def read_image(root, conn, listing_id: int, image_id: int) -> bytes:
    loc = image_location(root, conn, listing_id, image_id)
    if loc is None:
        raise TarError(f"image {listing_id}_{image_id} is neither tarred nor in {root.bgremoved_dir}")
    if loc["offset"] is None:
        return Path(loc["path"]).read_bytes()
    return read_member_at(Path(loc["path"]), loc["offset"], member_name(listing_id, image_id))
