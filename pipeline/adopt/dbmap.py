"""The original's DB mapped into the new schema, in batches inside transactions.

Every batch commits together with its cursor in the new DB's ``sync_state``
(``adopt:cursor:<table>``), so a kill or crash resumes after the last committed batch, and
every write is an idempotent upsert, so a batch done twice (or a second adoption) changes
nothing:
- static tables (listings_static, shops_static): inserted, or replaced when the original's
  snapshot is newer than the row already there;
- time series and reviews: inserted unless the same row is there (original ids kept);
- image_status: inserted; a row that an earlier adoption left incomplete (reason
  ``adopt: ...``, failed or not yet tarred) is moved forward when the original now allows
  it (e.g. a refused shard restored from a backup); rows the new system has moved are
  never touched.

download_done codes -> states (ORIGINAL_SYSTEM.md): the shards and tars decide what is
embedded and tarred, the code only what is not:

    in an adopted shard and an adopted tar   -> tarred (shard, row, tar, offset)
    in an adopted shard, no adopted tar      -> embedded (its bg-removed file linked into
                                                imageall_new/ when the original has it)
    in a refused shard                       -> failed, reason names the shard
    -1                                       -> dead (tombstone)
    0 pending, 1 queued                      -> discovered (url from the row, else the .dl marker)
    2 and in no shard                        -> downloaded (raw file linked into
                                                imagedownload/), else discovered
    3, 4 and in no shard                     -> failed ("tarred in the original DB but in no shard")
"""
from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from pipeline.core import db as dbm

CURSOR_PREFIX = "adopt:cursor:"
ADOPT_REASON = "adopt:"
STATE_RANK = "CASE {t}.state WHEN 'tarred' THEN 2 WHEN 'embedded' THEN 1 ELSE 0 END"


@dataclass(frozen=True)
class TableMap:
    name: str                   # same name in both schemas
    upsert: str                 # "newer" or "ignore"
    pk: tuple = ()              # the target's conflict key for "newer"
    not_null: tuple = ()        # target columns a row must have


TABLE_MAPS = (
    TableMap("listings_static", "newer", ("listing_id",), ("listing_id",)),
    TableMap("shops_static", "newer", ("shop_id",), ("shop_id",)),
    TableMap("listings_dynamic", "ignore", not_null=("listing_id", "snapshot_timestamp")),
    TableMap("shops_dynamic", "ignore", not_null=("shop_id", "snapshot_timestamp")),
    TableMap("reviews", "ignore", not_null=("shop_id", "listing_id", "create_timestamp")),
)


def cursor_key(table: str) -> str:
    return f"{CURSOR_PREFIX}{table}"


def reset_cursors(conn: sqlite3.Connection) -> None:
    conn.execute("DELETE FROM sync_state WHERE key LIKE ?", (f"{CURSOR_PREFIX}%",))


def _insert_sql(tmap: TableMap, cols: list[str]) -> str:
    values = ", ".join("coalesce(?, 0)" if c == "snapshot_timestamp" and tmap.upsert == "newer"
                       else "?" for c in cols)
    names = ", ".join(cols)
    if tmap.upsert == "ignore":
        return f"INSERT OR IGNORE INTO {tmap.name} ({names}) VALUES ({values})"
    sets = ", ".join(f"{c} = excluded.{c}" for c in cols if c not in tmap.pk)
    return (f"INSERT INTO {tmap.name} ({names}) VALUES ({values}) "
            f"ON CONFLICT({', '.join(tmap.pk)}) DO UPDATE SET {sets} "
            f"WHERE excluded.snapshot_timestamp > {tmap.name}.snapshot_timestamp")


