"""Primary images: each listing's bg-removed primary image (Etsy's rank 1) in its own tars,
`images/imageprimary/imageprimary_NNNNN.tar` (member `{listing_id}.jpg`), so search can show
any listing's picture with one seek.

Files in `images/imageprimary/`:
    imageprimary_NNNNN.tar   up to archive.primary_per_tar members each; the last one grows
    primary_index.bin        the committed state and the fast lookup: fixed-width records
                             sorted by listing id (binary search over an mmap, nothing loaded)
                             holding each member's data offset (what readers seek to), size and
                             header offset, plus each tar's committed length
    primary_index.json       the original's shape and meaning, derived from the .bin after each
                             commit: {"tars": {tar: {"{lid}.jpg": header_offset}},
                             "reverse": {"{lid}": [tar, header_offset]}}, header offsets being
                             Python's TarInfo.offset, as the original's (tarmembers.py)

Updates are append-only (the original's full rebuild took 3.5 hours): new members are
written after the last tar's committed end, fsynced, and only then the .bin is replaced
(the commit). A crash before the commit leaves bytes past a committed end, which the next
run cuts off; readers go by committed offsets and never see them. A listing whose primary
image changed gets a new member; its old one stays in the tar, unreferenced.
`--full` builds everything in `.full/` and swaps it in under a journal that a restart
rolls forward.
"""
from __future__ import annotations

import json
import mmap
import os
import re
import shutil
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pipeline.core.errors import UserError
from pipeline.core.fsutil import atomic_write_bytes, fsync_dir, read_json_or_none
from pipeline.stages.archive.tarindex import loose_path
from pipeline.stages.archive.tarmembers import BLOCK, TarAborted, member_name, read_member_at, write_members

PRIMARY_RE = re.compile(r"^imageprimary_(\d{5,})\.tar$")
MAGIC = b"ISPRIM02"
_HEAD = struct.Struct("<8sQQI")      # magic, generation, count, trailer length
_REC = struct.Struct("<QQIQIQ")      # listing_id, image_id, tar number, data offset, size, header offset
BIN_NAME = "primary_index.bin"
JSON_NAME = "primary_index.json"
FULL_DIR = ".full"
SWAP_JOURNAL = ".full_swap.json"


def primary_tar_name(number: int) -> str:
    return f"imageprimary_{number:05d}.tar"


def primary_member(listing_id: int) -> str:
    return f"{int(listing_id)}.jpg"


@dataclass
class PrimaryRecord:
    listing_id: int
    image_id: int
    tar: int
    offset: int       # data offset
    size: int
    header: int = -1  # header offset (TarInfo.offset); -1: a plain ustar member, offset - 512

    def __post_init__(self) -> None:
        if self.header < 0:
            self.header = self.offset - BLOCK


@dataclass
class PrimaryState:
    generation: int
    records: dict[int, PrimaryRecord]   # listing_id -> record
    ends: dict[int, int]                # tar number -> committed length (members only)
    counts: dict[int, int]              # tar number -> members written


def empty_state() -> PrimaryState:
    return PrimaryState(0, {}, {}, {})


# ---------------------------------------------------------------------------
# The state file (.bin) and the derived JSON
# ---------------------------------------------------------------------------
def encode_state(state: PrimaryState) -> bytes:
    trailer = json.dumps({"ends": {str(k): v for k, v in state.ends.items()},
                          "counts": {str(k): v for k, v in state.counts.items()}}).encode()
    recs = sorted(state.records.values(), key=lambda r: r.listing_id)
    out = bytearray(_HEAD.pack(MAGIC, state.generation, len(recs), len(trailer)))
    for r in recs:
        out += _REC.pack(r.listing_id, r.image_id, r.tar, r.offset, r.size, r.header)
    out += trailer
    return bytes(out)


def decode_state(data: bytes, where: str = BIN_NAME) -> PrimaryState:
    if len(data) < _HEAD.size:
        raise UserError(f"{where}: truncated primary index")
    magic, gen, count, tlen = _HEAD.unpack_from(data, 0)
    if magic != MAGIC or len(data) != _HEAD.size + count * _REC.size + tlen:
        raise UserError(f"{where}: not a primary index (bad magic or length); run primary --full")
    records = {}
    for i in range(count):
        lid, iid, tar, off, size, header = _REC.unpack_from(data, _HEAD.size + i * _REC.size)
        records[lid] = PrimaryRecord(lid, iid, tar, off, size, header)
    trailer = json.loads(data[_HEAD.size + count * _REC.size:])
    return PrimaryState(gen, records, {int(k): int(v) for k, v in trailer["ends"].items()},
                        {int(k): int(v) for k, v in trailer["counts"].items()})


