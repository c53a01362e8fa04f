"""The orchestrator's main loop: the one place that decides, and the only DB and index
writer of the stage. Worker I/O happens in the links' threads (links.py); here we turn
their news into lease changes, imports and the next batches.

A loop turn: take the links' events (host states, shipments, fetched results, errors),
import what has arrived, expire leases, make sure each needed worker stage is running, form
and send new batches, publish the state in the heartbeat. Leases and manifests live in the
DB and the spool, so a restart (after a crash or a kill) picks up every batch where it was.
"""
from __future__ import annotations

import logging
import os
import queue
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.core import db as dbm
from pipeline.batches.batchfile import STATUS_REJECTED, ResultError
from pipeline.core.fsutil import read_json_or_none
from pipeline.stages.orchestrate import intake, scheduler
from pipeline.stages.orchestrate import ledger as lg
from pipeline.core.hosts import make_transport, worker_hosts
from pipeline.stages.orchestrate.links import (CONNECTING, ERROR, OK, UNREACHABLE, Event, ShipOrder,
                                         WorkerLink)
from pipeline.stages.orchestrate.settings import OrchestrateSettings

FLUSH_FILE = "orchestrate.flush"          # under run/: the runner's drain asks for the last batch
SPOOL = "orchestrate"                     # run/orchestrate/: manifests, tars in transit, results
STARTED_FILE = "started.json"             # the workers this orchestrator started (to stop them)


def flush_path(root) -> Path:
    return root.run_dir / FLUSH_FILE


def spool_dir(root) -> Path:
    return root.run_dir / SPOOL


@dataclass
class Flight:
    """An active batch as the loop knows it (the DB row is the truth after a restart)."""
    row: lg.BatchRow
    last_seen: float = 0.0
    shipped_t: float = 0.0        # wall time the shipment was confirmed (polls before it do not count)
    missing: int = 0
    shipping: bool = False
    fetching: bool = False
    fetch_failures: int = 0
    result_path: str | None = None
    reclaim: bool = False         # a late result of an expired batch

    @property
    def name(self) -> str:
        return self.row.name


@dataclass
class Worker:
    name: str
    host: object
    link: WorkerLink
    throughput: scheduler.Throughput = field(default_factory=scheduler.Throughput)
    polled: dict | None = None
    polled_at: float | None = None
    alive: bool = False
    pid: int | None = None
    in_hand: str | None = None
    kill_file: bool = False
    error: str | None = None          # worker-level (bad result, cannot start): no new batches
    error_until: float = 0.0
    started_by_us: bool = False
    last_start: float = 0.0
    starting: bool = False
    imported_batches: int = 0
    imported_images: int = 0

    def in_error(self, now: float) -> bool:
        return self.error is not None and now < self.error_until