class Pager:
    """Keyset pages of a table of the original: by rowid, or by its key where it has none."""

    def __init__(self, conn: sqlite3.Connection, table: str, select: str, key: tuple[str, ...],
                 joins: str = "", alias: str = "o"):
        self.conn = conn
        self.table = table
        try:
            conn.execute(f'SELECT rowid FROM main."{table}" LIMIT 1').fetchall()
            self.key = ("rowid",)
        except sqlite3.OperationalError:  # WITHOUT ROWID: its primary key orders it
            pk = [r[1] for r in sorted(conn.execute(f'PRAGMA main.table_info("{table}")'),
                                       key=lambda r: r[5]) if r[5] > 0]
            self.key = tuple(pk) or key
        k = ", ".join(f"{alias}.{c}" for c in self.key)
        self.sql_first = (f'SELECT {k}, {select} FROM main."{table}" {alias} {joins} '
                          f"ORDER BY {k} LIMIT ?")
        marks = ", ".join("?" * len(self.key))
        self.sql_next = (f'SELECT {k}, {select} FROM main."{table}" {alias} {joins} '
                         f"WHERE ({k}) > ({marks}) ORDER BY {k} LIMIT ?")

    def page(self, after: list | None, limit: int) -> tuple[list, list | None]:
        """(rows without the key columns, key of the last row)."""
        if after is None:
            rows = self.conn.execute(self.sql_first, (limit,)).fetchall()
        else:
            rows = self.conn.execute(self.sql_next, (*after, limit)).fetchall()
        if not rows:
            return [], after
        nk = len(self.key)
        return [r[nk:] for r in rows], list(rows[-1][:nk])


def copy_table(orig: sqlite3.Connection, conn: sqlite3.Connection | None, tmap: TableMap,
               cols: list[str], batch: int, stop, dry_run: bool, bad_rows) -> tuple[dict, bool]:
    """Copy one table in batches; returns ({"read", "changed"}, finished)."""
    key = cursor_key(tmap.name)
    state = (dbm.get_state(conn, key) if conn is not None else None) or {
        "after": None, "read": 0, "changed": 0, "done": False}
    if state["done"]:
        return state, True
    pager = Pager(orig, tmap.name, ", ".join(f"o.{c}" for c in cols), tuple(cols[:1]))
    sql = _insert_sql(tmap, cols)
    need = [cols.index(c) for c in tmap.not_null if c in cols]
    while True:
        if stop():
            return state, False
        rows, after = pager.page(state["after"], batch)
        if not rows:
            break
        good = []
        for r in rows:
            if any(r[i] is None for i in need):
                bad_rows(f"{tmap.name}: row with {dict(zip(cols, r))!r:.120} lacks "
                         f"{', '.join(cols[i] for i in need if r[i] is None)}")
                continue
            good.append(r)
        state["read"] += len(rows)
        state["after"] = after
        if dry_run:
            continue

        @dbm.retry_on_busy
        def write():
            with dbm.transaction(conn):
                cur = conn.executemany(sql, good)
                dbm.put_state(conn, key, dict(state, changed=state["changed"] + max(cur.rowcount, 0)))
                return max(cur.rowcount, 0)

        state["changed"] += write()
    state["done"] = True
    if not dry_run:
        with dbm.transaction(conn):
            dbm.put_state(conn, key, state)
    return state, True


# ---------------------------------------------------------------------------
# image_status
# ---------------------------------------------------------------------------
IMAGE_SELECT = ("o.listing_id, o.image_id, o.is_primary, o.url, o.download_done, "
                "p.shard, p.shard_row, p.global_row, t.tar_name, t.tar_offset, r.reason, "
                "b.reason, b.tar_name")
IMAGE_JOINS = ("LEFT JOIN scratch.pos p ON p.listing_id = o.listing_id AND p.image_id = o.image_id "
               "LEFT JOIN scratch.tarpos t ON t.listing_id = o.listing_id AND t.image_id = o.image_id "
               "LEFT JOIN scratch.refused r ON r.listing_id = o.listing_id AND r.image_id = o.image_id "
               "LEFT JOIN scratch.tarbad b ON b.listing_id = o.listing_id AND b.image_id = o.image_id")