def load_state(primary_dir: Path) -> PrimaryState:
    try:
        data = (Path(primary_dir) / BIN_NAME).read_bytes()
    except FileNotFoundError:
        return empty_state()
    return decode_state(data, str(Path(primary_dir) / BIN_NAME))


def write_json_index(primary_dir: Path, state: PrimaryState) -> None:
    """The original's primary_index.json (header offsets, the original's meaning), streamed
    (a million listings is ~60 MB)."""
    out = Path(primary_dir) / JSON_NAME
    tmp = out.with_name(f".{out.name}.tmp")
    by_tar: dict[int, list[PrimaryRecord]] = {}
    for r in state.records.values():
        by_tar.setdefault(r.tar, []).append(r)
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(f'{{"generation": {state.generation}, "tars": {{')
        for i, tar in enumerate(sorted(by_tar)):
            body = ",".join(f'"{r.listing_id}.jpg": {r.header}'
                            for r in sorted(by_tar[tar], key=lambda r: r.offset))
            fh.write(("," if i else "") + f'"{primary_tar_name(tar)}": {{{body}}}')
        fh.write('}, "reverse": {')
        fh.write(",".join(f'"{r.listing_id}": ["{primary_tar_name(r.tar)}", {r.header}]'
                          for r in sorted(state.records.values(), key=lambda r: r.listing_id)))
        fh.write("}}")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, out)
    fsync_dir(out.parent)


# ---------------------------------------------------------------------------
# Fast lookup: binary search over the mmapped .bin
# ---------------------------------------------------------------------------
class _BinView:
    def __init__(self, path: Path):
        self.path = path
        fh = open(path, "rb")
        try:
            st = os.fstat(fh.fileno())
            self.key = (st.st_ino, st.st_mtime_ns, st.st_size)
            self.mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        finally:
            fh.close()
        magic, _, self.count, _ = _HEAD.unpack_from(self.mm, 0)
        if magic != MAGIC:
            raise UserError(f"{path}: not a primary index")

    def find(self, listing_id: int) -> PrimaryRecord | None:
        lo, hi = 0, self.count
        while lo < hi:
            mid = (lo + hi) // 2
            rec = _REC.unpack_from(self.mm, _HEAD.size + mid * _REC.size)
            if rec[0] < listing_id:
                lo = mid + 1
            elif rec[0] > listing_id:
                hi = mid
            else:
                return PrimaryRecord(*rec)
        return None


_views: dict[str, _BinView] = {}
_views_lock = threading.Lock()


def _view(primary_dir: Path) -> _BinView | None:
    path = Path(primary_dir) / BIN_NAME
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    key = (st.st_ino, st.st_mtime_ns, st.st_size)
    with _views_lock:
        view = _views.get(str(path))
        if view is None or view.key != key:
            view = _BinView(path)
            _views[str(path)] = view
        return view


def primary_location(root, listing_id: int, conn=None) -> dict | None:
    """{"path", "offset", "size"} of a listing's primary image (offset: the data offset, one
    seek away; search's `primary_image`): in the primary tars when it is there; otherwise
    (with a DB connection) the primary image in its all-image tar or its loose file in
    imageall_new/ (offset and size None for a loose file). None: unknown."""
    view = _view(root.primary_dir)
    rec = view.find(int(listing_id)) if view else None
    if rec is not None:
        return {"path": str(root.primary_dir / primary_tar_name(rec.tar)),
                "offset": rec.offset, "size": rec.size}
    if conn is None:
        return None
    from pipeline.stages.archive.tarindex import image_location

    row = conn.execute("SELECT image_id FROM images WHERE listing_id = ? AND is_primary = 1 "
                       "ORDER BY rank LIMIT 1", (int(listing_id),)).fetchone()
    if row is None:
        return None
    return image_location(root, conn, int(listing_id), int(row[0]))


def open_primary(root, listing_id: int, conn=None) -> bytes:
    """The JPEG bytes of a listing's primary image (UserError when there is none)."""
    loc = primary_location(root, listing_id, conn)
    if loc is None:
        raise UserError(f"listing {listing_id} has no primary image archived yet")
    if loc["offset"] is None:
        return Path(loc["path"]).read_bytes()
    path = Path(loc["path"])
    expect = primary_member(listing_id) if path.name.startswith("imageprimary_") else None
    return read_member_at(path, int(loc["offset"]), expect)


