"""The original's tars: reading one, checking it against its offset index, and recording it
in the new root's formats.

Every tar gets a header walk (every member's name, header and data offset, size), which is
compared with the original's index; each member's bytes are read once in file order for
the sha256 the new per-tar index (`imageall_NNNNN.idx.json`) records, and a sample of
members is decoded as images. A tar that is truncated (a member or the end-of-archive
blocks past its end) or whose sampled members do not decode is refused whole.

The original's index files hold header offsets (Python's `TarInfo.offset`: where a member's
first header block starts, pax or GNU extension headers included). Each is converted to its
member's data offset by the walk, which reads every header chain as tarfile does (so a
member behind extension headers is not taken for header + 512). An index entry that is the
member's data offset instead is recognised too (and counted). The new per-tar index records
both offsets; the new DB and primary_index.bin seek by data offsets.
"""
from __future__ import annotations

import hashlib
import io
import os
import random
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.stages.archive.tarmembers import BLOCK, RECORD, Member

NAME_SUFFIX = ".jpg"


@dataclass
class Walked:
    name: str
    header: int      # header offset (TarInfo.offset)
    offset: int      # data offset (TarInfo.offset_data)
    size: int
    sha256: str = ""


@dataclass
class TarCheck:
    path: Path
    members: list = field(default_factory=list)     # pipeline.stages.archive.tarmembers.Member, file order
    problems: list = field(default_factory=list)    # refuse the tar
    issues: list = field(default_factory=list)      # index disagreements (tar still adopted)
    end: int = 0                                    # end of the last member (padded)
    size: int = 0
    header_offsets: int = 0                         # index entries that are header offsets (the original's meaning)
    data_offsets: int = 0                           # index entries that are data offsets instead
    walked: list = field(default_factory=list)      # member names the walk read (even when cut)

    @property
    def ok(self) -> bool:
        return not self.problems


def archive_length(end: int) -> int:
    """Size of a tar whose members end at ``end``: two zero blocks, padded to a record."""
    total = end + 2 * BLOCK
    return total + (-total) % RECORD


class _NotPlain(Exception):
    """A tar with pax or GNU extension headers: walked by tarfile instead."""


ZERO_BLOCK = bytes(BLOCK)
REGULAR = (b"0", b"\0", b"7")


def _octal(field: bytes) -> int:
    if field[0] & 0x80:   # GNU base-256, for members over 8 GB
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    text = field.split(b"\0", 1)[0].strip(b" ")
    return int(text, 8) if text else 0


def walk(path: Path, with_sha: bool = False) -> tuple[list[Walked], int, str | None]:
    """(members, end of the last member, problem): one sequential pass over the file, every
    header's checksum checked, every member's bytes hashed (``with_sha``), and the two
    end-of-archive blocks found. Tars with extension headers go through tarfile."""
    try:
        return _plain_walk(path, with_sha)
    except _NotPlain:
        return _tarfile_walk(path, with_sha)


