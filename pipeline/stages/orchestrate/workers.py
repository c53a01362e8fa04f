"""The orchestrator's side of each worker: what a poll of the host says (is the worker stage
alive, where is each batch in flight, what strangers lie there), starting the worker stage when
there is work for it, and the record of the workers this orchestrator started. A mixin of
core.Orchestrator: the methods use its workers, flights, ledger, settings and links."""
from __future__ import annotations

import time

from pipeline.stages.orchestrate import ledger as lg
from pipeline.stages.orchestrate.files import STARTED_FILE
from pipeline.stages.orchestrate.links import OK
from pipeline.stages.orchestrate.state import Flight, Worker


class WorkersMixin:
    def _save_started(self) -> None:
        from pipeline.core.fsutil import atomic_write_json

        atomic_write_json(self.spool / STARTED_FILE,
                          sorted(w.name for w in self.workers.values() if w.started_by_us))

    # ---- polls ------------------------------------------------------------------------
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
        self._worker_disk(w, hb)
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

    # ---- starting the worker stage -------------------------------------------------------
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

    def _worker_disk(self, w: Worker, hb: dict) -> None:
        """A worker that waits below its disk floor cannot alert (no DB there): we do, once
        per episode, and send it no more batches until it has room."""
        from pipeline.core import diskfloor
        from pipeline.core.alerts import local_host

        low = (hb.get("info") or {}).get(diskfloor.INFO_KEY) if w.alive and \
            hb.get("state") == "blocked" else None
        host = local_host() if w.host.local else w.name
        if low and not w.disk_low:
            self.log.warning("%s: the worker waits for disk: %s", w.name, hb.get("blocked_reason"))
            diskfloor.alert_for_host(self.root, self.conn, host, low, f"worker {w.name}", self.log)
        elif w.disk_low and not low:
            diskfloor.host_room_again(self.conn, host, w.disk_low, self.log)
        w.disk_low = low if isinstance(low, dict) else None

    def _eligible(self, w: Worker, now: float) -> bool:
        if w.link.state != OK or w.polled is None or w.in_error(now):
            return False
        if w.disk_low:
            return False                      # its inbox's volume is below the floor
        if w.kill_file and w.alive:
            return False                      # its worker is stopping
        return w.alive or w.starting or self.settings.start_workers

    def _worker_error(self, w: Worker, reason: str) -> None:
        w.error, w.error_until = reason, time.time() + self.settings.error_retry_s
        self._give_back_all(w, reason)
