"""The re-embed's compute on a Ray cluster (``--workers NAME`` naming a ``kind = "ray"``
worker of hosts.toml): that worker's actors (count and resources from hosts.toml), each with
the one model loaded once. The images of a slice travel in the task's arguments (the object
store); the vectors come back here, and only this process writes the index. A slice whose
actor died (its node gone) is given to another actor (a new one only when none is left); the
slice's files are written once, whatever Ray ran twice.

At most PER_ACTOR slices per actor are out at a time, so reading the tars here keeps just
ahead of the cluster. Ray is imported only here, only when the route is used.
"""
from __future__ import annotations

import logging
import time

from pipeline.core import raycluster
from pipeline.core.errors import UserError

PER_ACTOR = 2
MAX_TRIES = 3
log = logging.getLogger("imageselector.reembed")


class ColumnActor:
    """Made a Ray actor below: ColumnEmbedder from the configuration sections it is sent."""

    def __init__(self, overrides: dict, root_profile: str | None, model: str, batch_size: int):
        from pipeline.core.config import Config
        from pipeline.models.registry import ModelSettings
        from pipeline.reembed.compute import ColumnEmbedder

        settings = ModelSettings.from_config(Config(None, overrides), root_profile=root_profile)
        self.embedder = ColumnEmbedder(settings, model, batch_size)

    def fingerprint(self) -> str:
        return self.embedder.fingerprint()

    def embed(self, images, texts, labels) -> dict:
        from pipeline.core.testhold import hold_here

        hold_here(f"slice-{labels[0] if labels else 'empty'}")   # tests: its node killed mid-slice
        t0 = time.monotonic()
        out = self.embedder.embed(images, texts, labels)
        return {"vectors": out, "seconds": time.monotonic() - t0}


class RayRoute:
    name = "ray"

    def __init__(self, worker: str, spec, overrides: dict, root_profile: str | None, model: str,
                 batch_size: int):
        self.worker = worker
        self.spec = spec
        self.overrides = overrides
        self.root_profile = root_profile
        self.model = model
        self.batch_size = batch_size
        self.actors: list = []
        self.retried = 0
        self.compute_s: list[float] = []    # seconds inside the actor, per slice

    def _new_actor(self):
        import ray

        options = {"num_cpus": self.spec.num_cpus, "num_gpus": self.spec.num_gpus,
                   "max_restarts": 0, "max_task_retries": 0}
        if self.spec.memory_gb:
            options["memory"] = int(self.spec.memory_gb * (1 << 30))
        return ray.remote(ColumnActor).options(**options).remote(
            self.overrides, self.root_profile, self.model, self.batch_size)

    def _start(self) -> None:
        if self.actors:
            return
        try:
            raycluster.connect(self.spec.address, self.worker)
        except raycluster.RayUnavailableError as exc:
            raise UserError(str(exc)) from None
        self.actors = [self._new_actor() for _ in range(max(1, self.spec.actors))]

    def fingerprint(self) -> str:
        import ray
        from ray.exceptions import RayTaskError

        self._start()
        try:
            return ray.get(self.actors[0].fingerprint.remote())
        except RayTaskError as exc:
            raise UserError(f"{self.worker}: the model actor cannot start: "
                            f"{raycluster.last_line(exc)}") from None

    def run(self, work, load):
        """(work, vectors) as slices finish (not in order)."""
        import ray
        from ray.exceptions import RayTaskError

        self._start()
        lost = raycluster.lost_errors()
        out: dict = {}              # ObjectRef -> (work, payload, actor, tries)
        load_of = {id(a): 0 for a in self.actors}
        todo = iter(work)
        exhausted = False

        def submit(w, payload, tries):
            actor = min(self.actors, key=lambda a: load_of[id(a)])
            load_of[id(actor)] += 1
            out[actor.embed.remote(*payload)] = (w, payload, actor, tries)

        while True:
            while not exhausted and len(out) < PER_ACTOR * len(self.actors):
                w = next(todo, None)
                if w is None:
                    exhausted = True
                    break
                submit(w, load(w), 0)
            if not out:
                return
            [ref], _ = ray.wait(list(out), num_returns=1)
            w, payload, actor, tries = out.pop(ref)
            load_of[id(actor)] = load_of.get(id(actor), 1) - 1
            try:
                got = ray.get(ref)
            except lost as exc:
                if tries + 1 >= MAX_TRIES:
                    raise UserError(f"{self.worker}: shard {w.shard.number} batch line "
                                    f"{w.slice.seq} lost its actor {MAX_TRIES} times "
                                    f"({raycluster.last_line(exc)})") from None
                log.warning("%s: an actor was lost (%s); its slice goes to another",
                            self.worker, raycluster.last_line(exc))
                if actor in self.actors:
                    # not replaced while others remain: a new actor could wait for ever for
                    # the dead node's resources, and the slices given to it with it
                    self.actors.remove(actor)
                    if not self.actors:
                        self.actors.append(self._new_actor())
                        load_of[id(self.actors[0])] = 0
                self.retried += 1
                submit(w, payload, tries + 1)
                continue
            except RayTaskError as exc:
                raise UserError(f"{self.worker}: shard {w.shard.number} batch line {w.slice.seq}: "
                                f"{raycluster.last_line(exc)}") from None
            self.compute_s.append(got["seconds"])
            yield w, got["vectors"]

    def close(self) -> None:
        if not self.actors:
            return
        import ray

        for actor in self.actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:
                pass
        self.actors = []