class Orchestrator:
    def __init__(self, root, conn, settings: OrchestrateSettings, log: logging.Logger | None = None,
                 once: bool = False, checkpoint=lambda: True, report=None, store=None):
        self.root = root
        self.conn = conn
        self.settings = settings
        self.log = log or logging.getLogger("imageselector.orchestrate")
        self.once = once
        self.checkpoint = checkpoint
        self.report = report          # StageContext-like: progress, set_info, blocked, unblocked
        self.store = store
        self.events: queue.Queue[Event] = queue.Queue()
        self.workers: dict[str, Worker] = {}
        self.flights: dict[int, Flight] = {}
        self.pending_imports: list[int] = []
        self.exit_code = 0
        self.failure: str | None = None
        self.flush_requested = False
        self.last_downloaded: int | None = None
        self.downloaded_changed_at = time.monotonic()
        self._download_live_checked = (0.0, True)
        self.totals = {"batches": 0, "images": 0, "expired": 0, "refused": 0, "failed_images": 0}

    # ====================================================================================
    # start-up
    # ====================================================================================
    def setup(self) -> None:
        s = self.settings
        self.spool = spool_dir(self.root)
        self.spool.mkdir(parents=True, exist_ok=True)
        self._tidy_spool()
        intake.tidy_placing(self.root.bgremoved_dir)
        token = lg.get_token(self.conn)
        self.ledger = lg.Ledger(self.conn, token, self.spool / "manifests", s.max_attempts)
        if self.store is None:
            from pipeline.index import open_store

            self.store = open_store(self.root, self.conn)   # recovers a killed import
        hosts, workers = worker_hosts(self.root, s.implicit_local_worker)
        for host in workers:
            transport = make_transport(self.root, hosts, host)
            mode = "direct" if host.local and s.local_direct else "tar"
            link = WorkerLink(host.name, transport, mode, self.spool, self.root.download_dir,
                              self.events, s.poll_s, s.error_retry_s, self.log, token)
            self.workers[host.name] = Worker(host.name, host, link)
        for name in (read_json_or_none(self.spool / STARTED_FILE) or []):
            if name in self.workers:
                self.workers[name].started_by_us = True
        self._recover()
        for w in self.workers.values():
            w.link.start()
        self.log.info("orchestrating %d worker(s): %s; batch size %d%s", len(self.workers),
                      ", ".join(w.host.describe() for w in self.workers.values()), s.batch_size,
                      " (once)" if self.once else "")

    def _save_started(self) -> None:
        from pipeline.core.fsutil import atomic_write_json

        atomic_write_json(self.spool / STARTED_FILE,
                          sorted(w.name for w in self.workers.values() if w.started_by_us))

    def _tidy_spool(self) -> None:
        """Tars of shipments and downloads a killed run left half-made."""
        for sub in ("out", "in"):
            d = self.spool / sub
            if not d.is_dir():
                continue
            for p in d.iterdir():
                if p.name.startswith(".") or p.suffix in (".tar", ".part"):
                    if p.is_dir():
                        shutil.rmtree(p, ignore_errors=True)
                    else:
                        p.unlink(missing_ok=True)

    def _recover(self) -> None:
        """Leases from the DB: every active batch is followed again; the workers' state
        (asked at each link's first poll) says where each one is."""
        now = time.time()
        for row in self.ledger.active():
            if row.worker not in self.workers:
                req, failed = self.ledger.give_back(row.batch_id, lg.EXPIRED,
                                                    f"worker {row.worker} is no longer in hosts.toml",
                                                    count_attempt=False)
                self.log.warning("batch %s: worker %s is gone from hosts.toml: %d images back",
                                 row.name, row.worker, req)
                continue
            flight = Flight(row, last_seen=now, shipped_t=row.shipped_at or 0.0)
            self.flights[row.batch_id] = flight
            local = self.spool / "in" / row.name
            if (local / "result.json").is_file():
                flight.result_path = str(local)
                self.pending_imports.append(row.batch_id)
        if self.flights:
            self.log.info("recovered %d active batch(es) from the DB: %s", len(self.flights),
                          ", ".join(f"{f.name} ({f.row.state} on {f.row.worker})"
                                    for f in self.flights.values()))
        # imported batches whose result we still hold here: finish them
        in_dir = self.spool / "in"
        if in_dir.is_dir():
            for p in in_dir.iterdir():
                row = self.ledger.by_name(p.name) if p.is_dir() else None
                if row is not None and row.state == lg.IMPORTED:
                    self._finish_imported(row, Path(p))

    # ====================================================================================
    # the loop
    # ====================================================================================
    def run(self) -> int:
        self.setup()
        try:
            while self.checkpoint():
                self._pump(self.settings.tick_s)
                self._import_ready()
                self._expire_leases()
                self._manage_workers()
                self._form_batches()
                self._publish()
                if self.once and self._once_done():
                    break
        finally:
            self.shutdown()
        return self.exit_code

    def _pump(self, timeout: float) -> None:
        try:
            event = self.events.get(timeout=timeout)
        except queue.Empty:
            return
        while True:
            try:
                self._handle(event)
            except Exception:
                self.log.exception("event %s from %s", event.kind, event.worker)
                raise
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                return

    # ---- events -----------------------------------------------------------------------
    def _handle(self, ev: Event) -> None:
        w = self.workers[ev.worker]
        d = ev.data
        if ev.kind == "polled":
            self._on_polled(w, d["state"], d["asked_at"])
        elif ev.kind == "shipped":
            f = self.flights.get(d["batch_id"])
            w.throughput.add_ship(d["seconds"])
            if f is not None:
                f.shipping = False
                self._mark_shipped(f)
                self.log.info("batch %s (%d images) shipped to %s in %.1f s", f.name,
                              f.row.n_images, w.name, d["seconds"])
        elif ev.kind == "ship_failed":
            f = self.flights.get(d["batch_id"])
            if f is not None and f.row.state == lg.PREPARED:
                self._give_back(f, lg.EXPIRED, f"could not ship to {w.name}: {d['error']}",
                                count_attempt=False)
                self._fail_missing_files(d["batch_id"])
        elif ev.kind == "fetched":
            f = self._flight_by_name(d["name"])
            if f is not None:
                f.result_path = d["path"]
                if f.row.batch_id not in self.pending_imports:
                    self.pending_imports.append(f.row.batch_id)
        elif ev.kind == "fetch_failed":
            f = self._flight_by_name(d["name"])
            if f is not None:
                f.fetching = False
                if d.get("bad_result"):
                    f.fetch_failures += 1
                    if f.fetch_failures >= 3:
                        self._refuse(f, w, f"result of {f.name} cannot be fetched: {d['error']}",
                                     worker_error=True)
        elif ev.kind == "started":
            w.starting = False
            if not d.get("already") and not w.started_by_us:
                w.started_by_us = True
                self._save_started()
        elif ev.kind == "start_failed":
            w.starting = False
            self._worker_error(w, d["error"])
        elif ev.kind == "link_error":
            self.log.warning("%s", _named(w.name, d["error"]))
            for f in list(self._flights_of(w.name)):
                f.fetching = False
                if f.reclaim and not f.result_path:
                    self.flights.pop(f.row.batch_id, None)   # found again at the next poll
                elif f.row.state == lg.PREPARED and not f.shipping:
                    # recovered from the DB but not sent: do not hold its images for this host
                    self._give_back(f, lg.EXPIRED, f"not shipped: {w.name} is down ({d['error']})",
                                    count_attempt=False)
            if d.get("permanent"):
                self._give_back_all(w, d["error"])
        elif ev.kind == "stopped_worker":
            w.started_by_us = False
            self._save_started()
        elif ev.kind in ("cleaned", "dropped", "kill_cleared"):
            pass

    def _flight_by_name(self, name: str) -> Flight | None:
        parsed = lg.parse_name(name)
        f = self.flights.get(parsed[0]) if parsed else None
        return f if f is not None and f.name == name else None

    def _flights_of(self, worker: str) -> list[Flight]:
        return [f for f in self.flights.values() if f.row.worker == worker]

    def _on_polled(self, w: Worker, st: dict, asked_at: float) -> None:
        now = time.time()
        s = self.settings
        w.polled, w.polled_at = st, now
        hb = st.get("heartbeat") or {}
        host_now = float(st.get("now") or now)
        w.alive = bool(hb) and hb.get("state") != "stopped" and \
            host_now - float(hb.get("heartbeat") or 0) <= s.stale_after_s
        w.pid = hb.get("pid") if w.alive else None
        w.in_hand = (hb.get("info") or {}).get("batch") if w.alive else None
        w.kill_file = bool(st.get("kill_file"))
        if w.alive:
            w.starting = False
        last_exit = hb.get("exit") or {}
        if not w.alive and last_exit.get("outcome") == "failed" and w.last_start and \
                float(last_exit.get("at") or 0) >= host_now - (now - w.last_start) - 1 and \
                not w.in_error(now):
            self._worker_error(w, f"{w.name}: the worker stage failed: {last_exit.get('reason')}")
        inbox, outbox = set(st.get("inbox", [])), set(st.get("outbox", []))
        transit = set(st.get("partial", [])) | set(st.get("incoming", []))
        mine = set()
        for f in self._flights_of(w.name):
            mine.add(f.name)
            self._follow(w, f, inbox, outbox, transit, asked_at, now)
        for name in sorted((inbox | outbox | transit | set(st.get("results", []))) - mine):
            self._stranger(w, name, name in outbox, name in inbox, name == w.in_hand)

    def _follow(self, w: Worker, f: Flight, inbox, outbox, transit, asked_at, now) -> None:
        s = self.settings
        name = f.name
        if f.reclaim:
            if name in outbox and not f.fetching and not f.result_path:
                f.fetching = True
                w.link.submit("fetch", name)
            return
        if f.row.state == lg.PREPARED:
            if not f.shipping and (name in inbox or name in outbox):
                self._mark_shipped(f)          # shipped before a restart
            elif not f.shipping and w.link.usable:
                self._ship(w, f)               # recovered: send it (again)
            return
        if f.result_path:
            return
        held = name in outbox or (w.alive and (name in inbox or name == w.in_hand))
        if held:
            f.last_seen, f.missing = now, 0
            lease = now + s.lease_s
            if (f.row.lease_expires or 0) - now < s.lease_s / 2:
                self.ledger.renew(f.row.batch_id, lease)
                f.row.lease_expires = lease
            if name == w.in_hand and f.row.state == lg.SHIPPED:
                if self.ledger.set_state(f.row.batch_id, lg.RUNNING, only_from=(lg.SHIPPED,)):
                    f.row.state = lg.RUNNING
        elif name in inbox or name in transit or name == w.in_hand:
            f.missing = 0                      # there, but nobody works on it: the lease runs
        elif f.shipped_t and asked_at > f.shipped_t:
            f.missing += 1
            if f.missing >= s.lost_after_polls:
                self._give_back(f, lg.EXPIRED, f"batch vanished from {w.name} (not in its inbox, "
                                               f"in hand or outbox for {f.missing} polls)")
                return
        if name in outbox and not f.fetching:
            f.fetching = True
            w.link.submit("fetch", name)

    def _stranger(self, w: Worker, name: str, in_outbox: bool, in_inbox: bool, in_hand: bool) -> None:
        """A batch on the host that is not in flight: a late result, or leftovers."""
        parsed = lg.parse_name(name)
        if parsed is None or parsed[1] != self.ledger.token:
            return                            # not ours (another root uses this worker)
        row = self.ledger.by_name(name)
        if row is not None and row.state == lg.EXPIRED and in_outbox and \
                self.ledger.manifest(row.batch_id) is not None and row.worker == w.name:
            f = Flight(row, last_seen=time.time(), reclaim=True, fetching=True)
            self.flights[row.batch_id] = f
            self.log.info("late result of expired batch %s on %s: fetching it", name, w.name)
            w.link.submit("fetch", name)
            return
        if row is not None and row.state == lg.IMPORTED:
            self._finish_imported(row, None)   # a result seen again after its import
            return
        if in_inbox and not in_outbox:
            if not in_hand:
                w.link.submit("drop", name)
        else:
            w.link.submit("cleanup", name, inbox=not in_hand)

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

    # ---- results ------------------------------------------------------------------------
    def _import_ready(self) -> None:
        while self.pending_imports:
            if not self.checkpoint():
                return
            batch_id = self.pending_imports.pop(0)
            f = self.flights.get(batch_id)
            if f is not None and f.result_path:
                self._intake(f)

    def _intake(self, f: Flight) -> None:
        w = self.workers.get(f.row.worker)
        path = Path(f.result_path)
        manifest = self.ledger.manifest(f.row.batch_id)
        try:
            result = intake.verify(path, manifest)
        except ResultError as exc:
            self._refuse(f, w, f"{w.name if w else f.row.worker}: {exc}", worker_error=True)
            return
        if result.status == STATUS_REJECTED:
            self._refuse(f, w, f"{f.row.worker} rejected batch {f.name}: {result.reason}",
                         worker_error=False)
            return
        expected = self.store.fingerprint
        if not result.fingerprint or (expected and result.fingerprint != expected):
            self._refuse(f, w, f"{f.row.worker}: result of {f.name} was made with model "
                               f"fingerprint {result.fingerprint}, the index holds {expected} "
                               f"(other models or weights); refused", worker_error=True)
            return
        batch_id = f.row.batch_id
        if f.reclaim:
            taken = self.ledger.reclaim(batch_id, result.ids)
            self.log.info("late result %s: %d of %d images still free, importing those",
                          f.name, taken, len(result.ids))
            if not taken:
                self._finish_imported(f.row, path, drop=True)
                self.flights.pop(batch_id, None)
                return
        else:
            failed = [(int(x["listing_id"]), int(x["image_id"])) for x in result.failed]
            for x in result.failed:
                n = self.ledger.fail_images([(int(x["listing_id"]), int(x["image_id"]))],
                                            f"worker {f.row.worker}: {x.get('reason')}"[:500],
                                            expect=dbm.BATCHED, batch_id=batch_id)
                self.totals["failed_images"] += n
            if failed:
                self.log.warning("batch %s: %d image(s) failed on %s", f.name, len(failed), f.row.worker)
            self.ledger.set_state(batch_id, lg.RETURNED)
        f.row.state = lg.RETURNED
        intake.place_images(result, self.root.bgremoved_dir)
        from pipeline.index import BatchRejected

        t0 = time.perf_counter()
        try:
            res = intake.import_vectors(self.store, self.conn, batch_id, result)
        except BatchRejected as exc:
            intake.remove_placed(result, self.root.bgremoved_dir)
            self._refuse(f, w, f"{f.row.worker}: result of {f.name} refused by the index: {exc}",
                         worker_error=True)
            return
        if not res.imported:
            self.ledger.mark_imported_if_done(batch_id)
        took = time.perf_counter() - t0
        if w is not None:
            w.throughput.add_rate(intake.result_rate(result))
            w.imported_batches += 1
            w.imported_images += res.imported
        self.totals["batches"] += 1
        self.totals["images"] += res.imported
        if self.report is not None:
            self.report.progress(res.imported, counter="done")
            self.report.progress(1, counter="batches")
        self.log.info("batch %s from %s imported: %d images%s in %.2f s", f.name, f.row.worker,
                      res.imported, f", {len(res.skipped)} skipped" if res.skipped else "", took)
        self.flights.pop(batch_id, None)
        f.row.state = lg.IMPORTED
        self._finish_imported(f.row, path)

    def _finish_imported(self, row: lg.BatchRow, path: Path | None, drop: bool = False) -> None:
        """After the import: raw downloads deleted, the result forgotten here and there."""
        if not drop:
            keys = self.ledger.batch_images(row.batch_id, (dbm.EMBEDDED, dbm.TARRED))
            intake.delete_downloads(self.root.download_dir, keys)
        local = self.spool / "in" / row.name
        if local.is_dir():
            shutil.rmtree(local, ignore_errors=True)
        w = self.workers.get(row.worker)
        if w is not None:
            w.link.submit("cleanup", row.name, inbox=True)
        if row.state in (lg.IMPORTED, lg.FAILED):
            self.ledger.drop_manifest(row.batch_id)

    def _refuse(self, f: Flight, w: Worker | None, reason: str, worker_error: bool) -> None:
        self.log.error("%s", reason)
        if f.reclaim:
            self.flights.pop(f.row.batch_id, None)
        else:
            self._give_back(f, lg.FAILED, reason)
        self.totals["refused"] += 1
        if self.report is not None:
            self.report.set_counter("refused", self.totals["refused"])
        local = self.spool / "in" / f.name
        if local.is_dir():
            shutil.rmtree(local, ignore_errors=True)
        if w is not None:
            w.link.submit("cleanup", f.name, inbox=True)
            if worker_error:
                self._worker_error(w, reason)

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

    def _worker_error(self, w: Worker, reason: str) -> None:
        w.error, w.error_until = reason, time.time() + self.settings.error_retry_s
        self._give_back_all(w, reason)

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

    # ---- workers ------------------------------------------------------------------------
    def _manage_workers(self) -> None:
        s = self.settings
        now = time.time()
        work = self._work_waiting()
        for w in self.workers.values():
            if w.error and not w.in_error(now):
                self.log.info("%s: retrying after its error (%s)", w.name, w.error)
                w.error = None
            if not s.start_workers or w.link.state != OK or w.polled is None or w.alive:
                continue
            if w.in_error(now) or w.starting:
                continue
            needed = work or any(f.row.state != lg.RETURNED for f in self._flights_of(w.name))
            if not needed or now - w.last_start < s.worker_start_retry_s:
                continue
            w.last_start = now
            if w.kill_file:
                w.link.submit("clear_kill")      # only a KILL_WORKER we wrote ourselves
            self.log.info("%s: worker stage not running: starting it", w.name)
            w.starting = True
            w.link.submit("start")

    def _work_waiting(self) -> bool:
        n = self.ledger.downloaded()
        return n >= self.settings.batch_size or (n > 0 and self._partial_ok(n))

    def _eligible(self, w: Worker, now: float) -> bool:
        if w.link.state != OK or w.polled is None or w.in_error(now):
            return False
        if w.kill_file and w.alive:
            return False                      # its worker is stopping
        return w.alive or w.starting or self.settings.start_workers

    # ---- forming batches ------------------------------------------------------------------
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
        from pipeline.core.stage import is_live, stage_status

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
                target = scheduler.target_in_flight(w.throughput, s.batch_size, s.poll_s,
                                                    s.min_in_flight, s.max_in_flight)
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

    # ---- --once ----------------------------------------------------------------------------
    def _once_done(self) -> bool:
        if self.flights or self.pending_imports:
            return False
        if any(w.link.state == CONNECTING or (w.link.state == OK and w.polled is None)
               for w in self.workers.values()):
            return False                       # not every host has answered yet
        left = self.ledger.downloaded()
        if left == 0:
            return True
        now = time.time()
        if any(self._eligible(w, now) for w in self.workers.values()):
            return False
        # a host that dropped out recently may come back (SSH cut, reboot): wait a lease for it
        if any(w.link.state == UNREACHABLE and not w.in_error(now) and w.link.down_since
               and now - w.link.down_since < self.settings.lease_s for w in self.workers.values()):
            return False
        problems = "; ".join(_named(w.name, w.error or w.link.error or (
            "worker not running" if w.link.state == OK else w.link.state))
            for w in self.workers.values())
        self.failure = f"{left} downloaded image(s) left: no usable worker ({problems})"
        self.log.error("%s", self.failure)
        self.exit_code = 1
        return True

    # ---- state for status and the console --------------------------------------------------
    def worker_view(self, w: Worker, now: float) -> dict:
        flights = self._flights_of(w.name)
        if w.link.state == ERROR or w.in_error(now):
            state = "error"
        elif w.link.state == UNREACHABLE:
            state = "unreachable"
        elif w.link.state == CONNECTING:
            state = "connecting"
        else:
            state = "running" if w.alive else "stopped"
        return {"name": w.name, "host": w.host.describe(), "local": bool(w.host.local),
                "mode": w.link.mode, "state": state, "link": w.link.state, "pid": w.pid,
                "busy": w.in_hand is not None, "in_hand": w.in_hand, "starting": w.starting,
                "stopping": bool(w.kill_file and w.alive),
                "batches_in_flight": len(flights),
                "images_in_flight": sum(f.row.n_images for f in flights),
                "images_per_s": round(w.throughput.rate, 2) if w.throughput.rate else None,
                "ship_s": round(w.throughput.ship_s, 2) if w.throughput.ship_s is not None else None,
                "target_in_flight": scheduler.target_in_flight(
                    w.throughput, self.settings.batch_size, self.settings.poll_s,
                    self.settings.min_in_flight, self.settings.max_in_flight),
                "imported_batches": w.imported_batches, "imported_images": w.imported_images,
                "connects": getattr(getattr(w.link.transport, "conn", None), "connects", None),
                "last_error": w.error or w.link.error,
                "error_at": w.link.error_at if w.link.error else None,
                "polled_at": w.polled_at}

    def _publish(self) -> None:
        if self.report is None:
            return
        now = time.time()
        views = [self.worker_view(w, now) for w in self.workers.values()]
        self.report.set_info(workers=views, in_flight=len(self.flights),
                             flush=self.flush_requested, totals=dict(self.totals),
                             batch_size=self.settings.batch_size)
        usable = [v for v in views if v["state"] in ("running", "stopped", "connecting")]
        if not usable and self.workers:
            self.report.blocked("no usable worker: " + "; ".join(
                f"{v['name']} {v['state']}" + (f" ({v['last_error']})" if v['last_error'] else "")
                for v in views))
        else:
            self.report.unblocked()

    # ---- the end --------------------------------------------------------------------------
    def shutdown(self) -> None:
        s = self.settings
        if s.stop_workers:
            for w in self.workers.values():
                if w.started_by_us and w.link.usable:
                    self.log.info("%s: asking the worker this orchestrator started to stop", w.name)
                    w.link.submit("stop_worker")
        # let queued clean-ups and stop requests go out (bounded: a dead host is not waited for)
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline and any(
                w.link.usable and not w.link.idle() for w in self.workers.values()):
            time.sleep(0.05)
        for w in self.workers.values():
            w.link.stop()
        deadline = time.monotonic() + 15.0     # one wait for all: hung hosts do not add up
        for w in self.workers.values():
            if not w.link.join(max(0.0, deadline - time.monotonic())):
                self.log.warning("%s: link still busy at exit (a transfer is cut; it is "
                                 "redone next time)", w.name)
        try:
            # keep events that change the DB or the records (a shipment confirmed just now)
            while True:
                ev = self.events.get_nowait()
                if ev.kind in ("shipped", "ship_failed", "stopped_worker", "started"):
                    self._handle(ev)
        except queue.Empty:
            pass
        try:
            if self.ledger.downloaded() == 0:
                flush_path(self.root).unlink(missing_ok=True)
        except Exception:
            pass
        self._publish()
        if self.report is not None and self.failure:
            self.report.set_info(failure=self.failure)


def _named(worker: str, text: str) -> str:
    """Messages name their worker once."""
    return text if text.startswith(f"{worker}:") else f"{worker}: {text}"


def request_flush(root) -> Path:
    """Ask a running orchestrator to send the last partial batch (the runner's drain)."""
    from pipeline.core.fsutil import atomic_write_json

    root.run_dir.mkdir(parents=True, exist_ok=True)
    path = flush_path(root)
    atomic_write_json(path, {"at": time.time(), "pid": os.getpid()})
    return path
