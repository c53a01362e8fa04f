"""The shards phase of an adoption: each original shard checked row by row (a damaged one
replaced by its checked backup copy), staged and renamed into the index store; the
positions of its images recorded in the scratch DB for the DB phases. The store's
``adopt_shard`` takes each accepted shard: hard links of a finalized shard's files, a copy of
the active one, staged and renamed into place under the store lock."""
from __future__ import annotations

import time
from contextlib import nullcontext

from pipeline.core import db as dbm
from pipeline.adopt import scratch
from pipeline.adopt import shards as sh
from pipeline.adopt.report import ItemLog
from pipeline.core.errors import UserError


class ShardPhase:
    """Methods of Adoption (pipeline/adopt/run.py)."""

    # ---- shards -----------------------------------------------------------------------
    def _shards(self) -> None:
        from pipeline.index.shard import Shard, list_shard_numbers, shard_dir_name
        from pipeline.index.errors import BatchRejected

        order, dims = self.layout
        store = self._store()
        base = self.root.embeddings_dir
        sources = self.orig.shard_dirs()
        if not sources:
            self.report.note("the original has no index shards")
            return
        existing = [] if self.dry else list_shard_numbers(base)
        blocked: str | None = None
        with (store.locked() if not self.dry else nullcontext()):
            for i, (number, path) in enumerate(sources):
                self._check_stop()
                name = shard_dir_name(number)
                rel = f"data/embeddings/{name}"
                last = i == len(sources) - 1
                if self._item_done(f"shard:{number}") is not None:
                    continue
                log = ItemLog()
                if number != i and blocked is None:
                    blocked = f"the original has no shard_{i:04d}"
                if not self.dry and number in existing and blocked is None:
                    shard = Shard(base, number).load(repair=False)
                    ident = shard.header.get("adopted_from")
                    if ident is not None:
                        self._adopted_before(number, shard, path, order, dims, last, log)
                        continue
                    blocked = f"the new root already holds a {name} of its own"
                src = sh.read_source(number, path, "data/embeddings", order, dims, self.capacity, last)
                if blocked is not None:
                    if not self.quick:
                        sh.check_vectors(src, order, self.threads)
                    state = "checked: fine" if src.ok else f"also bad: {src.why()}"
                    log.bad(rel, f"held back ({state})",
                            f"not adopted: {blocked} and the index store cannot hold a gap; "
                            f"its images are marked failed")
                    self._record_refused(number, src, f"{name} held back ({blocked})", log)
                    continue
                if not self.quick:
                    t0 = time.perf_counter()
                    sh.check_vectors(src, order, self.threads)
                    self.log.info("%s: %d rows checked in %.1f s", name, src.rows, time.perf_counter() - t0)
                for k, (r, m, g, w) in enumerate(src.mismatches):
                    log.inconsistent("hash_mismatches", f"{name} row {r} model {m}: vector hashes to "
                                                        f"{g}, image_index.json says {w}",
                                     src.n_mismatch if k == 0 else 0)
                if not src.ok:
                    backup = self._try_backup(number, order, dims, last)
                    if backup is None:
                        log.bad(rel, src.why(), f"refused (not adopted): its {src.rows:,} images are "
                                                f"marked failed; the shards after it are held back")
                        self._record_refused(number, src, f"{name} refused: {src.why()}", log)
                        blocked = f"{name} was refused"
                        continue
                    log.bad(rel, src.why(), f"adopted from backups/{name} instead (checked row by row)")
                    src = backup
                if self.dry:
                    log.count("shards", "checked and adoptable" if not self.quick else "adoptable (not hashed)")
                    log.count("index rows", "adoptable", src.rows)
                    self._record_positions(number, src.ids, log)
                    continue
                try:
                    res = store.adopt_shard(number, src.ids, src.hashes,
                                            {m: src.path / sh.faiss_name(m) for m in order},
                                            self.fingerprint(store), self.capacity,
                                            source_info=src.identity(order), link=self.link_mode,
                                            conn=self.conn)
                except BatchRejected as exc:
                    log.bad(rel, str(exc), f"refused (not adopted): its {src.rows:,} images are "
                                           f"marked failed; the shards after it are held back")
                    self._record_refused(number, src, f"{name} refused: {exc}", log)
                    blocked = f"{name} was refused"
                    continue
                log.count("shards", "adopted")
                log.count("index rows", "adopted", src.rows)
                for key, n in (("linked", len(res.linked)), ("copied", len(res.copied)),
                               ("bytes copied", res.copied_bytes)):
                    if n:
                        log.count("files", key, n)
                if res.copied and src.rows >= self.capacity:
                    log.note(f"{name}: {len(res.copied)} index files copied, not linked "
                             f"({res.why_copied}): {res.copied_bytes:,} bytes of extra disk")
                self._record_positions(number, src.ids, log)
            if not self.dry:
                sh.remove_staging(base)
        if not self.dry:
            try:
                self._store().open(self.conn)
            except UserError as exc:
                self.report.bad("index store", str(exc), "left as it is; run imageselector index verify")

    def _adopted_before(self, number, shard, path, order, dims, last, log: ItemLog) -> None:
        """A shard an earlier run took: its positions from the store's parts; a changed
        original is reported, never re-adopted over it."""
        ident = shard.header["adopted_from"]
        via = ident.get("via", "data/embeddings")
        src_now = sh.SourceShard(number, self.orig.backup_shard_dir(number) if via == "backups"
                                 else path, via)
        src_now.rows = ident.get("rows", 0)
        if src_now.identity(order)["files"] != ident.get("files"):
            log.note(f"{shard.path.name}: the original's files changed since it was adopted; the "
                     f"adopted shard was kept")
        log.count("shards", "adopted before")
        log.count("index rows", "adopted before", shard.rows)
        self._set_pointer(number, shard.slices[-1].seq if shard.slices else 0)
        self._record_positions(number, shard.ids(), log)

    def _try_backup(self, number, order, dims, last):
        """The checked copy in backups/shard_NNNN, or None."""
        path = self.orig.backup_shard_dir(number)
        if not path.is_dir():
            return None
        src = sh.read_source(number, path, "backups", order, dims, self.capacity, last)
        if not self.quick:
            sh.check_vectors(src, order, self.threads)
        return src if src.ok else None

    def _record_positions(self, number: int, ids, log: ItemLog) -> None:
        g0 = number * self.capacity
        pairs = ids.tolist() if ids is not None else []
        rows = [(lid, iid, number, r, g0 + r) for r, (lid, iid) in enumerate(pairs)]
        with scratch.Tx(self.x):
            before = self.x.total_changes
            self.x.executemany("INSERT OR IGNORE INTO scratch.pos VALUES (?, ?, ?, ?, ?)", rows)
            inserted = self.x.total_changes - before
            if inserted < len(rows):
                for lid, iid, s, r, g in rows:
                    got = self.x.execute("SELECT shard, shard_row, global_row FROM scratch.pos "
                                         "WHERE listing_id = ? AND image_id = ?", (lid, iid)).fetchone()
                    if got and got[2] != g:
                        self.x.execute("INSERT OR IGNORE INTO scratch.dup VALUES (?, ?, ?, ?, ?)",
                                       (lid, iid, s, r, g))
                        log.inconsistent("duplicate_index_rows",
                                         f"{lid}_{iid} at shard {got[0]} row {got[1]} and shard {s} "
                                         f"row {r} (the DB points at the first; index verify will "
                                         f"name the second)")
            scratch.mark_done(self.x, f"shard:{number}", log.dumps())
        log.apply(self.report)

    def _record_refused(self, number: int, src, reason: str, log: ItemLog) -> None:
        rows = [] if src.ids is None else [(int(a), int(b), reason) for a, b in src.ids.tolist()]
        self._record(f"shard:{number}", log,
                     "INSERT OR REPLACE INTO scratch.refused VALUES (?, ?, ?)", rows)

    def _set_pointer(self, number: int, seq: int) -> None:
        from pipeline.index import dbsync

        @dbm.retry_on_busy
        def put():
            with dbm.transaction(self.conn):
                if (number, seq) > dbsync.applied_pointer(self.conn):
                    dbm.put_state(self.conn, dbsync.APPLIED_KEY, {"shard": number, "seq": seq})

        put()
