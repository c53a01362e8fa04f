"""The all-image tars' members: `images/imageall_tars/imageall_NNNNN.tar`, tar N holding
global rows N x 10,000 onward (members `{listing_id}_{image_id}.jpg` in global-row order).
Names, writing ustar members, verifying a tar by a header walk, and reading one member by
its offset (the primary tars use the same writer and reader).

Two offsets name a member (DECISIONS.md, "Shapes on the wire"):
- the *header* offset (Python's `TarInfo.offset`): where the member's first header block
  starts, pax or GNU extension headers included. The files under the original's names
  (`tar_index.json`, `primary_index.json`) hold these, as the original's did;
- the *data* offset (`TarInfo.offset_data`): the member's first byte. The project's own
  stores (the DB's `image_status.tar_offset`, `imageall_NNNNN.idx.json`, `primary_index.bin`,
  search's `primary_image.offset`) hold these, so an image is one seek away; readers check
  the ustar header just before the data before trusting one.
This project writes plain ustar members, so its header offsets are data offsets - 512; an
adopted tar may carry extension headers, so a header offset is read (`header_at`), never
computed from a data offset.
"""
from __future__ import annotations

import hashlib
import os
import random
import re
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from pipeline.core.errors import UserError

TAR_RE = re.compile(r"^imageall_(\d{5,})\.tar$")
BLOCK = 512
RECORD = 20 * BLOCK          # tar's record size: the archive is padded to a multiple
DEFAULT_MAX_MEMBER = 64 * 1024 * 1024
COPY_CHUNK = 1024 * 1024


class TarError(UserError):
    """A tar or a member is not what its index says (or is hostile)."""


def tar_name(number: int) -> str:
    return f"imageall_{number:05d}.tar"


def tar_number(name: str) -> int | None:
    m = TAR_RE.match(name)
    return int(m.group(1)) if m else None


def member_name(listing_id: int, image_id: int) -> str:
    return f"{int(listing_id)}_{int(image_id)}.jpg"


# ---------------------------------------------------------------------------
# Writing a tar
# ---------------------------------------------------------------------------
def _header(name: str, size: int, mtime: int, mode: int = 0o644) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = mtime
    info.mode = mode
    info.type = tarfile.REGTYPE
    info.uname = info.gname = ""
    buf = info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict")
    if len(buf) != BLOCK:  # a short member name always fits one ustar header
        raise TarError(f"member name {name!r} does not fit a ustar header")
    return buf


@dataclass
class Member:
    name: str
    offset: int      # data offset: the member's first byte
    size: int
    sha256: str
    header: int = -1  # header offset (TarInfo.offset); -1: a plain ustar member, offset - 512

    def __post_init__(self) -> None:
        if self.header < 0:
            self.header = self.offset - BLOCK


@dataclass
class WriteResult:
    members: list[Member]
    bytes: int


def write_members(out_path: Path, sources: Iterable[tuple[str, Path | bytes]],
                  between: Callable[[int], bool] | None = None,
                  start_offset: int = 0, fh=None) -> WriteResult:
    """Write ustar members (name, file path or bytes) and the end-of-archive blocks.

    ``between(i)`` is called before each member; returning False aborts (TarAborted).
    With ``fh`` given, members are written into that open file from ``start_offset``
    (the primary tars append this way); otherwise ``out_path`` is created."""
    own = fh is None
    if own:
        fh = open(out_path, "wb", buffering=COPY_CHUNK)
    members: list[Member] = []
    pos = start_offset
    try:
        fh.seek(pos)
        for i, (name, src) in enumerate(sources):
            if between is not None and not between(i):
                raise TarAborted(f"stopped after {i} members")
            if isinstance(src, (bytes, bytearray)):
                data = bytes(src)
                mtime = int(time.time())
            else:
                with open(src, "rb") as sfh:
                    data = sfh.read()
                    mtime = int(os.fstat(sfh.fileno()).st_mtime)
            fh.write(_header(name, len(data), mtime))
            fh.write(data)
            pad = (-len(data)) % BLOCK
            if pad:
                fh.write(b"\0" * pad)
            members.append(Member(name, pos + BLOCK, len(data), hashlib.sha256(data).hexdigest(), pos))
            pos += BLOCK + len(data) + pad
        end = pos
        trailer = 2 * BLOCK
        total = end + trailer
        total += (-total) % RECORD
        fh.write(b"\0" * (total - end))
        fh.truncate(total)
        fh.flush()
        os.fsync(fh.fileno())
    finally:
        if own:
            fh.close()
    return WriteResult(members, pos)


class TarAborted(Exception):
    """The stage was asked to stop while a tar was being written."""


