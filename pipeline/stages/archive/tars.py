"""All-image tars: `images/imageall_tars/imageall_NNNNN.tar`, tar N holding global rows
N x 10,000 onward (members `{listing_id}_{image_id}.jpg` in global-row order), plus the
readers and the safe extractor every other part uses.

Writing one tar is crash-safe in this order (ORIGINAL_SYSTEM.md, Archives):

1. members are written to `.imageall_NNNNN.tar.partial`, fsynced;
2. the partial is verified: member count, names and data offsets by a header walk, and
   the sha256 of a sample of members against their loose files;
3. its per-tar index `imageall_NNNNN.idx.json` is written (atomic), then a journal
   `run/tar_journal.json` naming the tar, then the partial is renamed to its final name;
4. one transaction marks the images `tarred` with (tar_name, tar_offset);
5. the loose files are removed, and the journal with them.

A restart reads the journal: with the final tar present it completes steps 4-5, without
it it removes the partial (old state). A visible `imageall_NNNNN.tar` is always complete.

Offsets are *data* offsets (the member's first byte; its 512-byte header sits just
before), so an image is one seek away; readers check that header before trusting one.

Scale: 533 tars of 10,000 would make a 5.3M-entry `tar_index.json` (hundreds of MB). The
durable per-tar index is `imageall_NNNNN.idx.json` (10,000 members, written once); the
fast reverse lookup is the DB's primary key (image_status.tar_name / tar_offset); the
combined `tar_index.json` in the original's shape is derived, streamed from the per-tar
files once per run that added a tar (archive.combined_index), never held in memory whole.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from pipeline.core.errors import UserError
from pipeline.core.fsutil import atomic_write_bytes, fsync_dir, read_json_or_none

TAR_RE = re.compile(r"^imageall_(\d{5,})\.tar$")
IDX_SUFFIX = ".idx.json"
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


def loose_path(root, listing_id: int, image_id: int) -> Path:
    """Where the worker's bg-removed image waits until it is tarred."""
    return root.bgremoved_dir / member_name(listing_id, image_id)


def idx_path(tars_dir: Path, name: str) -> Path:
    return Path(tars_dir) / (name[:-4] + IDX_SUFFIX)


def journal_path(root) -> Path:
    return root.run_dir / "tar_journal.json"


def partial_path(tars_dir: Path, name: str) -> Path:
    return Path(tars_dir) / f".{name}.partial"


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
    offset: int      # data offset
    size: int
    sha256: str


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
            members.append(Member(name, pos + BLOCK, len(data), hashlib.sha256(data).hexdigest()))
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
    """Member count, names, types, sizes and data offsets by a header walk; sha256 of a sample
    (first, last and ``sample`` random members) read by offset, compared with the recorded
    hash and, where ``loose`` gives a file, with the loose file itself. Raises TarError."""
    try:
        infos = walk_headers(path)
    except (tarfile.TarError, OSError) as exc:
        raise TarError(f"{path}: unreadable tar ({exc})") from None
    if len(infos) != len(members):
        raise TarError(f"{path}: {len(infos)} members, expected {len(members)}")
    for info, m in zip(infos, members):
        if info.name != m.name or info.offset_data != m.offset or info.size != m.size \
                or info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
            raise TarError(f"{path}: member {info.name!r} at {info.offset_data} does not match "
                           f"the index ({m.name!r} at {m.offset}, {m.size} bytes)")
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
# Per-tar index files and the combined tar_index.json
# ---------------------------------------------------------------------------
def write_idx(tars_dir: Path, name: str, first_row: int, members: list[Member], tar_bytes: int) -> None:
    body = {"format": 1, "tar": name, "first_row": first_row, "count": len(members),
            "bytes": tar_bytes, "created": time.time(),
            "members": [[m.name, m.offset, m.size, m.sha256] for m in members]}
    atomic_write_bytes(idx_path(tars_dir, name), json.dumps(body, separators=(",", ":")).encode())


def read_idx(tars_dir: Path, name: str) -> dict | None:
    return read_json_or_none(idx_path(tars_dir, name))


def idx_members(idx: dict) -> list[Member]:
    return [Member(n, int(o), int(s), h) for n, o, s, h in idx["members"]]


