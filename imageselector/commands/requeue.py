"""requeue: failed images back to discovered, now and with a fresh retry count.

A download failure is also retried by later download passes by itself, after a backoff and up
to download.failed_retry_passes (pipeline/stages/download/retry.py); everything else that is
`failed` (and a download that has used up its passes) waits for this command."""
from __future__ import annotations

from imageselector.cli import add_root_argument


def cmd_requeue(args) -> int:
    from pipeline.core import db
    from pipeline.core.root import Root

    root = Root.open(args.root)
    conn = db.open_db(root)
    sql = "SELECT listing_id, image_id FROM image_status WHERE state = 'failed'"
    params: tuple = ()
    if args.reason:
        sql += " AND reason LIKE ?"
        params = (f"%{args.reason}%",)

    @db.retry_on_busy
    def move() -> int:
        with db.transaction(conn):
            keys = conn.execute(sql, params).fetchall()
            if args.dry_run:
                return len(keys)
            return db.set_image_state(conn, keys, db.DISCOVERED, expect=db.FAILED, reason=None,
                                      attempts=0, retry_at=None, failed_passes=0)

    n = move()
    print(f"{'would requeue' if args.dry_run else 'requeued'} {n:,} failed image(s)")
    return 0


def register(sub) -> None:
    p = sub.add_parser("requeue", help="move failed images back to discovered")
    add_root_argument(p)
    p.add_argument("--reason", help="only failures whose reason contains this text")
    p.add_argument("--dry-run", action="store_true")
    p.set_defaults(func=cmd_requeue)
