"""The archiver: which all-image tar is next, writing it, and crash recovery (the tar
format is pipeline/stages/archive/tarmembers.py, its index files tarindex.py).

Writing one tar is crash-safe in this order (ORIGINAL_SYSTEM.md, Archives):

1. members are written to `.imageall_NNNNN.tar.partial`, fsynced;
2. the partial is verified: member count, names, header and data offsets by a header walk, and
   the sha256 of a sample of members against their loose files;
3. its per-tar index `imageall_NNNNN.idx.json` (each member's data and header offsets,
   size and sha256) is written (atomic), then a journal
   `run/tar_journal.json` naming the tar, then the partial is renamed to its final name;
4. one transaction marks the images `tarred` with (tar_name, tar_offset), the data offset;
5. the loose files are removed, and the journal with them.

A restart reads the journal: with the final tar present it completes steps 4-5, without
it it removes the partial (old state). A visible `imageall_NNNNN.tar` is always complete.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from pipeline.core.errors import UserError
from pipeline.core.fsutil import atomic_write_bytes, fsync_dir, read_json_or_none
from pipeline.stages.archive.tarindex import IDX_SUFFIX, idx_members, idx_path, loose_path, read_idx, write_idx
from pipeline.stages.archive.tarmembers import Member, TarError, member_name, tar_name, verify_tar, write_members


def journal_path(root) -> Path:
    return root.run_dir / "tar_journal.json"


def partial_path(tars_dir: Path, name: str) -> Path:
    return Path(tars_dir) / f".{name}.partial"


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
