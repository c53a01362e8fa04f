"""A Ray worker (``kind = "ray"`` in hosts.toml) behind the same link interface as an SSH or
local worker: the main loop ships, polls, fetches and cleans up exactly as for the others,
and imports through the same intake. Only the compute is Ray's.

  * ship: the batch's tar (the SSH route's, built in memory) goes into the object store
    (``ray.put``) and waits here for a model actor; an actor takes at most two batches
    (one running, the next already on its node).
  * poll: finished batches are collected; a result's tar is written under
    ``spool/ray/<worker>/`` (renamed into place whole), which is this worker's "outbox":
    it survives an orchestrator restart like a result on an SSH host. The state the main
    loop gets has the same shape as hostops' ``state``: in flight = inbox, results = outbox.
  * a batch whose actor died (its node gone, the process killed) goes back to the front of
    the queue and runs on another actor; the dead actor is replaced (Ray places the new one
    where there is room). The ledger's leases and the idempotent import make the import
    happen once, whatever Ray does twice.
  * fetch: the result tar is checked and unpacked into ``spool/in/<name>`` (links.py).

Batches the link forgets (the orchestrator restarted, the cluster was lost) are simply not
reported any more: the main loop gives them back after ``lost_after_polls`` polls.
"""
from __future__ import annotations

import collections
import hashlib
import io
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.core import raycluster
from pipeline.core.fsutil import fsync_dir
from pipeline.stages.orchestrate.links import (OK, OpFailed, ShipOrder, WorkerLink,
                                               install_result, write_batch_tar)
from remote.errors import RemoteError

PER_ACTOR = 2          # batches an actor holds: one running, the next already on its node
MAX_TRIES = 3          # actor deaths a batch survives before the link lets it go


class RayUnavailable(RemoteError):
    """The cluster cannot be reached (or Ray is not installed here)."""


class _Endpoint:
    """What the link's generic code reads from a transport (a name, a host, close)."""

    def __init__(self, host):
        self.host = host
        self.root = ""

    def close(self) -> None:
        pass


@dataclass
class _Slot:
    actor: object
    ready_ref: object
    created: float
    ready: bool = False
    node: str | None = None
    pid: int | None = None
    dead: bool = False
    names: set = field(default_factory=set)


@dataclass
class _Job:
    name: str
    ref: object            # the batch tar in the object store
    n_images: int
    tries: int = 0
    slot: _Slot | None = None


