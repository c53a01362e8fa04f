"""One adoption, phase by phase; every phase resumes where a killed run stopped.

    survey    what the original holds; config and disk checks; the estimate
    shards    each shard checked row by row, then staged and renamed into the index store
    tars      each all-image tar walked, hashed, sampled, linked; its per-tar index written
    tables    listings, shops, their time series, reviews, sync state and crawl progress
    images    image_status and images, from the original's rows and where the shards and
              tars put each image; then the shard rows the original DB lacks
    primary   the primary tars linked (the last one copied) and primary_index.bin written
    finish    shops' last activity, the combined tar_index.json, the run record

Progress lives where each phase writes: shards in the store (a shard folder exists whole
or not at all) and tars as link + index, both marked in the scratch DB with the report
lines they produced; DB batches with their cursor in the new DB's sync_state.
"""
from __future__ import annotations

import logging
import random
import shutil
import sqlite3
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from pipeline.core import db as dbm
from pipeline.adopt import Stopped, dbmap, scratch
from pipeline.adopt import shards as sh
from pipeline.adopt import tars as tz
from pipeline.adopt.db_phase import DBPhase
from pipeline.adopt.files import count_files, file_size, same_device
from pipeline.adopt.original import OriginalRoot
from pipeline.adopt.primary_phase import PrimaryPhase
from pipeline.adopt.report import ItemLog, Report
from pipeline.adopt.shard_phase import ShardPhase
from pipeline.adopt.tar_phase import TarPhase
from pipeline.core.errors import UserError
from pipeline.core.fsutil import atomic_write_json
from pipeline.stages.archive.primary import PRIMARY_RE
from pipeline.stages.archive.tarmembers import TAR_RE

RUN_KEY = "adopt"


