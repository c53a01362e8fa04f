"""The reviews phase: which shops are asked for new reviews, and the paging of one shop's.

Etsy's ``Shop.review_count`` counts the past year only, so an unchanged count does not mean
no new reviews (one arriving while one leaves the year keeps it equal). So every shop with
listing activity in the last ``review_active_days`` is asked once a pass, with
``min_created`` = its newest stored review (the first check reads its whole history),
except a shop whose count is 0 now and was 0 at its last check: it has had no review for a
year, and a new one would make the count move. Shops whose count moved go first, then the
longest unchecked, so a pass cut short by the quota reads the likeliest first.

``shops_static.reviews_checked_at`` is the last complete check; a shop checked since the
pass started is not asked again when a stopped pass resumes. A 404 (the shop was deleted
mid-pass) marks the shop gone and the phase goes on.
"""
from __future__ import annotations

import threading
import time

from pipeline.core.db import get_state, put_state, retry_on_busy, transaction
from pipeline.etsy.errors import AuthError, ClientError
from pipeline.etsy.shapes import review_problem
from pipeline.stages.sync import store

DUE_SQL = (
    "SELECT shop_id, curr_review_count FROM shops_static "
    "WHERE last_activity_ts >= :active AND curr_review_count IS NOT NULL "
    "AND (reviews_checked_at IS NULL OR reviews_checked_at < :pass_started) "
    "AND (reviews_checked_at IS NULL OR curr_review_count > 0 "
    "     OR curr_review_count != coalesce(prev_review_count, 0)) "
    "ORDER BY curr_review_count != coalesce(prev_review_count, -1) DESC, "
    "coalesce(reviews_checked_at, 0), shop_id")


def due_shops(conn, active_since: float, pass_started: float) -> list[tuple[int, int]]:
    return conn.execute(DUE_SQL, {"active": active_since, "pass_started": pass_started}).fetchall()


class ReviewsPhase:
    """Mixed into Sync (crawl.py): uses its ctx, client, crew, settings and _crew."""

    def phase_reviews(self):
        now = time.time()
        started = self.pass_started or now
        rows = due_shops(self.conn, now - self.s.review_active_s, started)
        self.ctx.set_info(shops_for_reviews=len(rows))
        queue = iter(rows)
        lock = threading.Lock()

        def next_item(_conn):
            with lock:
                return next(queue, None)

        return self._crew(next_item, self.fetch_reviews, lambda r: f"reviews of shop {r[0]}")

    def fetch_reviews(self, row, conn) -> None:
        shop_id, count_now = row
        key = f"reviews:{shop_id}"
        cursor = get_state(conn, key)
        if cursor is None:
            last = conn.execute("SELECT MAX(create_timestamp) FROM reviews WHERE shop_id = ?",
                                (shop_id,)).fetchone()[0]
            cursor = {"offset": 0, "min_created": last}
        page_size = self.s.page_size
        while True:
            self.ctx.set_current(f"reviews of shop {shop_id} @ {cursor['offset']}")
            try:
                page = self.client.shop_reviews(shop_id, cursor["offset"], page_size, cursor["min_created"])
            except ClientError as exc:
                if exc.status != 404 or isinstance(exc, AuthError):
                    raise
                self.ctx.log.info("shop %s: gone (reviews answered 404, request %s)", shop_id, exc.request_id)
                self._shop_gone(conn, shop_id, key)
                return
            good = []
            for r in page["results"]:
                problem = review_problem(r)
                if problem or r.get("shop_id") != shop_id:
                    self.ctx.log.warning("skipped a review (request %s): %s", self.client.last_request_id,
                                         problem or f"belongs to shop {r.get('shop_id')}")
                    self.ctx.progress(1, counter="invalid_items")
                else:
                    good.append(r)
            n = len(page["results"])
            finished = n < page_size or cursor["offset"] + n >= page["count"]

            @retry_on_busy
            def write():
                with transaction(conn):
                    store.upsert_reviews(conn, good)
                    if finished:
                        conn.execute("UPDATE shops_static SET prev_review_count = ?, reviews_checked_at = ? "
                                     "WHERE shop_id = ?", (count_now, time.time(), shop_id))
                        conn.execute("DELETE FROM sync_state WHERE key = ?", (key,))
                    else:
                        put_state(conn, key, {"offset": cursor["offset"] + n,
                                              "min_created": cursor["min_created"]})

            write()
            self.ctx.progress(len(good), counter="reviews")
            self.ctx.progress(1, counter="done")
            self.publish(phase="reviews")
            if finished:
                return
            cursor = {"offset": cursor["offset"] + n, "min_created": cursor["min_created"]}
            if not self.crew.boundary():
                return

    def _shop_gone(self, conn, shop_id: int, key: str) -> None:
        @retry_on_busy
        def write():
            now = time.time()
            with transaction(conn):
                store.mark_shop_gone(conn, shop_id, now)
                conn.execute("UPDATE shops_static SET reviews_checked_at = ? WHERE shop_id = ?", (now, shop_id))
                conn.execute("DELETE FROM sync_state WHERE key = ?", (key,))

        write()
        self.ctx.progress(1, counter="shops_gone")
        self.ctx.progress(1, counter="done")
