"""The DB phases of an adoption: the original's tables in batches (dbmap), its sync state
and crawl progress, then image_status and images joined with where the shards and tars put
each image, then the index rows the original DB lacks."""
from __future__ import annotations

import time

from pipeline.core import db as dbm
from pipeline.adopt import Stopped, dbmap
from pipeline.adopt.files import names_in, place
from pipeline.adopt.report import ItemLog
from pipeline.core.fsutil import fsync_dir

ADOPTED_REASON_EXTRA = f"{dbmap.ADOPT_REASON} not in the original DB"


class DBPhase:
    """Methods of Adoption (pipeline/adopt/run.py)."""

    # ---- DB tables --------------------------------------------------------------------
    def _tables(self) -> None:
        r = self.report
        for tmap in dbmap.TABLE_MAPS:
            self._check_stop()
            if not self._usable(tmap.name):
                continue
            cols = self.schema.tables[tmap.name].columns
            state, finished = dbmap.copy_table(
                self.x, self.conn, tmap, cols, self.batch, self.stop_requested, self.dry,
                lambda ex: r.inconsistent("bad_rows", ex))
            if not finished:
                raise Stopped()
            r.adopted.setdefault("tables", {})[tmap.name] = (
                {"rows": state["read"]} if self.dry else
                {"rows": state["read"], "written": state["changed"]})
        self._sync_state()

    def _sync_state(self) -> None:
        """The original's sync_state keys kept as `original:<key>`; its crawl progress mapped
        onto crawl_units (band i of its taxonomy config = crawl unit i) for a fresh root."""
        r = self.report
        values = {}
        if self._usable("sync_state"):
            values = {k: dbmap.load_json_value(v) for k, v in
                      self.x.execute("SELECT key, value FROM main.sync_state")}
        progress = None
        if self._usable("sync_progress"):
            progress = _read_progress(self.x)
        if self.dry:
            r.adopted["sync"] = {"keys": len(values), "crawl progress": "yes" if progress else "no"}
            return
        from pipeline.stages.sync import units
        from pipeline.stages.sync.crawl import PASS_KEY

        applied = "not applied"
        with dbm.transaction(self.conn):
            for k, v in values.items():
                dbm.put_state(self.conn, f"original:{k}", v)
            if progress is not None:
                if dbm.get_state(self.conn, PASS_KEY) is not None:
                    applied = "not applied (the new root has a crawl pass already)"
                else:
                    config = self.orig.band_config if self.orig.band_config.exists() else \
                        self.root.db_dir / "furniture_taxonomy_config.json"
                    bands = units.load_band_config(config)
                    dbm.put_state(self.conn, "original:sync_progress", progress)
                    now = time.time()
                    cur = int(progress.get("crawl_unit_index") or 0)
                    done = {int(i) for i in progress.get("exhausted") or [] if str(i).lstrip("-").isdigit()}
                    for i, (tax, lo, hi) in enumerate(bands):
                        exhausted = units.DONE if (i in done or i < cur) else units.TODO
                        offset = int(progress.get("offset") or 0) if i == cur and exhausted == units.TODO else 0
                        self.conn.execute(
                            "INSERT OR IGNORE INTO crawl_units(taxonomy_id, min_price, max_price, "
                            "next_offset, exhausted, pass_no, updated_at) VALUES (?, ?, ?, ?, ?, 1, ?)",
                            (tax, lo / 100, hi / 100, offset, exhausted, now))
                    dbm.put_state(self.conn, PASS_KEY, {"pass_no": 1, "started_at": now,
                                                        "finished_at": None, "done": []})
                    applied = f"applied to {len(bands)} crawl units (unit {cur} at offset " \
                              f"{progress.get('offset') or 0})"
        r.adopted["sync"] = {"keys": len(values), "crawl progress": applied if progress else "none"}

    # ---- images -----------------------------------------------------------------------
    def _images(self) -> None:
        bg = names_in(self.orig.embedded_dir)
        raw = names_in(self.orig.download_dir)
        if self._usable("image_status"):
            self._image_rows(bg, raw)
        self._extra_rows(bg)

    def _tally(self, key: str) -> dict:
        state = (dbm.get_state(self.conn, key) if self.conn is not None else None) or {}
        state.setdefault("after", None)
        state.setdefault("done", False)
        state.setdefault("states", {})
        state.setdefault("issues", {})
        state.setdefault("files", {})
        state.setdefault("written", 0)
        return state

    def _merge_tally(self, state: dict) -> None:
        r = self.report
        sec = r.adopted.setdefault("images", {})
        for k, v in state["states"].items():
            sec[k] = sec.get(k, 0) + v
        if not self.dry:
            sec["rows written"] = sec.get("rows written", 0) + state["written"]
        for kind, entry in state["issues"].items():
            for k, ex in enumerate(entry["examples"] or [None]):
                r.inconsistent(kind, ex, entry["count"] if k == 0 else 0)
        for k, v in state["files"].items():
            r.count("files", k, v)

    def _image_rows(self, bg: set, raw: set) -> None:
        key = dbmap.cursor_key("image_status")
        state = self._tally(key)
        if not state["done"]:
            pager = dbmap.Pager(self.x, "image_status", dbmap.IMAGE_SELECT,
                                ("listing_id", "image_id"), dbmap.IMAGE_JOINS)
            while True:
                self._check_stop()
                rows, after = pager.page(state["after"], self.batch)
                if not rows:
                    break
                now = time.time()
                status, images, links = [], [], []
                for (lid, iid, is_primary, url, code, shard, srow, grow, tname, toff, refused,
                     tarbad, tarbad_name) in rows:
                    name = f"{lid}_{iid}.jpg"
                    if tname is None and tarbad is None and grow is not None and code in (3, 4):
                        tarbad = self._range_tar_problem(grow)
                    m = dbmap.map_image(lid, iid, code, url, shard, srow, grow, tname, toff, refused,
                                        tarbad, tarbad_name, name in bg, name in raw)
                    _tally_issue(state, m.issue)
                    state["states"][m.state] = state["states"].get(m.state, 0) + 1
                    if not url and code == 1:
                        url = dbmap.marker_url(self.orig.download_dir, lid, iid)
                    status.append(dbmap.image_row(lid, iid, m, now))
                    images.append((lid, iid, 1 if is_primary else None, 1 if is_primary else 0, url))
                    if m.link == "embedded":
                        links.append((self.orig.embedded_dir / name, self.root.bgremoved_dir / name))
                    elif m.link == "download":
                        links.append((self.orig.download_dir / name, self.root.download_dir / name))
                state["after"] = after
                if not self.dry:
                    self._write_images(key, state, status, images, links)
            state["done"] = True
            if not self.dry:
                with dbm.transaction(self.conn):
                    dbm.put_state(self.conn, key, state)
        self._merge_tally(state)

    def _range_tar_problem(self, global_row: int) -> str:
        """Why the tar of a tarred image's row range holds it not (for its reason)."""
        from pipeline.stages.archive.tarmembers import tar_name

        if self._tar_status is None:
            self._tar_status = {}
            for item, value in self.x.execute("SELECT item, value FROM scratch.done "
                                              "WHERE item LIKE 'tar:%'"):
                status = ItemLog.loads(value)[1].get("status")
                if status:
                    self._tar_status[item[4:]] = status
        name = tar_name(global_row // self.per_tar)
        status = self._tar_status.get(name)
        return f"its tar {name} was {status}" if status else f"its tar {name} does not hold it"

    def _write_images(self, key: str, state: dict, status, images, links) -> None:
        # a loose file is taken only with its row: once the new system has the row, the
        # file may have been consumed (tarred, embedded) and must not come back
        links = [(src, dst) for src, dst in links if self._row_missing(dst.name)]
        for src, dst in links:
            placed = place(src, dst, self.link_mode, durable=False)
            state["files"][placed.how] = state["files"].get(placed.how, 0) + 1
            if placed.bytes_copied:
                state["files"]["bytes copied"] = state["files"].get("bytes copied", 0) + placed.bytes_copied
        if links and self.durable:
            fsync_dir(self.root.bgremoved_dir)
            fsync_dir(self.root.download_dir)

        @dbm.retry_on_busy
        def write():
            with dbm.transaction(self.conn):
                cur = self.conn.executemany(dbmap.UPSERT_IMAGE, status)
                n = max(cur.rowcount, 0)
                self.conn.executemany(dbmap.INSERT_IMAGE_ROW, images)
                dbm.put_state(self.conn, key, dict(state, written=state["written"] + n))
                return n

        state["written"] += write()

    def _row_missing(self, name: str) -> bool:
        lid, iid = name[:-4].split("_")
        return self.conn.execute("SELECT 1 FROM image_status WHERE listing_id = ? AND "
                                 "image_id = ?", (int(lid), int(iid))).fetchone() is None

    def _extra_rows(self, bg: set) -> None:
        """Index rows the original DB has no row for. An adopted shard's row: its vectors are
        real, so the image gets a row (embedded, or tarred when a tar holds it) and the
        index stays aligned with the DB. A refused shard's row: failed, with the reason."""
        in_db = self._usable("image_status")
        no_db_row = ("AND NOT EXISTS (SELECT 1 FROM main.image_status o WHERE o.listing_id = "
                     "p.listing_id AND o.image_id = p.image_id) " if in_db else "")
        adopted_sql = (
            "SELECT p.listing_id, p.image_id, p.shard, p.shard_row, p.global_row, t.tar_name, "
            "t.tar_offset, NULL FROM scratch.pos p LEFT JOIN scratch.tarpos t ON t.listing_id = "
            "p.listing_id AND t.image_id = p.image_id WHERE (p.listing_id, p.image_id) > (?, ?) "
            f"{no_db_row}ORDER BY p.listing_id, p.image_id LIMIT ?")
        refused_sql = (
            "SELECT p.listing_id, p.image_id, NULL, NULL, NULL, t.tar_name, t.tar_offset, p.reason "
            "FROM scratch.refused p LEFT JOIN scratch.tarpos t ON t.listing_id = p.listing_id "
            "AND t.image_id = p.image_id WHERE (p.listing_id, p.image_id) > (?, ?) "
            f"{no_db_row}AND NOT EXISTS (SELECT 1 FROM scratch.pos q WHERE q.listing_id = "
            "p.listing_id AND q.image_id = p.image_id) ORDER BY p.listing_id, p.image_id LIMIT ?")
        made = False
        for part, sql in (("extras", adopted_sql), ("extras_refused", refused_sql)):
            key = dbmap.cursor_key(part)
            state = self._tally(key)
            while not state["done"]:
                self._check_stop()
                after = state["after"] or [-(1 << 62), -(1 << 62)]
                rows = self.x.execute(sql, (*after, self.batch)).fetchall()
                if not rows:
                    state["done"] = True
                    if not self.dry:
                        with dbm.transaction(self.conn):
                            dbm.put_state(self.conn, key, state)
                    break
                now = time.time()
                status, images, links = [], [], []
                for lid, iid, shard, srow, grow, tname, toff, refused in rows:
                    name = f"{lid}_{iid}.jpg"
                    if refused is not None:
                        m = dbmap.Mapped("failed", f"{dbmap.ADOPT_REASON} {refused}",
                                         tar_name=tname, tar_offset=toff)
                    else:
                        m = dbmap.Mapped("tarred" if tname else "embedded", ADOPTED_REASON_EXTRA,
                                         shard, srow, grow, tname, toff)
                        if not tname and name in bg:
                            links.append((self.orig.embedded_dir / name, self.root.bgremoved_dir / name))
                    if in_db:
                        where = f"shard {shard} row {srow}" if refused is None else "a refused shard"
                        _tally_issue(state, ("shard_rows_without_db_row", f"{name[:-4]} in {where}"))
                    state["states"][m.state] = state["states"].get(m.state, 0) + 1
                    status.append(dbmap.image_row(lid, iid, m, now))
                    images.append((lid, iid, None, 0, None))
                state["after"] = list(rows[-1][:2])
                if not self.dry:
                    self._write_images(key, state, status, images, links)
            made = made or bool(state["states"])
            self._merge_tally(state)
        if not in_db and made:
            self.report.note("image rows made from the index shards and tars (the original DB's "
                             "image_status was not usable)")


def _tally_issue(state: dict, issue) -> None:
    if not issue:
        return
    kind, example = issue
    entry = state["issues"].setdefault(kind, {"count": 0, "examples": []})
    entry["count"] += 1
    if len(entry["examples"]) < 5:
        entry["examples"].append(example)


def _read_progress(conn) -> dict | None:
    cols = [r[1] for r in conn.execute('PRAGMA table_info("sync_progress")')]
    row = conn.execute('SELECT * FROM main.sync_progress ORDER BY 1 LIMIT 1').fetchone()
    if row is None:
        return None
    data = dict(zip(cols, row))
    for name in ("value", "data", "state", "progress"):
        if name in data:
            value = dbmap.load_json_value(data[name])
            if isinstance(value, dict):
                return value
    out = {k: data.get(k) for k in ("crawl_unit_index", "offset", "exhausted") if k in data}
    if "exhausted" in out:
        out["exhausted"] = dbmap.load_json_value(out["exhausted"]) or []
        if not isinstance(out["exhausted"], list):
            out["exhausted"] = []
    return out or None
