"""The DB side of an import: images batched -> embedded with their shard rows, in one
transaction with the store's "applied up to" pointer, so a crash between the manifest
commit and the DB commit is repaired by re-applying the lines after the pointer."""
from __future__ import annotations

import time

import numpy as np

from pipeline.core import db as dbm
from pipeline.index.shard import BatchSlice, Shard

APPLIED_KEY = "index_applied"


def applied_pointer(conn) -> tuple[int, int]:
    value = dbm.get_state(conn, APPLIED_KEY, None)
    if not value:
        return (-1, -1)
    return (int(value["shard"]), int(value["seq"]))


def pending(shards: list[Shard], pointer: tuple[int, int]) -> list[tuple[Shard, BatchSlice]]:
    out = []
    for shard in shards:
        for s in shard.slices:
            if (shard.number, s.seq) > pointer:
                out.append((shard, s))
    return out


@dbm.retry_on_busy
def apply_slice(conn, shard: Shard, s: BatchSlice, now: float | None = None) -> int:
    """Move the slice's images batched -> embedded (idempotent); returns how many moved."""
    now = time.time() if now is None else now
    ids = np.asarray(shard.part(s, "ids"))
    g0 = shard.first_global_row + s.start
    rows = [(int(lid), int(iid), s.batch_id, shard.number, s.start + i, g0 + i)
            for i, (lid, iid) in enumerate(ids)]
    with dbm.transaction(conn):
        moved = dbm.set_image_fields(conn, rows, dbm.EMBEDDED, dbm.BATCHED,
                                     ("batch_id", "shard", "shard_row", "global_row"), now=now)
        if s.offset + s.n == s.total:  # the last slice of this offer: the batch is in
            first = s.entry.get("first", [shard.number, g0])
            conn.execute("UPDATE batches SET state = 'imported', imported_at = ?, shard = ?, "
                         "first_row = ?, fingerprint = ?, error = NULL WHERE batch_id = ?",
                         (now, first[0], first[1], s.fingerprint, s.batch_id))
        dbm.put_state(conn, APPLIED_KEY, {"shard": shard.number, "seq": s.seq})
    return moved


@dbm.retry_on_busy
def move_pointer(conn, shard: int, seq: int) -> None:
    """Record that everything up to line ``seq`` of ``shard`` is in the DB (an adopted shard,
    whose images the adoption maps itself); never moves the pointer back."""
    with dbm.transaction(conn):
        if (int(shard), int(seq)) > applied_pointer(conn):
            dbm.put_state(conn, APPLIED_KEY, {"shard": int(shard), "seq": int(seq)})


def importable_rows(conn, batch_id: int, ids: np.ndarray) -> dict[int, str]:
    """Rows of an offered batch that may NOT be imported, with the reason: the image must
    exist and be `batched` (for this batch, when the DB names one)."""
    reasons: dict[int, str] = {}
    cur = conn.cursor()
    for i, (lid, iid) in enumerate(ids):
        row = cur.execute("SELECT state, batch_id FROM image_status WHERE listing_id = ? AND "
                          "image_id = ?", (int(lid), int(iid))).fetchone()
        if row is None:
            reasons[i] = "unknown image"
        elif row[0] != dbm.BATCHED:
            reasons[i] = f"state {row[0]}"
        elif row[1] is not None and int(row[1]) != int(batch_id):
            reasons[i] = f"leased to batch {row[1]}"
    return reasons