def walk_headers(path: Path) -> list[tarfile.TarInfo]:
    """Every member header of a tar (a header walk: data is seeked over, not read)."""
    with tarfile.open(path, mode="r:") as tf:
        return list(tf)


def verify_tar(path: Path, members: list[Member], sample: int = 100,
               loose: Callable[[str], Path | None] | None = None,
               rng: random.Random | None = None) -> None:
    """Member count, names, types, sizes, header and data offsets by a header walk; sha256 of a sample
    (first, last and ``sample`` random members) read by offset, compared with the recorded
    hash and, where ``loose`` gives a file, with the loose file itself. Raises TarError."""
    try:
        infos = walk_headers(path)
    except (tarfile.TarError, OSError) as exc:
        raise TarError(f"{path}: unreadable tar ({exc})") from None
    if len(infos) != len(members):
        raise TarError(f"{path}: {len(infos)} members, expected {len(members)}")
    for info, m in zip(infos, members):
        if info.name != m.name or info.offset_data != m.offset or info.offset != m.header \
                or info.size != m.size or info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
            raise TarError(f"{path}: member {info.name!r} (header at {info.offset}, data at "
                           f"{info.offset_data}) does not match the index ({m.name!r}, header at "
                           f"{m.header}, data at {m.offset}, {m.size} bytes)")
    if not members:
        return
    rng = rng or random.Random()
    picks = {0, len(members) - 1}
    picks.update(rng.sample(range(len(members)), min(sample, len(members))))
    with open(path, "rb") as fh:
        for i in sorted(picks):
            m = members[i]
            data = _read_at(fh, m.offset, m.size)
            digest = hashlib.sha256(data).hexdigest()
            if digest != m.sha256:
                raise TarError(f"{path}: member {m.name} checksum differs from the index")
            src = loose(m.name) if loose else None
            if src is not None and src.exists():
                if hashlib.sha256(src.read_bytes()).hexdigest() != digest:
                    raise TarError(f"{path}: member {m.name} differs from its loose file {src}")


def _read_at(fh, offset: int, size: int) -> bytes:
    fh.seek(offset)
    data = fh.read(size)
    if len(data) != size:
        raise TarError(f"short read at {offset}: {len(data)} of {size} bytes")
    return data


# ---------------------------------------------------------------------------
# Reading one member by offset
# ---------------------------------------------------------------------------
def header_at(fh, header_offset: int) -> tarfile.TarInfo:
    """The member whose header chain starts at ``header_offset`` (a header offset, as in the
    original's index files), read as Python's tarfile reads it: pax and GNU long-name headers
    are followed, so the result's ``offset_data`` and ``name`` are the member's own."""
    if header_offset < 0 or header_offset % BLOCK:
        raise TarError(f"offset {header_offset} cannot be a member's header offset")
    fh.seek(header_offset)
    try:
        # TarFile reads its first member from the file's current position
        info = tarfile.TarFile(fileobj=fh, mode="r").firstmember
    except (tarfile.TarError, EOFError) as exc:
        raise TarError(f"no valid tar header at offset {header_offset} ({exc})") from None
    if info is None:
        raise TarError(f"no valid tar header at offset {header_offset}")
    return info


def read_header_at(fh, data_offset: int) -> tarfile.TarInfo:
    if data_offset < BLOCK:
        raise TarError(f"offset {data_offset} cannot be a member's data offset")
    fh.seek(data_offset - BLOCK)
    buf = fh.read(BLOCK)
    try:
        return tarfile.TarInfo.frombuf(buf, "utf-8", "surrogateescape")
    except tarfile.HeaderError as exc:
        raise TarError(f"no valid tar header before offset {data_offset} ({exc})") from None


def read_member_at(path: Path, data_offset: int, expect_name: str | None = None,
                   max_size: int = DEFAULT_MAX_MEMBER) -> bytes:
    """The bytes of the member whose data starts at ``data_offset``, after checking its header
    (checksum, regular file, the expected name, a sane size)."""
    try:
        with open(path, "rb") as fh:
            info = read_header_at(fh, data_offset)
            if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
                raise TarError(f"{path}: member at {data_offset} is not a regular file")
            if expect_name is not None and info.name != expect_name:
                raise TarError(f"{path}: member at {data_offset} is {info.name!r}, "
                               f"expected {expect_name!r}")
            if info.size > max_size:
                raise TarError(f"{path}: member {info.name!r} is {info.size} bytes "
                               f"(over the {max_size}-byte cap)")
            return _read_at(fh, data_offset, info.size)
    except FileNotFoundError:
        raise TarError(f"tar {path} is missing") from None


def member_size_at(path: Path, data_offset: int) -> int:
    with open(path, "rb") as fh:
        return read_header_at(fh, data_offset).size