def _plain_walk(path: Path, with_sha: bool) -> tuple[list[Walked], int, str | None]:
    members: list[Walked] = []
    size = path.stat().st_size
    with open(path, "rb", buffering=1 << 20) as fh:
        pos = 0
        while True:
            hdr = fh.read(BLOCK)
            if len(hdr) < BLOCK:
                return members, pos, (f"truncated: {size:,} bytes, no end-of-archive blocks "
                                      f"after byte {pos:,} ({len(members)} members read)")
            if hdr == ZERO_BLOCK:
                if fh.read(BLOCK) != ZERO_BLOCK:
                    return members, pos, (f"truncated or damaged: one end-of-archive block "
                                          f"of two at byte {pos:,}")
                return members, pos, None
            try:
                ok = _octal(hdr[148:156]) == sum(hdr[:148]) + 256 + sum(hdr[156:])
                n = _octal(hdr[124:136])
            except ValueError:
                ok = False
            if not ok:
                return members, pos, f"damaged: no valid tar header at byte {pos:,}"
            flag = hdr[156:157]
            if flag in (b"x", b"g", b"L", b"K"):
                raise _NotPlain()
            name = hdr[:100].split(b"\0", 1)[0]
            if hdr[257:262] == b"ustar":
                prefix = hdr[345:500].split(b"\0", 1)[0]
                if prefix:
                    name = prefix + b"/" + name
            name = name.decode("utf-8", "surrogateescape")
            data = pos + BLOCK
            if flag not in REGULAR:
                return members, pos, f"member {name!r} is not a regular file"
            if data + n > size:
                return members, pos, (f"truncated: member {name} ends at byte {data + n:,}, "
                                      f"the file has {size:,}")
            padded = BLOCK * ((n + BLOCK - 1) // BLOCK)
            sha = ""
            if with_sha:
                h = hashlib.sha256()
                left = n
                while left:
                    chunk = fh.read(min(left, 1 << 20))
                    if not chunk:
                        return members, pos, f"truncated inside member {name}"
                    h.update(chunk)
                    left -= len(chunk)
                fh.seek(padded - n, 1)
                sha = h.hexdigest()
            else:
                fh.seek(padded, 1)
            members.append(Walked(name, pos, data, n, sha))
            pos = data + padded


def _tarfile_walk(path: Path, with_sha: bool) -> tuple[list[Walked], int, str | None]:
    members: list[Walked] = []
    try:
        size = path.stat().st_size
        with tarfile.open(path, mode="r:") as tf:
            for info in tf:
                if not info.isreg():
                    return members, 0, f"member {info.name!r} is not a regular file"
                members.append(Walked(info.name, info.offset, info.offset_data, info.size))
    except (tarfile.TarError, EOFError, OSError) as exc:
        return members, 0, f"unreadable or truncated tar ({exc}) after {len(members)} members"
    end = 0
    for m in members:
        if m.offset + m.size > size:
            return members, 0, (f"truncated: member {m.name} ends at byte {m.offset + m.size:,}, "
                                f"the file has {size:,}")
        end = m.offset + BLOCK * ((m.size + BLOCK - 1) // BLOCK)
    with open(path, "rb") as fh:
        fh.seek(end)
        if fh.read(2 * BLOCK) != bytes(2 * BLOCK):
            return members, end, f"truncated: no end-of-archive blocks after byte {end:,}"
        if with_sha:
            for m in members:
                fh.seek(m.offset)
                m.sha256 = hashlib.sha256(fh.read(m.size)).hexdigest()
    return members, end, None


def check_tar(path: Path, index: dict | None, sample: int, rng: random.Random,
              with_sha: bool = True) -> TarCheck:
    """Walk (hashing every member with ``with_sha``), compare with ``index`` ({member:
    offset} or None), and decode a sample of members (the first, the last, ``sample`` more)."""
    check = TarCheck(Path(path))
    try:
        check.size = path.stat().st_size
    except FileNotFoundError:
        check.problems.append("missing")
        return check
    walked, check.end, problem = walk(path, with_sha)
    check.walked = [w.name for w in walked]
    if problem:
        check.problems.append(problem)
        return check
    by_name: dict[str, Walked] = {}
    for w in walked:
        if w.name in by_name:
            check.issues.append(f"{path.name}: member {w.name} appears twice (the later one counts)")
        by_name[w.name] = w
    if index is not None:
        for name, off in index.items():
            w = by_name.get(name)
            if not isinstance(off, int):
                check.issues.append(f"{path.name}: index entry {name} has offset {off!r}")
            elif w is None:
                check.issues.append(f"{path.name}: index names {name}, which the tar does not hold")
            elif off == w.header:
                check.header_offsets += 1
            elif off == w.offset:
                check.data_offsets += 1
            else:
                check.issues.append(f"{path.name}: index puts {name} at {off}; its header starts "
                                    f"at {w.header}, its data starts at {w.offset}")
        for name in by_name:
            if name not in index:
                check.issues.append(f"{path.name}: member {name} is not in the index")
    picks = set()
    if walked:
        picks = {0, len(walked) - 1}
        picks.update(rng.sample(range(len(walked)), min(sample, len(walked))))
    with open(path, "rb") as fh:
        for i in sorted(picks):
            w = walked[i]
            fh.seek(w.offset)
            err = decode_problem(fh.read(w.size))
            if err:
                check.problems.append(f"member {w.name} at {w.offset} does not decode as an "
                                      f"image ({err})")
                return check
    check.members = [Member(w.name, w.offset, w.size, w.sha256, w.header) for w in walked]
    return check


def decode_problem(data: bytes) -> str | None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        return str(exc)[:120] or type(exc).__name__
    return None


def parse_member(name: str) -> tuple[int, int] | None:
    """(listing_id, image_id) of `{listing_id}_{image_id}.jpg`, else None."""
    if not name.endswith(NAME_SUFFIX) or "/" in name:
        return None
    stem = name[: -len(NAME_SUFFIX)]
    a, sep, b = stem.partition("_")
    if not sep or not a.isdigit() or not b.isdigit():
        return None
    return int(a), int(b)


def parse_primary(name: str) -> int | None:
    """listing_id of `{listing_id}.jpg`, else None."""
    if not name.endswith(NAME_SUFFIX) or "/" in name:
        return None
    stem = name[: -len(NAME_SUFFIX)]
    return int(stem) if stem.isdigit() else None


def list_tars(folder: Path, pattern) -> list[str]:
    try:
        names = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(n for n in names if pattern.match(n))