UPSERT_IMAGE = (
    "INSERT INTO image_status(listing_id, image_id, state, reason, shard, shard_row, global_row, "
    "tar_name, tar_offset, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?) "
    "ON CONFLICT(listing_id, image_id) DO UPDATE SET state = excluded.state, "
    "reason = excluded.reason, shard = excluded.shard, shard_row = excluded.shard_row, "
    "global_row = excluded.global_row, tar_name = excluded.tar_name, "
    "tar_offset = excluded.tar_offset, updated_at = excluded.updated_at "
    f"WHERE image_status.reason LIKE '{ADOPT_REASON}%' "
    "AND image_status.state IN ('failed', 'embedded') "
    f"AND ({STATE_RANK.format(t='excluded')}) > ({STATE_RANK.format(t='image_status')})")
INSERT_IMAGE_ROW = ("INSERT OR IGNORE INTO images(listing_id, image_id, rank, is_primary, url) "
                    "VALUES (?, ?, ?, ?, ?)")


@dataclass
class Mapped:
    state: str
    reason: str | None = None
    shard: int | None = None
    shard_row: int | None = None
    global_row: int | None = None
    tar_name: str | None = None
    tar_offset: int | None = None
    link: str | None = None          # "embedded" or "download": which loose file to take over
    issue: tuple | None = None       # (inconsistency kind, example)


def map_image(lid: int, iid: int, code, url, shard, shard_row, global_row, tar_name, tar_offset,
              refused: str | None, tarbad: str | None, tarbad_name: str | None,
              has_bg: bool, has_raw: bool) -> Mapped:
    """The new row of one original image (see the module doc)."""
    key = f"{lid}_{iid}"
    if shard is not None:
        m = Mapped("embedded", None, shard, shard_row, global_row)
        if tar_name is not None:
            m.state, m.tar_name, m.tar_offset = "tarred", tar_name, tar_offset
        else:
            if code in (3, 4):
                why = tarbad or "no tar of the original holds it"
                m.reason = f"{ADOPT_REASON} tarred in the original, but {why}"
                m.issue = ("db_tarred_not_in_tar", f"{key}: download_done {code}; {why}")
            if has_bg:
                m.link = "embedded"
            elif code == 2:
                m.issue = ("loose_files_missing", f"{key}: embedded but its bg-removed file is "
                                                  f"not in imageembedded/ (the tar stage will skip it)")
        if code in (-1, 0, 1) or code not in (-1, 0, 1, 2, 3, 4):
            m.issue = ("db_state_disagrees", f"{key}: download_done {code}, but it is in shard "
                                             f"{shard} row {shard_row}")
        return m
    tar_fields = {"tar_name": tar_name or tarbad_name,
                  "tar_offset": tar_offset if tar_name else None}
    if refused is not None:
        return Mapped("failed", f"{ADOPT_REASON} {refused}", **tar_fields)
    if code == -1:
        return Mapped("dead", "original: dead")
    if code in (0, 1):
        return Mapped("discovered")
    if code == 2:
        if has_raw:
            return Mapped("downloaded", link="download")
        if url:
            return Mapped("discovered", issue=("loose_files_missing",
                                               f"{key}: downloaded in the original, but its file "
                                               f"is not in imagedownload/ (downloaded again)"))
        return Mapped("failed", f"{ADOPT_REASON} downloaded in the original, but neither its file "
                                f"nor its url is there")
    if code in (3, 4):
        return Mapped("failed", f"{ADOPT_REASON} tarred in the original DB, but in no shard",
                      **tar_fields, issue=("db_rows_in_no_shard",
                                           f"{key}: download_done {code}, in no shard"))
    return Mapped("failed", f"{ADOPT_REASON} unknown download_done {code!r}",
                  issue=("bad_rows", f"image_status {key}: download_done {code!r}"))


def image_row(lid: int, iid: int, m: Mapped, now: float) -> tuple:
    return (lid, iid, m.state, m.reason, m.shard, m.shard_row, m.global_row, m.tar_name,
            m.tar_offset, now)


def marker_url(folder: Path, lid: int, iid: int) -> str | None:
    """The URL in a queued image's `.dl` marker (the original's queue)."""
    try:
        text = (Path(folder) / f"{lid}_{iid}.dl").read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text or None


def load_json_value(text):
    if isinstance(text, (bytes, bytearray)):
        text = text.decode("utf-8", "replace")
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text
