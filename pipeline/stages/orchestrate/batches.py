"""Batches and their leases: forming a batch from the downloaded queue for the worker the
scheduler picks (a partial one only with --once or once a flush is asked for), shipping it,
and giving its images back when its lease expires or its worker fails (a poll renews a lease:
workers.py). A mixin of core.Orchestrator: the methods use its workers, flights, ledger,
settings and totals."""
from __future__ import annotations

import time

from pipeline.core import db as dbm
from pipeline.core.fsutil import read_json_or_none
from pipeline.stages.orchestrate import ledger as lg
from pipeline.stages.orchestrate import scheduler
from pipeline.stages.orchestrate.files import flush_path
from pipeline.stages.orchestrate.links import ShipOrder
from pipeline.stages.orchestrate.state import Flight, Worker, _named


class BatchesMixin:
    # ---- shipping -----------------------------------------------------------------------
    def _ship(self, w: Worker, f: Flight) -> None:
        rows = self.ledger.manifest(f.row.batch_id)
        if rows is None:     # cannot happen (written in the creating transaction)
            self._give_back(f, lg.EXPIRED, "manifest missing", count_attempt=False)
            return
        f.shipping = True
        w.link.submit("ship", f.name, order=ShipOrder(f.row.batch_id, f.name, rows))

    def _mark_shipped(self, f: Flight) -> None:
        lease = time.time() + self.settings.lease_s
        self.ledger.mark_shipped(f.row.batch_id, lease)
        if f.row.state == lg.PREPARED:
            f.row.state = lg.SHIPPED
        f.row.lease_expires = lease
        f.shipped_t = f.last_seen = time.time()

    def _fail_missing_files(self, batch_id: int) -> None:
        keys = self.ledger.batch_images(batch_id, (dbm.DOWNLOADED,))
        missing = [k for k in keys if not (self.root.download_dir / f"{k[0]}_{k[1]}.jpg").is_file()]
        if missing:
            n = self.ledger.fail_images(missing, "downloaded file is missing")
            self.totals["failed_images"] += n

    # ---- leases -------------------------------------------------------------------------
    def _give_back(self, f: Flight, state: str, reason: str, count_attempt: bool = True) -> None:
        requeued, failed = self.ledger.give_back(f.row.batch_id, state, reason, count_attempt)
        self.flights.pop(f.row.batch_id, None)
        if f.row.batch_id in self.pending_imports:
            self.pending_imports.remove(f.row.batch_id)
        f.row.state = state
        self.totals["expired"] += 1
        self.totals["failed_images"] += failed
        if self.report is not None:
            self.report.set_counter("expired", self.totals["expired"])
        self.log.warning("batch %s %s: %d image(s) back to the queue%s (%s)", f.name, state,
                         requeued, f", {failed} failed after {self.settings.max_attempts} tries"
                         if failed else "", reason)
        if state == lg.FAILED:
            self.ledger.drop_manifest(f.row.batch_id)

    def _give_back_all(self, w: Worker, reason: str) -> None:
        for f in list(self._flights_of(w.name)):
            if f.row.state in (lg.PREPARED, lg.SHIPPED, lg.RUNNING) and not f.result_path:
                self._give_back(f, lg.EXPIRED, _named(w.name, reason), count_attempt=False)

    def _expire_leases(self) -> None:
        now = time.time()
        for f in list(self.flights.values()):
            if f.row.state in (lg.SHIPPED, lg.RUNNING) and not f.result_path and not f.fetching \
                    and f.row.lease_expires and f.row.lease_expires < now:
                w = self.workers[f.row.worker]
                self._give_back(f, lg.EXPIRED, f"lease expired: {w.name} not seen holding it "
                                               f"for {now - f.last_seen:.0f} s")
                if w.link.usable:
                    w.link.submit("drop", f.name)

    # ---- forming batches ------------------------------------------------------------------
    def _work_waiting(self) -> bool:
        n = self.ledger.downloaded()
        return n >= self.settings.batch_size or (n > 0 and self._partial_ok(n))

    def _partial_ok(self, downloaded: int) -> bool:
        if self.once:
            return True
        self._check_flush()
        if not self.flush_requested:
            return False
        if self.last_downloaded != downloaded:
            self.last_downloaded = downloaded
            self.downloaded_changed_at = time.monotonic()
        settled = time.monotonic() - self.downloaded_changed_at >= self.settings.flush_settle_s
        return settled or not self._download_live()

    def _check_flush(self) -> None:
        if self.flush_requested:
            return
        req = read_json_or_none(flush_path(self.root))
        if req is None:
            return
        at = float(req.get("at") or 0) if isinstance(req, dict) else 0.0
        if time.time() - at > self.settings.flush_max_age_s:
            return
        self.flush_requested = True
        self.log.info("flush requested: partial batches allowed from now on")

    def _download_live(self) -> bool:
        checked_at, live = self._download_live_checked
        if time.monotonic() - checked_at < 1.0:
            return live
        from pipeline.core.stage_observe import is_live, stage_status

        try:
            live = is_live(stage_status(self.root, "download"))
        except Exception:
            live = False
        self._download_live_checked = (time.monotonic(), live)
        return live

    def _form_batches(self) -> None:
        s = self.settings
        now = time.time()
        avail = self.ledger.downloaded()
        for _ in range(64):             # bounded: a turn never monopolises the loop
            if avail <= 0 or (avail < s.batch_size and not self._partial_ok(avail)):
                return
            candidates = []
            for w in self.workers.values():
                if not self._eligible(w, now):
                    continue
                flights = [f for f in self._flights_of(w.name) if not f.reclaim]
                # a Ray worker runs one batch per actor at a time: the target is per actor
                target = scheduler.target_in_flight(w.throughput, s.batch_size, s.poll_s,
                                                    s.min_in_flight, s.max_in_flight) * w.link.parallel
                if len(flights) < target:
                    candidates.append((w.name, sum(f.row.n_images for f in flights), w.throughput))
            name = scheduler.choose(candidates, s.batch_size, s.default_rate)
            if name is None:
                return
            keys = self.ledger.candidates(min(s.batch_size, avail))
            present = [k for k in keys if (self.root.download_dir / f"{k[0]}_{k[1]}.jpg").is_file()]
            if len(present) < len(keys):
                missing = sorted(set(keys) - set(present))
                n = self.ledger.fail_images(missing, "downloaded file is missing")
                self.totals["failed_images"] += n
                self.log.warning("%d downloaded image(s) have no file: marked failed", n)
            if not present:
                avail = self.ledger.downloaded()
                continue
            row = self.ledger.create_batch(name, present, self.ledger.texts(k[0] for k in present))
            if row is None:
                avail = self.ledger.downloaded()
                continue
            f = Flight(row, last_seen=time.time())
            self.flights[row.batch_id] = f
            self.log.info("batch %s: %d images for %s", row.name, row.n_images, name)
            self._ship(self.workers[name], f)
            avail -= row.n_images
