"""The orchestrator's side of the DB: batches and their leases (table ``batches``) and the
image moves they imply (``downloaded -> batched -> downloaded|failed``; the index store does
``batched -> embedded``).

Batch states: prepared (images taken, not yet on its worker), shipped (in the worker's inbox,
leased until ``lease_expires``), running (the worker has it in hand), returned (a verified
result is here), imported (set by the index store with the images' rows), expired (lease
ran out: images back to ``downloaded``), failed (result refused: images back too).

``image_status.attempts`` counts, for an image that has been in a batch, the batches it was
lost in (reset when it is first batched; the downloader's tries before that are not ours).

Each batch's manifest (its rows and texts, in the order the worker must keep) is written
under the spool, inside the transaction that creates the batch, so every committed batch has
one; a result is checked against it.
"""
from __future__ import annotations

import json
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.core import db as dbm
from pipeline.batches.batchfile import ManifestRow
from pipeline.core.fsutil import atomic_write_bytes

PREPARED, SHIPPED, RUNNING, RETURNED = "prepared", "shipped", "running", "returned"
IMPORTED, EXPIRED, FAILED = "imported", "expired", "failed"
ACTIVE = (PREPARED, SHIPPED, RUNNING, RETURNED)
TOKEN_KEY = "orchestrate.token"
_NAME_RE = re.compile(r"^b(\d{7,})-([0-9a-f]{6})-([0-9a-f]+)$")


def text_for(title: str | None, materials_json: str | None) -> str:
    """The CLIP text of a listing, as the original builds it: title + ". " + materials."""
    materials: list = []
    if materials_json:
        try:
            value = json.loads(materials_json)
            materials = [str(m) for m in value] if isinstance(value, list) else []
        except (json.JSONDecodeError, TypeError):
            materials = []
    return (title or "") + ". " + ", ".join(materials)


def batch_name(batch_id: int, created_at: float, token: str) -> str:
    """Unique across DB roots (token) and across a DB restored from a backup (creation
    time), so a worker's leftovers can never pass for another batch's result."""
    return f"b{int(batch_id):07d}-{token}-{int(round(created_at * 1000)):x}"


def parse_name(name: str) -> tuple[int, str] | None:
    m = _NAME_RE.match(name)
    return (int(m.group(1)), m.group(2)) if m else None


class _NothingTaken(Exception):
    pass


@dataclass
class BatchRow:
    batch_id: int
    name: str
    worker: str
    state: str
    n_images: int
    lease_expires: float | None
    created_at: float
    shipped_at: float | None
    error: str | None = None


def get_token(conn) -> str:
    """This DB root's batch-name token, made once."""
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (TOKEN_KEY,)).fetchone()
    if row:
        return row[0]

    @dbm.retry_on_busy
    def make() -> str:
        with dbm.transaction(conn):
            conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES (?, ?)",
                         (TOKEN_KEY, secrets.token_hex(3)))
            return conn.execute("SELECT value FROM meta WHERE key = ?", (TOKEN_KEY,)).fetchone()[0]

    return make()