class Adoption(ShardPhase, TarPhase, DBPhase, PrimaryPhase):
    def __init__(self, root, original, dry_run: bool = False, quick: bool = False,
                 fingerprint: str | None = None, layout: tuple | None = None,
                 stop: Callable[[], bool] | None = None, log: logging.Logger | None = None):
        self.root = root
        self.orig = OriginalRoot(original)
        self.dry = dry_run
        self.quick = quick and dry_run
        self.fp_override = fingerprint
        self._layout = layout
        self.stop_requested = stop or (lambda: False)
        self.log = log or logging.getLogger("imageselector.adopt")
        cfg = root.config
        self.link_mode = cfg.get("adopt.link")
        if self.link_mode not in ("auto", "copy"):
            raise UserError(f"adopt.link must be auto or copy, got {self.link_mode!r}")
        self.batch = int(cfg.get("adopt.batch_rows"))
        self.capacity = int(cfg.get("adopt.original_shard_rows"))
        self.per_tar = int(cfg.get("adopt.original_images_per_tar"))
        self.sample = int(cfg.get("adopt.tar_sample"))
        self.threads = int(cfg.get("adopt.threads"))
        self.durable = bool(cfg.get("index.fsync"))
        if self.batch < 1 or self.capacity < 1 or self.per_tar < 1:
            raise UserError("adopt.batch_rows, adopt.original_shard_rows and "
                            "adopt.original_images_per_tar must be at least 1")
        self.rng = random.Random(0)
        self.report = Report(str(self.orig.path), str(root.path), dry_run)
        self.x: sqlite3.Connection | None = None       # original (read-only) + scratch
        self.conn: sqlite3.Connection | None = None    # the new DB
        self.schema = None
        self.work_dir: Path | None = None
        self._fp: str | None = None
        self._tar_status: dict | None = None

    # ---- entry ----------------------------------------------------------------------
    def run(self) -> Report:
        self.orig.check(self.root.path)
        self.root.ensure()
        with self._exclusive():
            try:
                self._run()
            except Stopped:
                self.report.finish("stopped")
            finally:
                for c in (self.x, self.conn):
                    if c is not None:
                        c.close()
                if self.dry and self.work_dir is not None:
                    shutil.rmtree(self.work_dir, ignore_errors=True)
        if self.report.finished is None:
            self.report.finish()
        if not self.dry:
            path = self.root.run_dir / "adopt" / "report.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(path, self.report.to_json())
        return self.report

    def _run(self) -> None:
        self._check_stages()
        self._open()
        self._survey()
        if not self.dry and self.orig.shard_dirs():
            self.fingerprint(self._store())   # fail before any shard is written, not during
        self._phase("shards", self._shards)
        self._phase("tars", self._tars)
        self._phase("tables", self._tables)
        self._phase("images", self._images)
        self._phase("primary", self._primary)
        self._finish()

    def _phase(self, name: str, fn) -> None:
        t0 = time.perf_counter()
        self.log.info("%s: starting", name)
        fn()
        took = time.perf_counter() - t0
        self.report.timings[name] = round(took, 3)
        self.log.info("%s: done in %.1f s", name, took)

    def _check_stop(self) -> None:
        if self.stop_requested():
            raise Stopped()

    @contextmanager
    def _exclusive(self):
        from pipeline.core.fsutil import exclusive_lock

        with exclusive_lock(self.root.run_dir / "adopt.lock") as held:
            if not held:
                raise UserError(f"another `imageselector adopt` is running on {self.root.path}")
            yield

    def _check_stages(self) -> None:
        from pipeline.core.stage import STAGES
        from pipeline.core.stage_observe import stage_status

        live = [n for n, s in STAGES.items() if s.where == "db_host"
                and stage_status(self.root, n).get("pid")]
        if live:
            raise UserError(f"stop these stages before adopting: {', '.join(live)}")

    # ---- connections ------------------------------------------------------------------
    def _open(self) -> None:
        r = self.report
        if self.dry:
            self.root.run_dir.mkdir(parents=True, exist_ok=True)
            self.work_dir = Path(tempfile.mkdtemp(prefix=".adopt-dry-", dir=self.root.run_dir))
        else:
            self.work_dir = self.root.run_dir / "adopt"
            self.work_dir.mkdir(parents=True, exist_ok=True)
            self.conn = dbm.open_db(self.root)
            self._begin_run()
        db_rel = "data/db/etsy_data.db"
        try:
            self.x, how = self.orig.connect(self.work_dir / "original_db")
        except sqlite3.DatabaseError as exc:
            self.x, how = None, f"cannot be opened ({exc})"
        if self.orig.wal_bytes():
            r.note(f"{db_rel}: {how}")
        self.schema = self.orig.check_schema(self.x)
        if self.schema.problem:
            r.bad(db_rel, self.schema.problem,
                  "the DB was not adopted; images come from the shards and tars only")
            if self.x is not None:
                self.x.close()
            self.x = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
            self.schema.tables = {}
        else:
            self._report_schema(db_rel)
        scratch.attach(self.x, self.work_dir / "scratch.db")

    def _begin_run(self) -> None:
        from pipeline.index.shard import list_shard_numbers

        prev = dbm.get_state(self.conn, RUN_KEY)
        if prev and prev.get("source") != str(self.orig.path):
            raise UserError(f"this root adopted {prev.get('source')} already; adopt "
                            f"{self.orig.path} into a fresh root")
        if not prev:
            images = sum(dbm.queue_depths(self.conn).values())
            shards = list_shard_numbers(self.root.embeddings_dir)
            if images or shards:
                raise UserError(f"{self.root.path} already holds {images:,} images and "
                                f"{len(shards)} index shards of its own; adopt into a fresh root")
        resuming = bool(prev) and prev.get("state") == "running"
        with dbm.transaction(self.conn):
            if not resuming:
                dbmap.reset_cursors(self.conn)
            dbm.put_state(self.conn, RUN_KEY, {"source": str(self.orig.path), "state": "running"})
        if not resuming:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.work_dir / 'scratch.db'}{suffix}").unlink(missing_ok=True)
        else:
            self.report.note("resumed an adoption that had stopped before its end")
        if prev and prev.get("state") == "done":
            self.report.note("this root adopted the same original before: only what is new "
                             "or was refused then is taken now")

    def _report_schema(self, db_rel: str) -> None:
        r = self.report
        optional = ("sync_state", "sync_progress")
        for name, t in self.schema.tables.items():
            if not t.present:
                if name in optional:
                    r.note(f"{db_rel}: no table {name}")
                else:
                    r.bad(f"{db_rel} table {name}", "missing", "nothing adopted from it")
            elif not t.usable:
                extra = "; image states come from the shards and tars only" \
                    if name == "image_status" else ""
                r.bad(f"{db_rel} table {name}", f"{t.problem} (a different schema version?)",
                      f"table not adopted{extra}")
            else:
                if t.missing:
                    r.note(f"{db_rel} table {name} lacks column(s) {', '.join(t.missing)} "
                           f"(left empty)")
                if t.extra:
                    r.note(f"{db_rel} table {name} has column(s) the original's schema does not "
                           f"list: {', '.join(t.extra)} (ignored)")
        if self.schema.extra_tables:
            r.note(f"{db_rel} has tables the original's schema does not list: "
                   f"{', '.join(self.schema.extra_tables)} (ignored)")

    def _usable(self, table: str) -> bool:
        return self.schema is not None and self.schema.usable(table)

    # ---- layout and fingerprint -------------------------------------------------------
    def _store(self):
        from pipeline.index.store import IndexStore

        overrides = {}
        if self._layout:
            overrides = {"order": list(self._layout[0]), "dims": dict(self._layout[1])}
        return IndexStore.for_root(self.root, **overrides)

    @property
    def layout(self) -> tuple[list[str], dict[str, int]]:
        if self._layout:
            return list(self._layout[0]), dict(self._layout[1])
        from pipeline.index.store import registry_layout

        return registry_layout()

    def fingerprint(self, store) -> str:
        if self._fp:
            return self._fp
        fp = self.fp_override or self.root.config.get("adopt.fingerprint")
        if not fp:
            from pipeline.index.shard import Shard, list_shard_numbers

            numbers = list_shard_numbers(store.base)
            if numbers:  # adopted shards of an earlier run: the same fingerprint
                fp = Shard(store.base, numbers[-1]).load(repair=False).fingerprint
        if not fp:
            from pipeline.models.loading import ModelSet
            from pipeline.models.registry import ModelSettings

            try:
                fp = ModelSet(ModelSettings.from_config(self.root.config, self.root.profile)).fingerprint()
            except UserError as exc:
                raise UserError(f"adopted shards must carry the fingerprint of the models that "
                                f"will extend them, and it cannot be computed: {exc} (or pass "
                                f"--fingerprint)") from None
        self._fp = fp
        return fp

    # ---- survey -----------------------------------------------------------------------
    def _survey(self) -> None:
        r, f = self.report, self.report.found
        tables = {}
        for name in ("image_status", "listings_static", "listings_dynamic", "shops_static",
                     "shops_dynamic", "reviews", "sync_state"):
            if self._usable(name):
                tables[name] = self.x.execute(f'SELECT COUNT(*) FROM main."{name}"').fetchone()[0]
        f["tables"] = tables
        if self._usable("image_status"):
            f["images_by_code"] = {str(c): n for c, n in self.x.execute(
                "SELECT download_done, COUNT(*) FROM main.image_status GROUP BY 1 ORDER BY 1")}
        order, dims = self.layout
        f["shards"] = []
        vec_bytes = 0
        for number, path in self.orig.shard_dirs():
            rows = None
            try:
                from pipeline.index import flatfile

                rows = flatfile.read_header(path / sh.faiss_name(order[0]))[1]
            except (OSError, ValueError):
                pass
            f["shards"].append({"shard": number, "rows": rows})
            vec_bytes += (rows or 0) * sum(dims.values()) * 4
        tar_names = tz.list_tars(self.orig.tars_dir, TAR_RE)
        tar_bytes = sum(file_size(self.orig.tars_dir / n) for n in tar_names)
        prim_names = tz.list_tars(self.orig.primary_dir, PRIMARY_RE)
        prim_bytes = sum(file_size(self.orig.primary_dir / n) for n in prim_names)
        f["tars"] = len(tar_names)
        f["primary_tars"] = len(prim_names)
        f["loose"] = {"imageembedded": count_files(self.orig.embedded_dir, ".jpg"),
                      "imagedownload": count_files(self.orig.download_dir, ".jpg"),
                      "queued markers": count_files(self.orig.download_dir, ".dl")}
        self._check_config()
        # the estimate, from the rates measured by bench/bench_adopt.py
        cfg = self.root.config
        n_rows = sum(s["rows"] or 0 for s in f["shards"])
        db_rows = sum(tables.values())
        seconds = (vec_bytes / (cfg.get("adopt.rate_vectors_mb_s") * 1e6)
                   + (tar_bytes + prim_bytes) / (cfg.get("adopt.rate_tars_mb_s") * 1e6)
                   + db_rows / cfg.get("adopt.rate_db_rows_s"))
        last_rows = (f["shards"][-1]["rows"] or 0) if f["shards"] else 0
        if last_rows >= self.capacity:
            last_rows = 0            # full: linked like the others, nothing is appended to it
        per_row = sum(dims.values()) * 4
        n_images = sum((f.get("images_by_code") or {}).values())
        tars_here = self.root.tars_dir if self.root.tars_dir.exists() else self.root.images_dir
        tars_linkable = self.link_mode == "auto" and same_device(self.orig.tars_dir, tars_here)
        shards_linkable = self.link_mode == "auto" and same_device(self.orig.embeddings_dir,
                                                                   self.root.data_dir)
        if self.link_mode == "auto" and tar_names and not tars_linkable:
            r.note(f"the original's tars are on another file system than {tars_here}: they "
                   f"would be copied ({(tar_bytes + prim_bytes) / 1e9:.1f} GB); make "
                   f"images/imageall_tars a link to a folder on their disk to link them instead")
        if self.link_mode == "auto" and f["shards"] and not shards_linkable:
            r.note(f"the original's shards are on another file system than {self.root.data_dir}: "
                   f"their flat index files would be copied, not linked")
        # finalized shards: their flat files are the parts and the derived files by hard
        # link (0 bytes), or one copy across file systems; the active shard: a copy as its
        # parts plus its own appendable flat files
        extra = 2 * last_rows * per_row
        if not shards_linkable:
            extra += vec_bytes - last_rows * per_row
        extra += n_rows * (16 + 8 * len(order) + 110)        # ids, hashes, image_index.json
        if not tars_linkable:
            extra += tar_bytes + prim_bytes
        elif prim_names:
            extra += file_size(self.orig.primary_dir / prim_names[-1])   # the last one is copied
        extra += file_size(self.orig.db_path) + n_images * 60    # the new DB
        extra += n_rows * (95 + 70)                          # per-tar and combined tar indexes
        free = shutil.disk_usage(self.root.path).free
        r.estimate = {"seconds": round(seconds, 3), "extra_bytes": int(extra), "free_bytes": int(free),
                      "vector_bytes": int(vec_bytes), "tar_bytes": int(tar_bytes + prim_bytes),
                      "db_rows": int(db_rows)}
        if not self.dry and extra > free:
            raise UserError(f"adoption needs about {extra / 1e9:.1f} GB of extra disk on "
                            f"{self.root.path}, {free / 1e9:.1f} GB are free; nothing adopted")

    def _check_config(self) -> None:
        cfg = self.root.config
        if int(cfg.get("archive.images_per_tar")) != self.per_tar:
            raise UserError(f"archive.images_per_tar is {cfg.get('archive.images_per_tar')} but the "
                            f"original's tars hold {self.per_tar} (adopt.original_images_per_tar): "
                            f"set archive.images_per_tar = {self.per_tar} in imageselector.toml")
        if int(cfg.get("index.shard_rows")) != self.capacity:
            self.report.note(f"index.shard_rows is {cfg.get('index.shard_rows')}, the original's "
                             f"shards hold {self.capacity}: adopted shards keep {self.capacity}, "
                             f"new shards get {cfg.get('index.shard_rows')}")

    # ---- item logs (shards, tars) -----------------------------------------------------
    def _item_done(self, item: str) -> dict | None:
        value = scratch.is_done(self.x, item)
        if value is None:
            return None
        log, extra = ItemLog.loads(value)
        log.apply(self.report)
        return extra

    def _record(self, item: str, log: ItemLog, rows_sql: str | None = None, rows=(), **extra) -> None:
        with scratch.Tx(self.x):
            if rows_sql:
                self.x.executemany(rows_sql, rows)
            scratch.mark_done(self.x, item, log.dumps(**extra))
        log.apply(self.report)

    # ---- finish -----------------------------------------------------------------------
    def _finish(self) -> None:
        if self.dry:
            self.report.finish()
            return
        from pipeline.stages.archive.tarindex import final_tars, write_combined_index

        with dbm.transaction(self.conn):
            self.conn.execute(
                "UPDATE shops_static SET last_activity_ts = (SELECT MAX(creation_timestamp) FROM "
                "listings_static l WHERE l.shop_id = shops_static.shop_id) WHERE last_activity_ts "
                "IS NULL AND EXISTS (SELECT 1 FROM listings_static l WHERE l.shop_id = "
                "shops_static.shop_id AND l.creation_timestamp IS NOT NULL)")
        combined = self.root.tars_dir / "tar_index.json"
        if self.root.config.get("archive.combined_index") and final_tars(self.root.tars_dir) and \
                (self.report.adopted.get("tars", {}).get("adopted") or not combined.exists()):
            write_combined_index(self.root.tars_dir)
        self._cross_check()
        linked = self.report.adopted.get("files", {}).get("linked", 0)
        if linked:
            self.report.note(f"{linked:,} files are hard links shared with the original (no extra "
                             f"disk); deleting the original keeps them, editing its files in "
                             f"place would change them")
        with dbm.transaction(self.conn):
            dbmap.reset_cursors(self.conn)
            dbm.put_state(self.conn, RUN_KEY, {"source": str(self.orig.path), "state": "done"})
        self.x.close()
        self.x = None
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.work_dir / 'scratch.db'}{suffix}").unlink(missing_ok=True)
        shutil.rmtree(self.work_dir / "original_db", ignore_errors=True)
        self.report.finish()

    def _cross_check(self) -> None:
        """The new DB's queue counters against a count of its rows (they must agree)."""
        fast, slow = dbm.queue_depths(self.conn), dbm.count_states_slowly(self.conn)
        self.report.adopted["status"] = fast
        if fast != slow:
            self.report.bad("new DB", f"queue counters {fast} disagree with the rows {slow}",
                            "left as is (report this)")