# ---------------------------------------------------------------------------
# Updating
# ---------------------------------------------------------------------------
@dataclass
class UpdateResult:
    added: int = 0
    replaced: int = 0
    skipped: int = 0          # no bytes to read yet (loose file gone and not tarred)
    stopped: bool = False
    tars: int = 0


class PrimaryUpdater:
    def __init__(self, root, conn, log=None, per_tar: int | None = None):
        self.root = root
        self.conn = conn
        self.log = log
        self.dir = root.primary_dir
        self.per_tar = int(per_tar or root.config.get("archive.primary_per_tar"))
        self.write_json = bool(root.config.get("archive.primary_json"))
        if self.per_tar < 1:
            raise UserError(f"archive.primary_per_tar must be at least 1, got {self.per_tar}")

    def _say(self, level: str, msg: str, *args) -> None:
        if self.log is not None:
            getattr(self.log, level)(msg, *args)

    # ---- recovery ------------------------------------------------------------
    def recover(self) -> PrimaryState:
        """Roll a --full swap forward, cut uncommitted appends, drop orphan tars."""
        self.dir.mkdir(parents=True, exist_ok=True)
        journal = read_json_or_none(self.dir / SWAP_JOURNAL)
        full = self.dir / FULL_DIR
        if journal:
            self._finish_swap(journal)
        elif full.exists():
            shutil.rmtree(full)  # a rebuild that never reached its swap: the old state stands
        state = load_state(self.dir)
        for n in os.listdir(self.dir):
            m = PRIMARY_RE.match(n)
            if not m:
                continue
            number = int(m.group(1))
            path = self.dir / n
            if number not in state.ends:
                os.unlink(path)  # written by a run that died before its commit
                self._say("warning", "removed uncommitted %s", n)
                continue
            want = _archive_length(state.ends[number])
            if path.stat().st_size != want:
                _close_archive(path, state.ends[number])
                self._say("warning", "cut %s back to its committed length", n)
        if self.write_json and state.generation and not self._json_current(state):
            write_json_index(self.dir, state)
        return state

    def _json_current(self, state: PrimaryState) -> bool:
        path = self.dir / JSON_NAME
        try:
            with open(path, "rb") as fh:
                head = fh.read(64).decode("ascii", "replace")
        except FileNotFoundError:
            return False
        return head.startswith(f'{{"generation": {state.generation},')

    def _finish_swap(self, journal: dict) -> None:
        full = self.dir / FULL_DIR
        keep = set(journal["files"])
        for name in journal["files"]:
            src = full / name
            if src.exists():
                os.replace(src, self.dir / name)
        for n in os.listdir(self.dir):
            if PRIMARY_RE.match(n) and n not in keep:
                os.unlink(self.dir / n)
        fsync_dir(self.dir)
        shutil.rmtree(full, ignore_errors=True)
        _unlink(self.dir / SWAP_JOURNAL)

    # ---- what to add -----------------------------------------------------------
    def wanted(self) -> list[tuple[int, int, str, str | None, int | None]]:
        """(listing_id, image_id, state, tar_name, tar_offset) of every primary image that
        has been bg-removed (embedded or tarred), one per listing."""
        rows = self.conn.execute(
            "SELECT i.listing_id, i.image_id, s.state, s.tar_name, s.tar_offset, i.rank "
            "FROM images i JOIN image_status s "
            "ON s.listing_id = i.listing_id AND s.image_id = i.image_id "
            "WHERE i.is_primary = 1 AND s.state IN ('embedded', 'tarred') "
            "ORDER BY i.listing_id, i.rank").fetchall()
        out, seen = [], set()
        for lid, iid, state, tname, toff, _ in rows:
            if lid in seen:
                continue
            seen.add(lid)
            out.append((lid, iid, state, tname, toff))
        return out

    def _read_source(self, lid: int, iid: int, state: str, tname, toff) -> bytes | None:
        if state == "tarred" and tname:
            return read_member_at(self.root.tars_dir / tname, int(toff), member_name(lid, iid))
        try:
            return loose_path(self.root, lid, iid).read_bytes()
        except FileNotFoundError:
            # the tar stage archived it in between: read it from where the DB says it is now
            row = self.conn.execute("SELECT state, tar_name, tar_offset FROM image_status "
                                    "WHERE listing_id = ? AND image_id = ?", (lid, iid)).fetchone()
            if row and row[0] == "tarred" and row[1]:
                return read_member_at(self.root.tars_dir / row[1], int(row[2]), member_name(lid, iid))
            return None

    # ---- the update ---------------------------------------------------------------
    def update(self, full: bool = False, between: Callable[[int], bool] | None = None) -> UpdateResult:
        state = self.recover()
        if full:
            return self._full(between)
        todo = [w for w in self.wanted()
                if w[0] not in state.records or state.records[w[0]].image_id != w[1]]
        return self._append(state, todo, self.dir, between)

    def _append(self, state: PrimaryState, todo: list, out_dir: Path,
                between: Callable[[int], bool] | None) -> UpdateResult:
        result = UpdateResult()
        pos = 0
        new_state = PrimaryState(state.generation + 1, dict(state.records), dict(state.ends),
                                 dict(state.counts))
        written_any = False
        failed = False
        try:
            while pos < len(todo):
                number = max(new_state.ends) if new_state.ends else 0
                if new_state.counts.get(number, 0) >= self.per_tar or number not in new_state.ends:
                    number = number + 1 if number in new_state.ends else number
                room = self.per_tar - new_state.counts.get(number, 0)
                chunk = todo[pos:pos + room]
                pos += len(chunk)
                sources, keys = [], []
                for lid, iid, st, tname, toff in chunk:
                    data = self._read_source(lid, iid, st, tname, toff)
                    if data is None:
                        result.skipped += 1
                        continue
                    sources.append((primary_member(lid), data))
                    keys.append((lid, iid))
                if not sources:
                    continue
                path = out_dir / primary_tar_name(number)
                start = new_state.ends.get(number, 0)
                try:
                    members = self._write_into(path, start, sources, between)
                except TarAborted:
                    result.stopped = True  # nothing of this chunk is committed; cut back below
                    break
                for (lid, iid), m in zip(keys, members):
                    if lid in new_state.records:
                        result.replaced += 1
                    else:
                        result.added += 1
                    new_state.records[lid] = PrimaryRecord(lid, iid, number, m.offset, m.size, m.header)
                new_state.ends[number] = members[-1].offset + _padded(members[-1].size)
                new_state.counts[number] = new_state.counts.get(number, 0) + len(members)
                written_any = True
        except BaseException:
            failed = True
            raise
        finally:
            if written_any:
                self._commit(out_dir, new_state)
            if result.stopped or failed:
                self._cut_back(out_dir, new_state if written_any else state)
        result.tars = len(new_state.ends)
        return result

    def _write_into(self, path: Path, start: int, sources, gate):
        mode = "r+b" if path.exists() else "w+b"
        with open(path, mode) as fh:
            return write_members(path, sources, between=gate, start_offset=start, fh=fh).members

    def _cut_back(self, out_dir: Path, state: PrimaryState) -> None:
        for n in os.listdir(out_dir):
            m = PRIMARY_RE.match(n)
            if not m:
                continue
            number = int(m.group(1))
            if number not in state.ends:
                os.unlink(out_dir / n)
            elif (out_dir / n).stat().st_size != _archive_length(state.ends[number]):
                _close_archive(out_dir / n, state.ends[number])

    def _commit(self, out_dir: Path, state: PrimaryState) -> None:
        fsync_dir(out_dir)
        atomic_write_bytes(out_dir / BIN_NAME, encode_state(state))
        if self.write_json:
            write_json_index(out_dir, state)

    def _full(self, between) -> UpdateResult:
        full = self.dir / FULL_DIR
        shutil.rmtree(full, ignore_errors=True)
        full.mkdir()
        old = load_state(self.dir)
        result = self._append(PrimaryState(old.generation, {}, {}, {}), self.wanted(), full, between)
        if result.stopped:
            shutil.rmtree(full, ignore_errors=True)
            return result
        if not (full / BIN_NAME).exists():  # nothing to archive at all
            atomic_write_bytes(full / BIN_NAME, encode_state(PrimaryState(old.generation + 1, {}, {}, {})))
        files = sorted(os.listdir(full))
        atomic_write_bytes(self.dir / SWAP_JOURNAL, json.dumps({"files": files, "at": time.time()}).encode())
        self._finish_swap({"files": files})
        return result


def _padded(size: int) -> int:
    return BLOCK * ((size + BLOCK - 1) // BLOCK)


def _archive_length(end: int) -> int:
    total = end + 2 * BLOCK
    return total + (-total) % (20 * BLOCK)


def _close_archive(path: Path, end: int) -> None:
    """Cut a tar back to its committed members and write the end-of-archive blocks."""
    with open(path, "r+b") as fh:
        fh.truncate(end)
        fh.seek(end)
        total = _archive_length(end)
        fh.write(b"\0" * (total - end))
        fh.flush()
        os.fsync(fh.fileno())


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
