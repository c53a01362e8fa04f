"""The model actor a Ray worker runs (one per GPU, or per N CPUs): it loads the models once
and embeds batch after batch. A batch arrives as the same tar the SSH route uploads (from
the object store, not a shared disk); the actor unpacks it in a scratch folder on its own
node with the worker's host-side steps, runs the worker's one-batch function
(pipeline/models/batch_run.py) and returns the packed result folder's bytes. It never sees
the DB or the index: the orchestrator writes the result folder and imports it.

Ray is imported only inside functions (this module is imported by the orchestrator, which
may have no Ray worker at all).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from pipeline.core.testhold import hold_here
from pipeline.stages.orchestrate import hostops
from pipeline.stages.orchestrate.links import LAYOUT



class BatchActor:
    """Made a Ray actor by ray_link (``ray.remote(BatchActor).options(...)``)."""

    def __init__(self, overrides: dict, root_profile: str | None):
        from pipeline.core.config import Config
        from pipeline.models.batch_run import embedder_from_config

        self.scratch = Path(tempfile.mkdtemp(prefix="imageselector-ray-"))
        self.embedder = embedder_from_config(Config(None, overrides), root_profile)
        self.batches = 0

    def ready(self) -> dict:
        """Where this actor runs (the models load on the first batch)."""
        import ray

        ctx = ray.get_runtime_context()
        return {"node": ctx.get_node_id(), "pid": os.getpid(),
                "fingerprint": self.embedder.models.fingerprint()}

    def embed(self, name: str, batch_tar: bytes) -> dict:
        """One batch: its tar in, its result tar out (``outcome``: done, rejected, skipped)."""
        import ray
        from pipeline.batches.batchfile import WorkerDirs
        from pipeline.models.batch_run import process_batch

        t0 = time.monotonic()
        spec = {"root": str(self.scratch), "layout": LAYOUT, "name": name}
        incoming = self.scratch / LAYOUT["incoming"]
        incoming.mkdir(parents=True, exist_ok=True)
        (incoming / f"{name}.tar").write_bytes(batch_tar)
        hostops.call("unpack", spec)
        hold_here(name)       # tests: their node killed mid-batch
        dirs = WorkerDirs.under(self.scratch).ensure()
        outcome = process_batch(dirs, dirs.inbox / name, self.embedder)
        packed = hostops.call("pack", spec)
        data = Path(packed["file"]).read_bytes()
        hostops.call("cleanup", {**spec, "inbox": True})
        shutil.rmtree(dirs.rejected / name, ignore_errors=True)
        self.batches += 1
        return {"name": name, "outcome": outcome, "result_tar": data, "sha256": packed["sha256"],
                "node": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
                "seconds": round(time.monotonic() - t0, 3)}

    def close(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)