class Ledger:
    def __init__(self, conn, token: str, manifests_dir: Path, max_attempts: int):
        self.conn = conn
        self.token = token
        self.manifests_dir = Path(manifests_dir)
        self.manifests_dir.mkdir(parents=True, exist_ok=True)
        self.max_attempts = max_attempts

    # ---- reading ------------------------------------------------------------------------
    def downloaded(self) -> int:
        return dbm.queue_depths(self.conn)[dbm.DOWNLOADED]

    def _row(self, r) -> BatchRow:
        return BatchRow(r[0], batch_name(r[0], r[5], self.token), r[1], r[2], r[3], r[4], r[5],
                        r[6], r[7])

    _COLS = "batch_id, worker, state, n_images, lease_expires, created_at, shipped_at, error"

    def get(self, batch_id: int) -> BatchRow | None:
        r = self.conn.execute(f"SELECT {self._COLS} FROM batches WHERE batch_id = ?",
                              (int(batch_id),)).fetchone()
        return self._row(r) if r else None

    def by_name(self, name: str) -> BatchRow | None:
        parsed = parse_name(name)
        if not parsed or parsed[1] != self.token:
            return None
        row = self.get(parsed[0])
        return row if row is not None and row.name == name else None

    def active(self) -> list[BatchRow]:
        marks = ",".join("?" * len(ACTIVE))
        rows = self.conn.execute(f"SELECT {self._COLS} FROM batches WHERE state IN ({marks}) "
                                 f"ORDER BY batch_id", ACTIVE).fetchall()
        return [self._row(r) for r in rows]

    def manifest_path(self, batch_id: int) -> Path:
        return self.manifests_dir / f"{int(batch_id)}.json"

    def manifest(self, batch_id: int) -> list[ManifestRow] | None:
        try:
            data = json.loads(self.manifest_path(batch_id).read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return [ManifestRow(int(a), int(b), str(t)) for a, b, t in data["rows"]]

    def drop_manifest(self, batch_id: int) -> None:
        self.manifest_path(batch_id).unlink(missing_ok=True)

    def batch_images(self, batch_id: int, states: tuple[str, ...]) -> list[tuple[int, int]]:
        marks = ",".join("?" * len(states))
        return [(int(a), int(b)) for a, b in self.conn.execute(
            f"SELECT listing_id, image_id FROM image_status WHERE batch_id = ? AND state IN ({marks})",
            (int(batch_id), *states))]

    # ---- forming a batch --------------------------------------------------------------------
    def candidates(self, limit: int) -> list[tuple[int, int]]:
        """The oldest downloaded images (the state index keeps this cheap)."""
        return [(int(a), int(b)) for a, b in self.conn.execute(
            "SELECT listing_id, image_id FROM image_status WHERE state = 'downloaded' "
            "ORDER BY updated_at, listing_id, image_id LIMIT ?", (int(limit),))]

    def texts(self, listing_ids) -> dict[int, str]:
        ids = sorted(set(int(x) for x in listing_ids))
        out: dict[int, str] = {}
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            marks = ",".join("?" * len(chunk))
            for lid, title, materials in self.conn.execute(
                    f"SELECT listing_id, title, materials FROM listings_static "
                    f"WHERE listing_id IN ({marks})", chunk):
                out[int(lid)] = text_for(title, materials)
        return out

    @dbm.retry_on_busy
    def fail_images(self, keys: list[tuple[int, int]], reason: str, expect: str = dbm.DOWNLOADED,
                    batch_id: int | None = None) -> int:
        with dbm.transaction(self.conn):
            return self._fail_images(keys, reason, expect, batch_id)

    def _fail_images(self, keys, reason, expect, batch_id) -> int:
        now = time.time()
        sql = ("UPDATE image_status SET state = 'failed', reason = ?, updated_at = ? "
               "WHERE listing_id = ? AND image_id = ? AND state = ?")
        args = [(reason, now, int(a), int(b), expect) for a, b in keys]
        if batch_id is not None:
            sql += " AND batch_id = ?"
            args = [a + (int(batch_id),) for a in args]
        return sum(self.conn.execute(sql, a).rowcount for a in args)

    @dbm.retry_on_busy
    def create_batch(self, worker: str, keys: list[tuple[int, int]],
                     texts: dict[int, str]) -> BatchRow | None:
        """Take ``keys`` (those still downloaded) into a new batch leased to ``worker``."""
        keys = sorted(set(keys))
        now = time.time()
        try:
            return self._create(worker, keys, texts, now)
        except _NothingTaken:
            return None

    def _create(self, worker, keys, texts, now) -> BatchRow:
        with dbm.transaction(self.conn):
            cur = self.conn.execute("INSERT INTO batches(worker, state, n_images, created_at) "
                                    "VALUES (?, 'prepared', 0, ?)", (worker, now))
            batch_id = cur.lastrowid
            taken = []
            for lid, iid in keys:
                c = self.conn.execute(
                    "UPDATE image_status SET state = 'batched', "
                    "attempts = CASE WHEN batch_id IS NULL THEN 0 ELSE attempts END, "
                    "batch_id = ?, updated_at = ? "
                    "WHERE listing_id = ? AND image_id = ? AND state = 'downloaded'",
                    (batch_id, now, lid, iid))
                if c.rowcount:
                    taken.append((lid, iid))
            if not taken:
                raise _NothingTaken()  # rolls the batch row back
            self.conn.execute("UPDATE batches SET n_images = ? WHERE batch_id = ?",
                              (len(taken), batch_id))
            rows = [[lid, iid, texts.get(lid, text_for(None, None))] for lid, iid in taken]
            name = batch_name(batch_id, now, self.token)
            # Inside the transaction: a committed batch always has its manifest.
            atomic_write_bytes(self.manifest_path(batch_id),
                               json.dumps({"name": name, "rows": rows}).encode("utf-8"))
        return BatchRow(batch_id, name, worker, PREPARED, len(taken), None, now, None)

    # ---- lease changes ----------------------------------------------------------------------
    @dbm.retry_on_busy
    def mark_shipped(self, batch_id: int, lease_expires: float) -> None:
        with dbm.transaction(self.conn):
            self.conn.execute("UPDATE batches SET state = 'shipped', shipped_at = ?, "
                              "lease_expires = ? WHERE batch_id = ? AND state = 'prepared'",
                              (time.time(), lease_expires, int(batch_id)))

    @dbm.retry_on_busy
    def set_state(self, batch_id: int, state: str, lease_expires: float | None = None,
                  only_from: tuple[str, ...] = ACTIVE, error: str | None = None) -> bool:
        sets, args = ["state = ?"], [state]
        if lease_expires is not None:
            sets.append("lease_expires = ?")
            args.append(lease_expires)
        if state == RETURNED:
            sets.append("finished_at = ?")
            args.append(time.time())
        if error is not None:
            sets.append("error = ?")
            args.append(error)
        marks = ",".join("?" * len(only_from))
        with dbm.transaction(self.conn):
            cur = self.conn.execute(f"UPDATE batches SET {', '.join(sets)} WHERE batch_id = ? "
                                    f"AND state IN ({marks})", (*args, int(batch_id), *only_from))
            return cur.rowcount > 0

    @dbm.retry_on_busy
    def renew(self, batch_id: int, lease_expires: float) -> None:
        with dbm.transaction(self.conn):
            self.conn.execute("UPDATE batches SET lease_expires = ? WHERE batch_id = ?",
                              (lease_expires, int(batch_id)))

    @dbm.retry_on_busy
    def give_back(self, batch_id: int, state: str, reason: str,
                  count_attempt: bool = True) -> tuple[int, int]:
        """End a batch without a result (expired, failed): its images go back to
        ``downloaded``, or to ``failed`` once lost in ``max_attempts`` batches.
        Returns (requeued, failed)."""
        now = time.time()
        with dbm.transaction(self.conn):
            failed = 0
            if count_attempt:
                failed = self.conn.execute(
                    "UPDATE image_status SET state = 'failed', attempts = attempts + 1, "
                    "reason = ?, updated_at = ? WHERE batch_id = ? AND state = 'batched' "
                    "AND attempts + 1 >= ?",
                    (f"no result after {self.max_attempts} batches (last: {reason})"[:500], now,
                     int(batch_id), self.max_attempts)).rowcount
            requeued = self.conn.execute(
                "UPDATE image_status SET state = 'downloaded', attempts = attempts + ?, "
                "updated_at = ? WHERE batch_id = ? AND state = 'batched'",
                (1 if count_attempt else 0, now, int(batch_id))).rowcount
            self.conn.execute("UPDATE batches SET state = ?, error = ?, finished_at = ? "
                              "WHERE batch_id = ? AND state IN ('prepared','shipped','running',"
                              "'returned')", (state, reason[:1000], now, int(batch_id)))
        return requeued, failed

    @dbm.retry_on_busy
    def reclaim(self, batch_id: int, keys: list[tuple[int, int]]) -> int:
        """A late result for an expired batch: take back those of its images that nobody
        else has taken meanwhile. Returns how many."""
        now = time.time()
        with dbm.transaction(self.conn):
            n = 0
            for lid, iid in keys:
                n += self.conn.execute(
                    "UPDATE image_status SET state = 'batched', updated_at = ? WHERE listing_id = ? "
                    "AND image_id = ? AND state = 'downloaded' AND batch_id = ?",
                    (now, int(lid), int(iid), int(batch_id))).rowcount
            if n:
                self.conn.execute("UPDATE batches SET state = 'returned', finished_at = ?, "
                                  "error = NULL WHERE batch_id = ?", (now, int(batch_id)))
        return n

    @dbm.retry_on_busy
    def mark_imported_if_done(self, batch_id: int) -> None:
        """A result offered again after its import: the batch is in, whatever the DB said."""
        with dbm.transaction(self.conn):
            left = self.conn.execute("SELECT COUNT(*) FROM image_status WHERE batch_id = ? AND "
                                     "state = 'batched'", (int(batch_id),)).fetchone()[0]
            if not left:
                self.conn.execute("UPDATE batches SET state = 'imported', imported_at = "
                                  "COALESCE(imported_at, ?) WHERE batch_id = ? AND state IN "
                                  "('prepared','shipped','running','returned')",
                                  (time.time(), int(batch_id)))
