"""The crawl: one pass = taxonomy, listings (unit by unit, page by page), shops, reviews.

The pass and its finished phases live in ``sync_state`` (key ``sync_pass``), every unit's
cursor in ``crawl_units`` (and its last page's tail, paging.py), a shop's review paging in
``sync_state`` (``reviews:<shop>``, reviews.py):
a stop of any kind (kill file, SIGTERM, SIGKILL, quota) resumes exactly there, and the
page in hand when it stopped is the only one asked for again.

Quota order within a pass: listings first (new images are the product), then shops,
then reviews; a phase that failed leaves the pass open so the next run retries it.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from pipeline.core.db import get_state, open_db, put_state, retry_on_busy, transaction
from pipeline.etsy.client import EtsyClient
from pipeline.etsy.errors import AuthError, ClientError, QuotaExhausted
from pipeline.etsy.shapes import listing_problem
from pipeline.stages.sync import batch, paging, store, units
from pipeline.stages.sync.crew import Crew
from pipeline.stages.sync.reviews import ReviewsPhase
from pipeline.stages.sync.settings import PHASES, Settings

PASS_KEY = "sync_pass"
LIMIT_KEY = "etsy_daily_limit"
EXIT_QUOTA = 75  # EX_TEMPFAIL: stopped for the day's quota; the next run resumes


@dataclass
class PhaseResult:
    ok: bool = True
    stopped: bool = False
    quota: QuotaExhausted | None = None
    fatal: BaseException | None = None
    failures: list = field(default_factory=list)


class Sync(ReviewsPhase):
    def __init__(self, ctx, settings: Settings, client: EtsyClient | None = None):
        self.ctx = ctx
        self.root = ctx.root
        self.s = settings
        self.conn = ctx.db()
        self.crew: Crew | None = None
        self.client = client or EtsyClient.from_root(
            self.root, log=ctx.log, alert=self.alert, stop_check=self._stop_check,
            known_daily_limit=get_state(self.conn, LIMIT_KEY))
        self._skip_lock = threading.Lock()
        self._skip: set[int] = set()
        self._claimed: set[int] = set()
        self.pass_no = 0
        self.pass_started: float | None = None

    # ---- hooks -----------------------------------------------------------------------------
    def _stop_check(self) -> bool:
        return self.crew.stopping() if self.crew is not None else self.ctx.stop_requested()

    def alert(self, kind: str, text: str) -> None:
        """The operator's alert channel (pipeline/core/alerts.py: recorded in ``alerts``, sent by
        mail when configured), plus the heartbeat for the console."""
        self.ctx.set_info(last_alert={"kind": kind, "text": text, "at": time.time()})
        try:
            from pipeline.core.alerts import Alerter

            conn = open_db(self.root)
            try:
                Alerter(self.root, conn=conn, log=self.ctx.log).send(kind, text)
            finally:
                conn.close()
        except Exception as exc:  # an alert must never break the crawl
            self.ctx.log.warning("could not record alert %s: %s", kind, exc)

    def publish(self, **extra) -> None:
        info = self.client.quota.info()
        stats = self.client.stats_snapshot()
        self.ctx.set_info(pass_no=self.pass_no, requests_today=info["requests_today"],
                          remaining_today=info["remaining_today"], limit_per_day=info["limit_per_day"],
                          **extra)
        self.ctx.set_counter("requests", stats.get("requests", 0))
        self.ctx.set_counter("retries", stats.get("retries", 0))
        self.ctx.set_counter("throttled", stats.get("throttled", 0))
        self.ctx.set_counter("bad_responses", stats.get("bad_responses", 0))

    # ---- the pass --------------------------------------------------------------------------
    def run(self) -> int:
        ctx = self.ctx
        state = self._open_pass()
        if state is None:
            ctx.log.info("last pass finished less than %.1f h ago: nothing to do",
                         self.s.min_pass_interval_s / 3600)
            return 0
        failed: list[str] = []
        for phase in self.s.phases:
            if phase in state["done"]:
                continue
            while True:
                ctx.set_info(phase=phase)
                ctx.log.info("pass %d: phase %s", self.pass_no, phase)
                self.publish(phase=phase)
                result = getattr(self, f"phase_{phase}")()
                self._remember_limit()
                self.publish(phase=phase)
                if result.fatal is not None:
                    text = self.client.redact(result.fatal)
                    ctx.set_info(failure=f"{phase}: {text}")
                    ctx.log.error("phase %s: %s", phase, text)
                    return 1
                if result.stopped:
                    ctx.log.info("stopped in phase %s; the next run resumes here", phase)
                    return 0
                if result.quota is None:
                    break
                if not self._wait_for_quota(phase, result.quota):
                    return EXIT_QUOTA if not ctx.stop_requested() else 0
            if result.ok and not failed:
                state = self._phase_done(phase)
            elif result.ok:
                # it ran on what an earlier, failed phase left: it runs again next time
                ctx.log.info("phase %s ran after a failed phase; it is run again next time", phase)
            else:
                failed.append(phase)
                ctx.log.error("phase %s failed: %d item(s); it is retried by the next run (%s)",
                              phase, len(result.failures), "; ".join(result.failures[:3]))
        self.client.close()
        if failed:
            ctx.set_info(failure=f"phase(s) failed: {', '.join(failed)}", phase="failed")
            return 1
        if set(self.s.phases) >= set(PHASES) or set(state["done"]) >= set(PHASES):
            self._finish_pass()
        ctx.set_info(phase="done")
        ctx.log.info("pass %d complete", self.pass_no)
        return 0

    def _wait_for_quota(self, phase: str, exc: QuotaExhausted) -> bool:
        ctx = self.ctx
        wait_s = max(exc.retry_after_s, 1.0)
        text = (f"Etsy daily quota spent in phase {phase} (pass {self.pass_no}): "
                f"{self.client.redact(exc)}; the crawl resumes where it stopped")
        self.alert("quota_spent", text)
        ctx.log.warning("%s", text)
        if ctx.once:
            ctx.set_info(failure=f"stopped for the daily quota in phase {phase}; resumes where it left off",
                         phase=f"{phase} (quota)")
            return False
        ctx.blocked(f"Etsy daily quota spent; looking again in {wait_s:.0f} s")
        if not ctx.sleep(wait_s):
            return False
        ctx.unblocked()
        self.client.quota.forget()
        return True

    @retry_on_busy
    def _open_pass(self) -> dict | None:
        conn = self.conn
        bands = units.load_band_config(self.root.db_dir / self.s.band_config)
        with transaction(conn):
            state = get_state(conn, PASS_KEY)
            now = time.time()
            if state is not None and state.get("finished_at"):
                if now - state["finished_at"] < self.s.min_pass_interval_s:
                    self.pass_no = state["pass_no"]
                    return None
                state = None
            if state is None:
                prev = get_state(conn, PASS_KEY) or {}
                state = {"pass_no": int(prev.get("pass_no", 0)) + 1, "started_at": now,
                         "finished_at": None, "done": []}
                units.reset_for_pass(conn, state["pass_no"])
                units.sync_units_with_config(conn, bands, state["pass_no"])
                put_state(conn, PASS_KEY, state)
                self.ctx.log.info("pass %d started", state["pass_no"])
            else:
                # the same pass goes on; a band config edited meanwhile takes effect now
                units.sync_units_with_config(conn, bands, state["pass_no"])
                self.ctx.log.info("pass %d resumed (done: %s)", state["pass_no"],
                                  ", ".join(state["done"]) or "nothing yet")
        self.pass_no = state["pass_no"]
        self.pass_started = state.get("started_at")
        return state

    @retry_on_busy
    def _phase_done(self, phase: str) -> dict:
        with transaction(self.conn):
            state = get_state(self.conn, PASS_KEY)
            if phase not in state["done"]:
                state["done"].append(phase)
            put_state(self.conn, PASS_KEY, state)
        return state

    @retry_on_busy
    def _finish_pass(self) -> None:
        with transaction(self.conn):
            state = get_state(self.conn, PASS_KEY)
            state["finished_at"] = time.time()
            put_state(self.conn, PASS_KEY, state)

    @retry_on_busy
    def _remember_limit(self) -> None:
        limit = self.client.quota.limit_per_day
        if limit is None:
            return
        with transaction(self.conn):
            put_state(self.conn, LIMIT_KEY, limit)

    def _crew(self, next_item, work, describe, threads: int | None = None) -> PhaseResult:
        self.crew = Crew(self.ctx, threads or self.s.threads)
        try:
            self.crew.run(next_item, work, lambda: open_db(self.root), describe)
        finally:
            crew, self.crew = self.crew, None
        return PhaseResult(ok=not crew.failures, stopped=crew.halt.is_set() and crew.quota is None
                           and crew.fatal is None, quota=crew.quota, fatal=crew.fatal,
                           failures=crew.failures)

    # ---- taxonomy ----------------------------------------------------------------------------
    def phase_taxonomy(self) -> PhaseResult:
        result = PhaseResult()

        def work(_item, conn):
            tree = self.client.taxonomy_nodes()
            nodes = store.find_subtree(tree, self.s.root_taxonomy_id)
            if not nodes:
                raise ClientError(f"taxonomy {self.s.root_taxonomy_id} is not in Etsy's seller taxonomy")

            @retry_on_busy
            def write():
                with transaction(conn):
                    store.write_taxonomy(conn, nodes, time.time())

            write()
            self.ctx.set_counter("taxonomy_nodes", len(nodes))

        items = iter([1])
        result = self._crew(lambda _conn: next(items, None), work, lambda _: "taxonomy", threads=1)
        return result

    # ---- listings ------------------------------------------------------------------------------
    def phase_listings(self) -> PhaseResult:
        self._skip, self._claimed = set(), set()

        def next_item(conn):
            with self._skip_lock:
                unit = units.next_unit(conn, self._skip | self._claimed)
                if unit is not None:
                    self._claimed.add(unit.unit_id)
                return unit

        def work(unit, conn):
            try:
                self.crawl_unit(unit, conn)
            except Exception:
                with self._skip_lock:
                    self._skip.add(unit.unit_id)  # not again in this run; its cursor stays
                raise
            finally:
                with self._skip_lock:
                    self._claimed.discard(unit.unit_id)

        result = self._crew(next_item, work, lambda u: f"unit {u.label()}")
        if result.ok and not result.stopped and result.quota is None:
            self._record_root_count()
        return result

    @retry_on_busy
    def _record_root_count(self) -> None:
        root = self.s.root_taxonomy_id
        with transaction(self.conn):
            total = self.conn.execute(
                "SELECT SUM(total_count) FROM crawl_units WHERE taxonomy_id = ? AND exhausted = ?",
                (root, units.DONE)).fetchone()[0]
            self.conn.execute("INSERT INTO taxonomy_dynamic(taxonomy_id, snapshot_timestamp, listing_count) "
                              "VALUES (?, ?, ?)", (root, time.time(), total or 0))

    def crawl_unit(self, unit: units.Unit, conn) -> None:
        ctx, s, client = self.ctx, self.s, self.client
        offset = unit.next_offset                 # the end of the last page read
        tail = paging.load_tail(conn, unit.unit_id, offset)
        seen = set(tail)                          # stored by this crawl of the unit
        looked_back, extra = 0, 0                 # extra: the last shift seen, added to the overlap
        while True:
            overlap = min(s.page_overlap + extra, s.page_size // 2) if s.page_overlap else 0
            ask = paging.ask_offset(offset, overlap, s.page_size - overlap, looked_back)
            ctx.set_current(f"{unit.label()} @ {ask}")
            client.quota.require(2, "/listings/active")  # the page and its batch call, or neither
            page = client.find_active(unit.taxonomy_id, unit.min_price, unit.max_price, ask, s.page_size)
            count = page["count"]
            if count > s.max_results:
                if self._split(conn, unit, count):
                    return
                if ask == 0:
                    ctx.log.warning("%s holds %d listings at one price: only the first %d are reachable",
                                    unit.label(), count, s.max_results + s.page_size)
                    ctx.progress(1, counter="unreachable_units")
            ids = paging.page_ids(page["results"])
            if ask > 0 and not paging.continues(ids, tail):
                # more listings ended since the last page than the overlap covers: look back
                looked_back += 1
                ctx.log.info("%s @ %d: none of the last page's listings on this one (listings ended "
                             "meanwhile); looking %d page(s) back", unit.label(), ask, looked_back)
                ctx.progress(1, counter="paging_lookbacks")
                continue
            if tail:
                extra = paging.shift(ids, tail, ask, offset)
            looked_back = 0
            items, bad = [], 0
            for item in page["results"]:
                problem = listing_problem(item)
                if problem:
                    bad += 1
                    ctx.log.warning("skipped a listing (request %s): %s", client.last_request_id,
                                    client.redact(problem))
                elif item["listing_id"] not in seen:
                    items.append(item)
            with_images = self._fetch_batch(conn, items)
            next_offset = ask + len(page["results"])
            finished = (len(page["results"]) < s.page_size or next_offset >= count
                        or next_offset - overlap > s.max_results)
            tail = paging.new_tail(ids, s.page_overlap)
            new_images = self._write_page(conn, unit, items, with_images, next_offset, count, finished, tail)
            seen.update(ids)
            ctx.progress(1, counter="done", current=f"{unit.label()} @ {ask}")
            ctx.progress(1, counter="pages")
            ctx.progress(len(items), counter="listings")
            ctx.progress(new_images, counter="images_new")
            if bad:
                ctx.progress(bad, counter="invalid_items")
            self.publish(phase="listings", band=unit.label())
            if finished:
                ctx.progress(1, counter="units_done")
                return
            offset = next_offset
            if not self.crew.boundary():
                return

    def _fetch_batch(self, conn, items: list[dict]) -> dict[int, list[dict] | None]:
        """listing_id -> images (None: known, unchanged, not batched); puts the batch-only
        fields (views, production_partners) on ``items``. One batch call for the listings
        that are new, changed, or (``snapshot_views``) due a dynamic snapshot."""
        if not items:
            return {}
        skip = set() if self.s.batch_known_listings else store.known_unchanged(conn, items)
        if skip and self.s.snapshot_views:
            skip -= self._snapshot_due(conn, skip)
        stored = self._stored_partners(conn, skip)
        wanted = [it["listing_id"] for it in items if it["listing_id"] not in skip]
        out: dict[int, list[dict] | None] = {lid: None for lid in skip}
        found: dict[int, dict] = {}
        results, deleted = batch.fetch(self.client, wanted) if wanted else ([], [])
        wanted_set = set(wanted)
        for item in results:
            problem = listing_problem(item)
            if problem or item["listing_id"] not in wanted_set:
                self.ctx.log.warning("skipped a batch listing (request %s): %s", self.client.last_request_id,
                                     self.client.redact(problem or f"{item['listing_id']} was not asked for"))
                self.ctx.progress(1, counter="invalid_items")
                continue
            out[item["listing_id"]] = item.get("images") or []
            found[item["listing_id"]] = item
        for item in items:
            batch.merge_associations(item, found.get(item["listing_id"]), stored.get(item["listing_id"]))
        if deleted:
            self.ctx.log.info("%d listing(s) deleted before the batch call (404): %s", len(deleted),
                              ", ".join(map(str, deleted[:5])))
            self.ctx.progress(len(deleted), counter="gone")
        gone = [lid for lid in wanted if lid not in out and lid not in deleted]
        if gone:
            # sold or removed between the search and the batch call: nothing stored for them
            self.ctx.log.info("%d listing(s) vanished before the batch call (request %s): %s",
                              len(gone), self.client.last_request_id, ", ".join(map(str, gone[:5])))
            self.ctx.progress(len(gone), counter="vanished")
        return out

    def _snapshot_due(self, conn, ids: set[int]) -> set[int]:
        """Listings that get a dynamic snapshot with this page (or within the hour)."""
        limit = time.time() + 3600 - self.s.listing_refresh_s
        return {lid for lid, last in store._in(
            conn, "SELECT listing_id, last_dynamic_ts FROM listings_static WHERE listing_id IN ({ids})",
            sorted(ids)) if last is None or last <= limit}

    @staticmethod
    def _stored_partners(conn, ids: set[int]) -> dict[int, dict]:
        import json

        if not ids:
            return {}
        return {lid: {"production_partners": json.loads(value) if value else []}
                for lid, value in store._in(conn, "SELECT listing_id, production_partners FROM "
                                                  "listings_static WHERE listing_id IN ({ids})", sorted(ids))}

    def _write_page(self, conn, unit, items, with_images, next_offset, count, finished, tail) -> int:
        s = self.s

        @retry_on_busy
        def write() -> int:
            now = time.time()
            with transaction(conn):
                _, new_images = store.write_listings(conn, items, with_images, now,
                                                     s.listing_refresh_s, s.url_field)
                units.advance(conn, unit, next_offset, count, finished)
                paging.save_tail(conn, unit.unit_id, tail, finished)
            return new_images

        return write()

    def _split(self, conn, unit: units.Unit, count: int) -> bool:
        @retry_on_busy
        def write():
            with transaction(conn):
                return units.split_unit(conn, unit, count, self.pass_no)

        halves = write()
        if halves is None:
            return False
        self.ctx.log.info("%s holds %d listings (> %d): split at $%.2f", unit.label(), count,
                          self.s.max_results, halves[0][1] / 100)
        self.ctx.progress(1, counter="units_split")
        return True

    # ---- shops -------------------------------------------------------------------------------
    def phase_shops(self) -> PhaseResult:
        now = time.time()
        s = self.s
        new_clause = "last_dynamic_ts IS NULL OR " if s.fetch_new_shops else ""
        ids = [r[0] for r in self.conn.execute(
            f"SELECT shop_id FROM shops_static WHERE {new_clause}"
            f"(last_activity_ts >= ? AND last_dynamic_ts IS NOT NULL AND last_dynamic_ts < ?) "
            f"ORDER BY shop_id", (now - s.shop_active_s, now - s.shop_refresh_s))]
        self.ctx.set_info(shops_to_fetch=len(ids))
        queue = iter(ids)
        lock = threading.Lock()

        def next_item(_conn):
            with lock:
                return next(queue, None)

        def work(shop_id, conn):
            self.ctx.set_current(f"shop {shop_id}")
            try:
                shop = self.client.shop(shop_id)
            except ClientError as exc:
                if exc.status != 404 or isinstance(exc, AuthError):
                    raise
                self.ctx.log.info("shop %s: gone (request %s)", shop_id, exc.request_id)
                shop = None

            @retry_on_busy
            def write():
                with transaction(conn):
                    if shop is None:
                        store.mark_shop_gone(conn, shop_id, time.time())
                    else:
                        store.write_shop(conn, shop, time.time())

            write()
            self.ctx.progress(1, counter="shops")
            self.ctx.progress(1, counter="done")
            self.publish(phase="shops")

        return self._crew(next_item, work, lambda sid: f"shop {sid}")
