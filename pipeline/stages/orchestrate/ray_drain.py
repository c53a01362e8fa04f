"""A graceful stop with batches on Ray actors (KILL_ORCH or SIGTERM; the loop's checkpoint
turned false): the orchestrator is the actors' Ray driver, so when it exits they end with
it. Instead of leaving their batches to a lease, it drains first:

  * the Ray link starts nothing new; the batches queued on the link (not yet on an actor)
    go back to the queue at once (``drained`` event);
  * the batches running on actors finish, come back and are imported as usual, for up to
    ``orchestrate.ray_drain_s``;
  * what is still out then goes back to the queue (images to ``downloaded``, no attempt
    counted) and is dropped from the link; a result already written to the link's outbox
    is kept (the next run imports it).

Nothing is killed in the middle of a write: the actors never write the DB or the index,
and imports run in this loop, one at a time, all-or-nothing.
"""
from __future__ import annotations

import time

from pipeline.stages.orchestrate import ledger as lg

STOPPED_OUT = "the orchestrator stopped before the batch came back from Ray"


class RayDrainMixin:
    def _drain_ray(self) -> None:
        ray_workers = [w for w in self.workers.values() if w.host.ray and w.link.usable]
        if not any(self._flights_of(w.name) for w in ray_workers):
            return
        for w in ray_workers:
            w.link.submit("drain")
        bound = self.settings.ray_drain_s
        self.log.info("stopping: waiting up to %.0f s for the batches on Ray actors", bound)
        deadline = time.monotonic() + bound
        asked = self.checkpoint
        # the stop is decided: the checkpoint still runs (heartbeat), but imports go on
        self.checkpoint = lambda: asked() or True
        try:
            while time.monotonic() < deadline and any(self._flights_of(w.name) for w in ray_workers):
                self._pump(self.settings.tick_s)
                if self._disk_room():
                    self._import_ready()
                self._expire_leases()
                self._publish()
        finally:
            self.checkpoint = asked
        for w in ray_workers:
            for f in list(self._flights_of(w.name)):
                if f.result_path or (w.link.results_dir / f"{f.name}.tar").is_file():
                    continue          # its result is here: imported by the next run
                self._give_back(f, lg.EXPIRED, f"{STOPPED_OUT} (waited {bound:.0f} s)",
                                count_attempt=False)
                w.link.submit("drop", f.name)

    def _on_drained(self, w, data: dict) -> None:
        """The batches the link held back (never on an actor): to the queue at once."""
        for name in data.get("dropped", []):
            f = self._flight_by_name(name)
            if f is not None and not f.result_path:
                self._give_back(f, lg.EXPIRED, f"{STOPPED_OUT} (not started)",
                                count_attempt=False)