def final_tars(tars_dir: Path) -> list[str]:
    try:
        names = os.listdir(tars_dir)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if TAR_RE.match(n))


def write_combined_index(tars_dir: Path, out: Path | None = None) -> int:
    """Stream `tar_index.json` in the original's shape from the per-tar index files:
    {"tars": {tar: {member: offset}}, "reverse": {"{lid}_{iid}": [tar, offset]}}.
    Two passes over the small per-tar files, so memory stays at one tar's worth."""
    tars_dir = Path(tars_dir)
    out = out or tars_dir / "tar_index.json"
    names = [n for n in final_tars(tars_dir) if idx_path(tars_dir, n).exists()]
    tmp = out.with_name(f".{out.name}.tmp")
    count = 0
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write('{"tars": {')
        for i, name in enumerate(names):
            idx = read_idx(tars_dir, name) or {"members": []}
            body = ",".join(f"{json.dumps(m[0])}: {int(m[1])}" for m in idx["members"])
            fh.write(("," if i else "") + f"{json.dumps(name)}: {{{body}}}")
        fh.write('}, "reverse": {')
        first = True
        for name in names:
            idx = read_idx(tars_dir, name) or {"members": []}
            for m in idx["members"]:
                key = m[0][:-4] if m[0].endswith(".jpg") else m[0]
                fh.write(("" if first else ",") + f"{json.dumps(key)}: [{json.dumps(name)}, {int(m[1])}]")
                first = False
                count += 1
        fh.write("}}")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, out)
    fsync_dir(out.parent)
    return count


# ---------------------------------------------------------------------------
# Reading one member by offset, and locating an image
# ---------------------------------------------------------------------------
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


def image_location(root, conn, listing_id: int, image_id: int) -> dict | None:
    """{"path", "offset", "size"} of an image: inside its tar (one seek away) once tarred,
    else its loose file in imageall_new/ (offset and size None). None if neither."""
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


# ---------------------------------------------------------------------------
# Safe extraction (never extractall)
# ---------------------------------------------------------------------------
@dataclass
class ExtractReport:
    extracted: list[str] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)   # (member, reason)


def _refusal(info: tarfile.TarInfo, allowed: set[str] | None, max_size: int) -> str | None:
    name = info.name
    if allowed is not None and name not in allowed:
        return "not named in the manifest"
    if not name or name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "absolute path"
    parts = re.split(r"[\\/]+", name)
    if any(p in ("..",) for p in parts):
        return "path with '..'"
    if any(p in ("", ".") for p in parts) or "\0" in name:
        return "odd path"
    if info.issym() or info.islnk():
        return "link"
    if info.ischr() or info.isblk() or info.isfifo():
        return "device or fifo"
    if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
        return f"not a regular file (type {info.type!r})"
    if info.size > max_size:
        return f"oversized ({info.size} bytes, cap {max_size})"
    return None


