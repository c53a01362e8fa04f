"""The writer side of the index store: open (with crash recovery) and import a batch. Adopting
the original's shard is pipeline/index/adoption.py (a mixin IndexStore inherits)."""
from __future__ import annotations

import fcntl
import logging
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.core.errors import UserError
from pipeline.core.fsutil import fsync_dir
from pipeline.index import dbsync, derived
from pipeline.index import manifest as mf
from pipeline.index import parts as pt
from pipeline.index.adoption import STAGING, ShardAdoption
from pipeline.index.errors import BatchRejected, FingerprintMismatch
from pipeline.index.shard import Shard, list_shard_numbers

LOCK_NAME = ".store.lock"
log = logging.getLogger("imageselector.index")


@dataclass
class ImportResult:
    batch_id: int
    imported: int = 0
    already: bool = False
    skipped: list = field(default_factory=list)        # (listing_id, image_id, reason)
    slices: list = field(default_factory=list)         # (shard, first row, rows)
    timings: dict = field(default_factory=dict)


def registry_layout() -> tuple[list[str], dict[str, int]]:
    from pipeline.models.registry import VECTOR_DIMS, VECTOR_ORDER

    return list(VECTOR_ORDER), dict(VECTOR_DIMS)


class IndexStore(ShardAdoption):
    """Shards under ``base``. ``order``/``dims`` default to the existing shards' manifest,
    else to the model registry; they are never assumed anywhere else."""

    def __init__(self, base: Path, capacity: int = 500_000, order: list[str] | None = None,
                 dims: dict[str, int] | None = None, index_types: dict[str, str] | None = None,
                 durable: bool = True, train_rows: int = 100_000, build_on_import: bool = True,
                 lock_timeout_s: float = 600.0):
        if capacity < 1:
            raise UserError(f"index.shard_rows must be at least 1, got {capacity}")
        self.base = Path(base)
        self.capacity = int(capacity)
        self._order = list(order) if order else None
        self._dims = dict(dims) if dims else None
        self.index_types = dict(index_types or {})
        self.durable = durable
        self.train_rows = train_rows
        self.build_on_import = build_on_import
        self.lock_timeout_s = lock_timeout_s
        self.shards: list[Shard] = []
        self._lock_fd: int | None = None
        self._lock_depth = 0

    @classmethod
    def for_root(cls, root, **overrides) -> "IndexStore":
        cfg = root.config
        kwargs = dict(capacity=cfg.get("index.shard_rows"),
                      index_types=cfg.get("index.types"),
                      durable=cfg.get("index.fsync"),
                      train_rows=cfg.get("index.train_rows"),
                      build_on_import=cfg.get("index.build_on_import"),
                      lock_timeout_s=cfg.get("index.lock_timeout_s"))
        kwargs.update(overrides)
        return cls(root.embeddings_dir, **kwargs)

    # ---- lock ---------------------------------------------------------------------
    @contextmanager
    def locked(self, exclusive: bool = True):
        """The store lock (flock): writers exclusive, readers loading files shared."""
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        self.base.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.base / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        deadline = time.monotonic() + self.lock_timeout_s
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise UserError(f"{self.base}: the index store is locked by another process "
                                    f"(waited {self.lock_timeout_s:.0f}s)") from None
                time.sleep(0.05)
        self._lock_fd, self._lock_depth = fd, 1
        try:
            yield
        finally:
            self._lock_depth = 0
            self._lock_fd = None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    # ---- layout -------------------------------------------------------------------
    @property
    def active(self) -> Shard | None:
        return self.shards[-1] if self.shards else None

    def layout(self) -> tuple[list[str], dict[str, int]]:
        if self.shards:
            return self.shards[-1].order, self.shards[-1].dims
        if self._order and self._dims:
            return self._order, self._dims
        order, dims = registry_layout()
        return self._order or order, self._dims or dims

    @property
    def fingerprint(self) -> str | None:
        return self.active.fingerprint if self.shards else None

    def total_rows(self) -> int:
        return sum(s.rows for s in self.shards)

    # ---- open and recover ---------------------------------------------------------
    def open(self, conn=None, refresh_derived: bool = True, repair_derived: bool = True) -> dict:
        """Load every shard, undoing whatever a killed writer left: a torn manifest line and
        its parts, a shard folder without a header, manifest lines whose DB change is
        missing (re-applied), derived files behind their parts (extended). Derived files
        that are damaged rather than behind are rebuilt only with ``repair_derived``."""
        with self.locked():
            report = {"torn": 0, "reapplied": 0, "removed_shards": []}
            # a shard whose adoption died before its rename (never part of the store)
            shutil.rmtree(self.base / STAGING, ignore_errors=True)
            numbers = list_shard_numbers(self.base)
            self.shards = []
            for i, n in enumerate(numbers):
                shard = Shard(self.base, n)
                entries, _good, torn = mf.read_manifest(shard.manifest_path)
                if not entries and i == len(numbers) - 1:
                    shutil.rmtree(shard.path)  # created but never committed
                    report["removed_shards"].append(n)
                    continue
                report["torn"] += 1 if torn else 0
                self.shards.append(shard.load(repair=True))
            self._check_chain()
            if conn is not None:
                report["reapplied"] = self.apply_pending(conn)
            if refresh_derived:
                for shard in self.shards:
                    if not derived.is_current(shard):
                        self._refresh(shard, repair=repair_derived)
            return report

    def _check_chain(self) -> None:
        expect = 0
        for i, shard in enumerate(self.shards):
            if shard.number != i:
                raise UserError(f"{self.base}: shard folders are not numbered 0..N "
                                f"(found {shard.path.name} at position {i})")
            if shard.first_global_row != expect:
                raise UserError(f"{shard.path}: first global row {shard.first_global_row}, "
                                f"expected {expect}")
            if i < len(self.shards) - 1 and not shard.full:
                raise UserError(f"{shard.path}: not full ({shard.rows} of {shard.capacity}) "
                                f"but not the last shard")
            expect += shard.capacity

    def apply_pending(self, conn) -> int:
        pointer = dbsync.applied_pointer(conn)
        todo = dbsync.pending(self.shards, pointer)
        for shard, s in todo:
            dbsync.apply_slice(conn, shard, s)
        return len(todo)

    def _refresh(self, shard: Shard, build_final: bool | None = None, force: bool = False,
                 repair: bool = True) -> dict:
        return derived.refresh(shard, self.index_types, self.train_rows, self.durable,
                               self.build_on_import if build_final is None else build_final,
                               log, force, repair)

    def rebuild(self, force: bool = True, shards: list[int] | None = None) -> list[int]:
        """Re-derive FAISS files and image_index.json from the parts."""
        done = []
        with self.locked():
            self.open(refresh_derived=False)
            for shard in self.shards:
                if shards is None or shard.number in shards:
                    self._refresh(shard, build_final=True, force=force)
                    done.append(shard.number)
        return done

    # ---- import -------------------------------------------------------------------
    def _validate(self, ids, vectors: dict, fingerprint: str) -> tuple[np.ndarray, dict]:
        order, dims = self.layout()
        ids = np.asarray(ids)
        if ids.ndim != 2 or ids.shape[1] != 2 or not np.issubdtype(ids.dtype, np.integer):
            raise BatchRejected(f"batch ids must be integer pairs (n, 2), got shape {ids.shape} "
                                f"{ids.dtype}")
        n = ids.shape[0]
        extra = set(vectors) - set(order)
        missing = [m for m in order if m not in vectors]
        if missing or extra:
            raise BatchRejected(f"batch models differ from the store's: missing "
                                f"{missing or '-'}, unknown {sorted(extra) or '-'}")
        out = {}
        for m in order:
            v = np.asarray(vectors[m])
            if v.ndim != 2 or v.shape != (n, dims[m]):
                raise BatchRejected(f"batch vectors for {m}: shape {v.shape}, expected ({n}, {dims[m]})")
            v = np.ascontiguousarray(v, dtype="<f4")
            if not np.isfinite(v).all():
                raise BatchRejected(f"batch vectors for {m}: NaN or infinite values")
            out[m] = v
        if not fingerprint:
            raise BatchRejected("batch has no model fingerprint")
        if self.fingerprint is not None and fingerprint != self.fingerprint:
            raise FingerprintMismatch(f"batch fingerprint {fingerprint} differs from the index "
                                      f"store's {self.fingerprint} (other models or weights); refused")
        return ids.astype(np.int64), out

    def import_batch(self, batch_id: int, ids, vectors: dict, fingerprint: str, conn=None,
                     _crash_hook=None) -> ImportResult:
        """Import one worker result: all-or-nothing with the DB, exactly once per batch.

        The commit point of each slice is its manifest line; the DB change follows and is
        re-applied on the next open if the process dies in between. ``_crash_hook(name)`` is
        for tests (called at each step)."""
        hook = _crash_hook or (lambda name: None)
        result = ImportResult(int(batch_id))
        t0 = time.perf_counter()
        with self.locked():
            if not self.shards or self._stale():
                self.open(conn, refresh_derived=False)
            elif conn is not None:
                self.apply_pending(conn)
            ids, vecs = self._validate(ids, vectors, fingerprint)
            keep = self._not_yet_imported(batch_id, ids)
            if conn is not None:
                reasons = dbsync.importable_rows(conn, batch_id, ids)
                for i in np.nonzero(keep)[0]:
                    if i in reasons:
                        result.skipped.append((int(ids[i][0]), int(ids[i][1]), reasons[i]))
                        keep[i] = False
            if not keep.all():
                ids = ids[keep]
                vecs = {m: v[keep] for m, v in vecs.items()}
            if len(ids) == 0:
                result.already = not result.skipped
                return result
            result.timings["prepare_s"] = time.perf_counter() - t0
            t1 = time.perf_counter()
            order, _dims = self.layout()
            hashes = np.stack([pt.vector_hashes(vecs[m]) for m in order], axis=1)
            result.timings["hash_s"] = time.perf_counter() - t1
            total, offset, first = len(ids), 0, None
            while offset < total:
                shard = self._active_with_room(fingerprint)
                take = min(total - offset, shard.capacity - shard.rows)
                sl = slice(offset, offset + take)
                seq = shard.next_seq()
                t2 = time.perf_counter()
                pt.write_array(pt.part_path(shard.parts_dir, seq, "ids"), ids[sl], self.durable)
                pt.write_array(pt.part_path(shard.parts_dir, seq, "hashes"), hashes[sl], self.durable)
                for m in order:
                    pt.write_array(pt.part_path(shard.parts_dir, seq, m), vecs[m][sl], self.durable)
                    hook(f"part:{m}")
                if self.durable:
                    fsync_dir(shard.parts_dir)
                first = first or [shard.number, shard.first_global_row + shard.rows]
                entry = {"kind": "batch", "seq": seq, "batch_id": int(batch_id),
                         "start": shard.rows, "n": take, "offset": offset, "total": total,
                         "fingerprint": fingerprint, "first": first, "t": time.time()}
                hook("before_commit")
                mf.append_entry(shard.manifest_path, entry, self.durable)
                hook("after_commit")
                shard.load(repair=False)
                result.timings["parts_commit_s"] = result.timings.get("parts_commit_s", 0) + \
                    time.perf_counter() - t2
                t3 = time.perf_counter()
                if conn is not None:
                    dbsync.apply_slice(conn, shard, shard.slices[-1])
                hook("after_db")
                result.timings["db_s"] = result.timings.get("db_s", 0) + time.perf_counter() - t3
                t4 = time.perf_counter()
                self._refresh(shard)
                hook("after_derived")
                result.timings["derived_s"] = result.timings.get("derived_s", 0) + \
                    time.perf_counter() - t4
                result.slices.append((shard.number, entry["start"], take))
                offset += take
            result.imported = total
        result.timings["total_s"] = time.perf_counter() - t0
        return result

    def _stale(self) -> bool:
        """Another writer (after our last look) changed the active shard or added one."""
        active = self.active
        if active is None:
            return True
        if list_shard_numbers(self.base)[-1:] != [active.number]:
            return True
        try:
            return active.manifest_path.stat().st_size != active.manifest_bytes
        except FileNotFoundError:
            return True

    def _not_yet_imported(self, batch_id: int, ids: np.ndarray) -> np.ndarray:
        """Rows not already in the store under this batch id (a batch offered twice, or
        the rest of one whose import died between two shards)."""
        seen = set()
        for shard in self.shards:
            for s in shard.slices:
                if s.batch_id == int(batch_id):
                    seen.update(map(tuple, np.asarray(shard.part(s, "ids")).tolist()))
        keep = np.ones(len(ids), dtype=bool)
        inside = set()
        for i, pair in enumerate(map(tuple, ids.tolist())):
            if pair in seen or pair in inside:
                keep[i] = False
            inside.add(pair)
        return keep

    def _active_with_room(self, fingerprint: str) -> Shard:
        active = self.active
        if active is not None and not active.full:
            return active
        order, dims = self.layout()
        number = 0 if active is None else active.number + 1
        first = 0 if active is None else active.first_global_row + active.capacity
        header = {"capacity": self.capacity, "first_global_row": first, "vector_order": order,
                  "dims": {m: int(dims[m]) for m in order}, "fingerprint": fingerprint,
                  "created": time.time()}
        shard = Shard.create(self.base, number, header, self.durable)
        self.shards.append(shard)
        return shard