class RayLink(WorkerLink):
    def __init__(self, name: str, host, spool: Path, download_dir: Path, events, poll_s: float,
                 error_retry_s: float, log, marker: str, overrides: dict,
                 root_profile: str | None, start_grace_s: float):
        super().__init__(name, _Endpoint(host), "ray", spool, download_dir, events, poll_s,
                         error_retry_s, log, marker)
        self.spec = host.ray
        self.overrides = overrides
        self.root_profile = root_profile
        self.start_grace_s = start_grace_s
        self.results_dir = Path(spool) / "ray" / name
        self.slots: list[_Slot] = []
        self.waiting: collections.deque[_Job] = collections.deque()
        self.running: dict = {}            # ObjectRef of embed() -> _Job
        self.connected = False
        self.stopped = False               # stop_worker: no actors until the next start
        self.retried = 0
        self.nodes_seen: set[str] = set()  # nodes whose actors became ready (tests, status)

    # ---- for the scheduler and the status view (read from the main thread) ---------------
    @property
    def parallel(self) -> int:
        return max(1, self.spec.actors)

    def view(self) -> dict:
        slots = list(self.slots)
        return {"actors": self.spec.actors, "actors_ready": sum(s.ready for s in slots),
                "actors_starting": sum(not s.ready and not s.dead for s in slots),
                "nodes": len({s.node for s in slots if s.node}),
                "gpus_per_actor": self.spec.num_gpus, "cpus_per_actor": self.spec.num_cpus,
                "queued": len(self.waiting), "running": len(self.running),
                "retried": self.retried, "address": self.spec.address,
                "stopping": self.stopped}

    # ---- connection and actors ------------------------------------------------------------
    def _connect(self) -> None:
        if self.connected:
            return
        try:
            raycluster.connect(self.spec.address, self.name)
        except raycluster.RayUnavailableError as exc:
            raise RayUnavailable(str(exc)) from None
        self.connected = True
        self.log.info("%s: connected to the Ray cluster at %s", self.name, self.spec.address)

    def _new_slot(self) -> _Slot:
        import ray

        from pipeline.stages.orchestrate.ray_actor import BatchActor

        options = {"num_cpus": self.spec.num_cpus, "num_gpus": self.spec.num_gpus,
                   "max_restarts": 0, "max_task_retries": 0}
        if self.spec.memory_gb:
            options["memory"] = int(self.spec.memory_gb * (1 << 30))
        actor = ray.remote(BatchActor).options(**options).remote(self.overrides, self.root_profile)
        return _Slot(actor, actor.ready.remote(), time.time())

    def _fill_slots(self) -> None:
        if self.stopped:
            return
        self.slots = [s for s in self.slots if not s.dead]
        while len(self.slots) < self.spec.actors:
            self.slots.append(self._new_slot())

    def _close(self) -> None:
        """The link went down or ends: forget every actor and batch (their leases run out)."""
        if not self.connected:
            return
        self.connected = False
        self.slots, self.running = [], {}
        self.waiting.clear()
        try:
            import ray

            ray.shutdown()
        except Exception:
            pass

    # ---- collecting ---------------------------------------------------------------------
    def _collect(self) -> None:
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

        lost_errors = raycluster.lost_errors()
        readies = {s.ready_ref: s for s in self.slots if not s.ready and not s.dead}
        if readies:
            done, _ = ray.wait(list(readies), num_returns=len(readies), timeout=0)
            for ref in done:
                slot = readies[ref]
                try:
                    info = ray.get(ref)
                    slot.ready, slot.node, slot.pid = True, info["node"], info["pid"]
                    self.nodes_seen.add(info["node"])
                except lost_errors as exc:
                    self._actor_lost(slot, exc)
                except RayTaskError as exc:   # the models cannot be built there: stop here
                    slot.dead = True
                    raise OpFailed(f"{self.name}: a model actor cannot start: "
                                   f"{raycluster.last_line(exc)}") from None
        if not self.running:
            return
        done, _ = ray.wait(list(self.running), num_returns=len(self.running), timeout=0)
        for ref in done:
            job = self.running.pop(ref)
            if job.slot is not None:
                job.slot.names.discard(job.name)
            try:
                out = ray.get(ref, timeout=60)
            except (RayActorError,) + lost_errors as exc:
                self._actor_lost(job.slot, exc)
                self._retry(job, exc)
                continue
            except GetTimeoutError:
                self._retry(job, "result not readable")
                continue
            except RayTaskError as exc:
                # the batch itself failed there: let it go (the main loop gives it back)
                self.log.error("%s: batch %s failed on its actor: %s", self.name, job.name,
                               raycluster.last_line(exc))
                continue
            self._store_result(job.name, out)

    def _actor_lost(self, slot: _Slot | None, exc) -> None:
        if slot is None or slot.dead:
            return
        slot.dead = True
        self.log.warning("%s: model actor on node %s lost (%s); a new one replaces it",
                         self.name, (slot.node or "?")[:12], raycluster.last_line(exc))
        try:
            import ray

            ray.kill(slot.actor, no_restart=True)
        except Exception:
            pass

    def _retry(self, job: _Job, why) -> None:
        job.tries += 1
        job.slot = None
        if job.tries >= MAX_TRIES:
            self.log.error("%s: batch %s lost its actor %d times: left to its lease",
                           self.name, job.name, job.tries)
            return
        self.retried += 1
        self.log.warning("%s: batch %s goes to another actor (%s)", self.name, job.name,
                         raycluster.last_line(why))
        self.waiting.appendleft(job)

    def _store_result(self, name: str, out: dict) -> None:
        data = out.get("result_tar") or b""
        if hashlib.sha256(data).hexdigest() != out.get("sha256"):
            raise OpFailed(f"{self.name}: result of {name}: checksum mismatch")
        self.results_dir.mkdir(parents=True, exist_ok=True)
        final = self.results_dir / f"{name}.tar"
        tmp = self.results_dir / f".{name}.tar.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        fsync_dir(self.results_dir)
        self.log.info("%s: batch %s %s on node %s in %.1f s", self.name, name, out.get("outcome"),
                      str(out.get("node"))[:12], out.get("seconds") or 0.0)

    def _dispatch(self) -> None:
        while self.waiting and not self.stopped:
            ready = [s for s in self.slots if s.ready and not s.dead and len(s.names) < PER_ACTOR]
            if not ready:
                return
            slot = min(ready, key=lambda s: len(s.names))
            job = self.waiting.popleft()
            job.slot = slot
            slot.names.add(job.name)
            self.running[slot.actor.embed.remote(job.name, job.ref)] = job

    # ---- the state the main loop reads ----------------------------------------------------
    def _names(self) -> list[str]:
        return [j.name for j in self.waiting] + [j.name for j in self.running.values()]

    def _outbox(self) -> list[str]:
        if not self.results_dir.is_dir():
            return []
        return sorted(p.name[:-4] for p in self.results_dir.iterdir()
                      if p.name.endswith(".tar") and not p.name.startswith("."))

    def _alive(self, now: float) -> bool:
        live = [s for s in self.slots if not s.dead]
        return any(s.ready for s in live) or any(now - s.created < self.start_grace_s for s in live)

    def _state(self) -> dict:
        now = time.time()
        running = [j.name for j in self.running.values()]
        hb = {"stage": "worker", "state": "running", "heartbeat": now, "pid": None,
              "info": {"batch": running[0] if running else None, "ray": self.view()}} \
            if self._alive(now) else {}
        return {"root": "", "now": now, "heartbeat": hb, "kill_file": False,
                "inbox": self._names(), "partial": [], "outbox": self._outbox(),
                "incoming": [], "results": [], "leftovers": []}

    # ---- operations (the link's thread) ---------------------------------------------------
    def _op_poll(self, key: str) -> None:
        t0 = time.time()
        self._connect()
        self._fill_slots()
        self._collect()
        self._fill_slots()
        self._dispatch()
        if self.stopped:
            self._release_idle()
        if self.state != OK:
            self.log.info("%s: ready (%s)", self.name, self.transport.host.describe())
        self.state, self.failures, self.error = OK, 0, None
        self._emit("polled", state=self._state(), asked_at=t0)

    def _op_ship(self, key: str, order: ShipOrder) -> None:
        import ray

        t0 = time.monotonic()
        self._connect()
        if order.name not in self._names() and order.name not in self._outbox():
            buf = io.BytesIO()
            write_batch_tar(buf, order, self._source)
            self.waiting.append(_Job(order.name, ray.put(buf.getvalue()), len(order.rows)))
            self._dispatch()
        seconds = time.monotonic() - t0
        self.ship_s = seconds if self.ship_s is None else 0.5 * self.ship_s + 0.5 * seconds
        self._emit("shipped", batch_id=order.batch_id, name=order.name, seconds=seconds)

    def _op_fetch(self, key: str) -> None:
        t0 = time.monotonic()
        in_dir = self.spool / "in"
        in_dir.mkdir(parents=True, exist_ok=True)
        final = in_dir / key
        if not (final / "result.json").is_file():
            tar = self.results_dir / f"{key}.tar"
            if not tar.is_file():
                raise OpFailed(f"{self.name}: no result for {key}")
            install_result(tar, key, in_dir)
        self._emit("fetched", name=key, path=str(final), seconds=time.monotonic() - t0)

    def _op_cleanup(self, key: str, inbox: bool = False) -> None:
        (self.results_dir / f"{key}.tar").unlink(missing_ok=True)
        if inbox:
            self._drop_waiting(key)
        self._emit("cleaned", name=key)

    def _op_drop(self, key: str) -> None:
        removed = self._drop_waiting(key)
        in_hand = any(j.name == key for j in self.running.values())
        self._emit("dropped", name=key, removed=removed, in_hand=in_hand)

    def _drop_waiting(self, name: str) -> bool:
        before = len(self.waiting)
        self.waiting = collections.deque(j for j in self.waiting if j.name != name)
        return len(self.waiting) < before

    def _op_start(self, key: str) -> None:
        self._connect()
        already = bool(self.slots) and not self.stopped
        self.stopped = False
        self._fill_slots()
        self._emit("started", already=already)
        self.poll_soon()

    def _op_stop_worker(self, key: str) -> None:
        """Graceful: no new batch goes out; the actors end once their batches are back."""
        self.stopped = True
        self._release_idle()
        self._emit("stopped_worker")

    def _op_drain(self, key: str) -> None:
        """The orchestrator stops gracefully (ray_drain.py): nothing new starts; the batches
        queued here, not yet on an actor, are handed back; those running finish."""
        self.stopped = True
        dropped = [j.name for j in self.waiting]
        self.waiting.clear()
        if self.connected:
            self._release_idle()
        self._emit("drained", dropped=dropped, running=[j.name for j in self.running.values()])

    def _release_idle(self) -> None:
        import ray

        for slot in self.slots:
            if not slot.names:
                try:
                    ray.kill(slot.actor, no_restart=True)
                except Exception:
                    pass
                slot.dead = True
        self.slots = [s for s in self.slots if not s.dead]

    def _op_clear_kill(self, key: str) -> None:
        self._emit("kill_cleared", removed=False)
        self.poll_soon()