def safe_extract(tar_path: Path, dest: Path, allowed: Iterable[str] | None,
                 max_size: int = DEFAULT_MAX_MEMBER, strict: bool = False) -> ExtractReport:
    """Extract only regular members named in ``allowed`` (None: any safe name) into ``dest``:
    no absolute or '..' paths, no links or devices, each at most ``max_size`` bytes, each
    written to a temporary name and renamed. Refused members are reported (and with
    ``strict`` raise TarError after the walk); nothing is ever written outside ``dest``."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    real_dest = os.path.realpath(dest)
    allowed_set = set(allowed) if allowed is not None else None
    report = ExtractReport()
    try:
        tf = tarfile.open(tar_path, mode="r:")
    except (tarfile.TarError, OSError) as exc:
        raise TarError(f"{tar_path}: unreadable tar ({exc})") from None
    with tf:
        for info in tf:
            reason = _refusal(info, allowed_set, max_size)
            target = os.path.realpath(os.path.join(real_dest, info.name)) if reason is None else ""
            if reason is None and os.path.commonpath([real_dest, target]) != real_dest:
                reason = "escapes the destination"
            if reason is not None:
                report.refused.append((info.name, reason))
                continue
            os.makedirs(os.path.dirname(target), exist_ok=True)
            tmp = f"{target}.{os.getpid()}.part"
            src = tf.extractfile(info)
            written = 0
            try:
                with open(tmp, "xb") as out:
                    while True:
                        chunk = src.read(COPY_CHUNK)
                        if not chunk:
                            break
                        written += len(chunk)
                        if written > max_size:
                            raise TarError(f"{info.name}: grew over the {max_size}-byte cap")
                        out.write(chunk)
                    out.flush()
                    os.fsync(out.fileno())
                if written != info.size:
                    raise TarError(f"{info.name}: {written} bytes read, header says {info.size}")
                os.replace(tmp, target)
            except BaseException:
                try:
                    os.unlink(tmp)
                except FileNotFoundError:
                    pass
                raise
            report.extracted.append(info.name)
    if report.refused and strict:
        shown = "; ".join(f"{n!r}: {r}" for n, r in report.refused[:5])
        raise TarError(f"{tar_path}: refused {len(report.refused)} member(s): {shown}")
    return report


# ---------------------------------------------------------------------------
# The archiver: which tar is next, writing it, and crash recovery
# ---------------------------------------------------------------------------
@dataclass
class TarPlan:
    number: int
    rows: list[tuple[int, int, int]]        # (global_row, listing_id, image_id) to archive
    missing: list[tuple[int, int, int]]     # embedded rows whose loose file is missing
    waiting: bool = False                   # missing files within the grace period: not yet


class Archiver:
    """Writes the all-image tars of one root. ``conn`` is the DB connection (autocommit)."""

    def __init__(self, root, conn, log=None, per_tar: int | None = None,
                 sample: int | None = None, missing_grace_s: float | None = None):
        cfg = root.config
        self.root = root
        self.conn = conn
        self.log = log
        self.per_tar = int(per_tar or cfg.get("archive.images_per_tar"))
        self.sample = int(cfg.get("archive.verify_sample") if sample is None else sample)
        self.grace = float(cfg.get("archive.missing_grace_s") if missing_grace_s is None
                           else missing_grace_s)
        self.tars_dir = root.tars_dir
        if self.per_tar < 1:
            raise UserError(f"archive.images_per_tar must be at least 1, got {self.per_tar}")

    def _say(self, level: str, msg: str, *args) -> None:
        if self.log is not None:
            getattr(self.log, level)(msg, *args)

    # ---- availability ------------------------------------------------------
    def check_tars_dir(self) -> str | None:
        """Why tars cannot be written now (a symlink to an unmounted disk), or None."""
        d = self.tars_dir
        if d.is_symlink() and not d.exists():
            return f"{d} points to {os.readlink(d)}, which is not there (disk not mounted?)"
        if not d.is_dir():
            return f"{d} is not a folder"
        if not os.access(d, os.W_OK):
            return f"{d} is not writable"
        return None

    # ---- recovery ----------------------------------------------------------
    def recover(self) -> str | None:
        """Finish or undo what a killed run left. Returns what was done, for the log."""
        done = None
        journal = read_json_or_none(journal_path(self.root))
        if journal is None and journal_path(self.root).exists():
            journal = {}  # torn journal (never: it is written atomically); treat as empty
        if journal:
            name = journal["tar"]
            final = self.tars_dir / name
            if final.exists():
                idx = read_idx(self.tars_dir, name)
                if idx is None:
                    raise TarError(f"{final} is final but its index {idx_path(self.tars_dir, name)} "
                                   f"is missing; rebuild it before archiving more")
                members = idx_members(idx)
                verify_tar(final, members, sample=min(self.sample, 10))
                self._commit(name, members)
                done = f"completed {name} after a crash"
            else:
                self._remove_partial(name)
                done = f"rolled back unfinished {name}"
            _unlink(journal_path(self.root))
        elif journal_path(self.root).exists():
            _unlink(journal_path(self.root))
        # partials and per-tar indexes without a final tar are leftovers of an old state
        try:
            names = os.listdir(self.tars_dir)
        except FileNotFoundError:
            names = []
        for n in names:
            if n.startswith(".imageall_") and n.endswith(".partial"):
                _unlink(self.tars_dir / n)
                done = done or "removed a partial tar"
            elif n.startswith("imageall_") and n.endswith(IDX_SUFFIX):
                tar = n[: -len(IDX_SUFFIX)] + ".tar"
                if not (self.tars_dir / tar).exists():
                    _unlink(self.tars_dir / n)
        return done

    def _remove_partial(self, name: str) -> None:
        _unlink(partial_path(self.tars_dir, name))
        if not (self.tars_dir / name).exists():
            _unlink(idx_path(self.tars_dir, name))

    # ---- planning ----------------------------------------------------------
    def next_plans(self, now: float | None = None) -> Iterable[TarPlan]:
        """Each tar whose whole row range is embedded (or tarred) and not yet written."""
        now = time.time() if now is None else now
        start = 0
        while True:
            row = self.conn.execute(
                "SELECT MIN(global_row) FROM image_status WHERE state = 'embedded' "
                "AND global_row IS NOT NULL AND global_row >= ?", (start,)).fetchone()
            if row[0] is None:
                return
            number = int(row[0]) // self.per_tar
            start = (number + 1) * self.per_tar
            if (self.tars_dir / tar_name(number)).exists():
                continue  # written earlier; embedded leftovers there had no loose file
            plan = self.plan(number, now)
            if plan is not None:
                yield plan

    def plan(self, number: int, now: float) -> TarPlan | None:
        lo, hi = number * self.per_tar, (number + 1) * self.per_tar
        rows = self.conn.execute(
            "SELECT global_row, listing_id, image_id, state, updated_at FROM image_status "
            "WHERE global_row >= ? AND global_row < ? ORDER BY global_row", (lo, hi)).fetchall()
        if len(rows) < self.per_tar or any(r[3] not in ("embedded", "tarred") for r in rows):
            return None  # the index has not filled this range yet
        todo, missing, newest_missing = [], [], 0.0
        for g, lid, iid, state, updated in rows:
            if state != "embedded":
                continue
            if loose_path(self.root, lid, iid).exists():
                todo.append((g, lid, iid))
            else:
                missing.append((g, lid, iid))
                newest_missing = max(newest_missing, float(updated))
        waiting = bool(missing) and now - newest_missing < self.grace
        return TarPlan(number, todo, missing, waiting)

    # ---- writing -------------------------------------------------------------
    def write(self, plan: TarPlan, between: Callable[[int], bool] | None = None) -> str:
        """Write, verify and commit one tar (steps 1-5 of the module doc)."""
        name = tar_name(plan.number)
        final = self.tars_dir / name
        if final.exists():
            raise TarError(f"{final} already exists")
        if not plan.rows:
            raise TarError(f"{name}: no loose files to archive")
        partial = partial_path(self.tars_dir, name)
        sources = [(member_name(lid, iid), loose_path(self.root, lid, iid)) for _, lid, iid in plan.rows]
        try:
            result = write_members(partial, sources, between=between)
            verify_tar(partial, result.members, sample=self.sample,
                       loose=lambda n: self.root.bgremoved_dir / n)
        except BaseException:
            _unlink(partial)
            raise
        total = partial.stat().st_size
        write_idx(self.tars_dir, name, plan.number * self.per_tar, result.members, total)
        atomic_write_bytes(journal_path(self.root),
                           json.dumps({"tar": name, "at": time.time(), "pid": os.getpid()}).encode())
        os.replace(partial, final)
        fsync_dir(self.tars_dir)
        self._commit(name, result.members)
        _unlink(journal_path(self.root))
        if plan.missing:
            self._say("warning", "%s: %d image(s) had no loose file and stay embedded (first: %s)",
                      name, len(plan.missing), member_name(plan.missing[0][1], plan.missing[0][2]))
        return name

    def _commit(self, name: str, members: list[Member]) -> None:
        """Steps 4 and 5: mark tarred (idempotent), then remove the loose files."""
        from pipeline.core.db import EMBEDDED, TARRED, retry_on_busy, set_image_fields, transaction

        def key(m: Member) -> tuple[int, int]:
            lid, iid = m.name[:-4].split("_")
            return int(lid), int(iid)

        rows = [(*key(m), name, m.offset) for m in members]

        @retry_on_busy
        def mark() -> int:
            with transaction(self.conn):
                return set_image_fields(self.conn, rows, TARRED, EMBEDDED, ("tar_name", "tar_offset"))

        mark()
        for m in members:
            _unlink(self.root.bgremoved_dir / m.name)
        fsync_dir(self.root.bgremoved_dir)


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
