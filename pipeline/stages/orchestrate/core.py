"""The orchestrator's main loop: the one place that decides, and the only DB and index
writer of the stage. Worker I/O happens in the links' threads (links.py); here we turn
their news into lease changes, imports and the next batches.

A loop turn: take the links' events (host states, shipments, fetched results, errors),
import what has arrived, expire leases, make sure each needed worker stage is running, form
and send new batches, publish the state in the heartbeat. Leases and manifests live in the
DB and the spool, so a restart (after a crash or a kill) picks up every batch where it was.

Orchestrator holds the loop's state and the turn (start-up and recovery, events, --once, the
published view, shutdown); its other jobs are mixins: workers.py (polls, starting the worker
stage), batches.py (forming, shipping, leases), results.py (importing results).
"""
from __future__ import annotations

import logging
import queue
import shutil
import time
from pathlib import Path

from pipeline.core.fsutil import read_json_or_none
from pipeline.core.hosts import make_transport, worker_hosts
from pipeline.stages.orchestrate import intake, scheduler
from pipeline.stages.orchestrate import ledger as lg
from pipeline.stages.orchestrate.batches import BatchesMixin
from pipeline.stages.orchestrate.files import STARTED_FILE, flush_path, spool_dir
from pipeline.stages.orchestrate.links import CONNECTING, ERROR, OK, UNREACHABLE, Event, WorkerLink
from pipeline.stages.orchestrate.ray_drain import RayDrainMixin
from pipeline.stages.orchestrate.results import ResultsMixin
from pipeline.stages.orchestrate.settings import OrchestrateSettings
from pipeline.stages.orchestrate.state import Flight, Worker, _named
from pipeline.stages.orchestrate.workers import WorkersMixin


class Orchestrator(WorkersMixin, BatchesMixin, ResultsMixin, RayDrainMixin):
    def __init__(self, root, conn, settings: OrchestrateSettings, log: logging.Logger | None = None,
                 once: bool = False, checkpoint=lambda: True, report=None, store=None,
                 floor=None):
        self.root = root
        self.conn = conn
        self.settings = settings
        self.log = log or logging.getLogger("imageselector.orchestrate")
        self.once = once
        self.checkpoint = checkpoint
        self.report = report          # StageContext-like: progress, set_info, blocked, unblocked
        self.store = store
        self.floor = floor            # pipeline.core.diskfloor.DiskFloor over the spool (None: none)
        self._disk_checked = (0.0, True)
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
        hosts, workers = worker_hosts(self.root, s.implicit_local_worker, include_ray=True)
        if sum(1 for h in workers if h.ray) > 1:
            from pipeline.core.errors import UserError

            raise UserError(f"{hosts.path}: one Ray worker at most (a process joins one Ray "
                            f"cluster); give it more actors instead")
        for host in workers:
            if host.ray:
                link = self._ray_link(host, token)
            else:
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

    def _ray_link(self, host, token: str):
        """A Ray worker: the actors get the models' configuration from this root."""
        from pipeline.models.batch_run import embedder_overrides
        from pipeline.stages.orchestrate.ray_link import RayLink

        s = self.settings
        return RayLink(host.name, host, self.spool, self.root.download_dir, self.events,
                       s.poll_s, s.error_retry_s, self.log, token,
                       embedder_overrides(self.root.config), self.root.profile, s.lease_s)

    def _tidy_spool(self) -> None:
        """Tars of shipments and downloads a killed run left half-made, and the temp files
        of manifests and spool records it was writing when it died."""
        from pipeline.core.fsutil import remove_write_leftovers

        for folder in (self.spool, self.spool / "manifests"):
            if folder.is_dir():
                remove_write_leftovers(folder)
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
                room = self._disk_room()    # below the floor: no import, no new batch
                if room:
                    self._import_ready()
                self._expire_leases()
                self._manage_workers()
                if room:
                    self._form_batches()
                self._publish()
                if self.once and self._once_done():
                    break
            else:
                self._drain_ray()       # a graceful stop: batches on Ray actors (ray_drain.py)
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
        elif ev.kind == "drained":
            self._on_drained(w, d)
        elif ev.kind in ("cleaned", "dropped", "kill_cleared"):
            pass

    def _flight_by_name(self, name: str) -> Flight | None:
        parsed = lg.parse_name(name)
        f = self.flights.get(parsed[0]) if parsed else None
        return f if f is not None and f.name == name else None

    def _flights_of(self, worker: str) -> list[Flight]:
        return [f for f in self.flights.values() if f.row.worker == worker]

    def _disk_room(self) -> bool:
        """Room on the spool's and the import's volumes (looked at once a second at most).
        Below a floor the loop still follows the batches in flight (polls renew leases), but
        imports nothing and makes no batch: it waits there, blocked, until there is room."""
        if self.floor is None or self.report is None:
            return True
        checked_at, room = self._disk_checked
        if time.monotonic() - checked_at >= 1.0:
            room = self.floor.poll(self.report)
            self._disk_checked = (time.monotonic(), room)
        return room

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
                "kind": w.host.kind, "ray": w.link.view() if w.host.ray else None,
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
                "disk_low": w.disk_low,
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
        if self.floor is not None and self.floor.blocked_on is not None:
            self.report.blocked(self.floor.blocked_on.reason())
        elif not usable and self.workers:
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
