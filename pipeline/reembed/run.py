"""`imageselector reembed MODEL`: one model's vectors computed again for every row of the
index, from the images in the tars, and switched on for all shards at once.

    1. the job: its column id and fingerprint (job.py); a stop or a crash resumes here
    2. every committed batch line (slice) of every shard without its finished files: its
       images read from the tars by offset (the caller's ``load``), the model run on the
       route (this process, or Ray actors), the slice's files written
    3. under the store lock, once nothing is missing (batches imported meanwhile are
       covered too): the cross-shard search index of the model is set aside, then one line
       of columns.jsonl commits the column for every shard (index/columns.py)
    4. the derived files of the switched vectors are rebuilt (the store does it on open),
       and the cross-shard search index when one is configured

Until 3 nothing reads the new files: search, verify and imports see the old column.
Other models' files are never opened for writing.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Protocol

from pipeline.core.errors import UserError
from pipeline.core.fsutil import try_flock
from pipeline.index import columns as cols
from pipeline.reembed.compute import vector_names
from pipeline.reembed.job import Job, job_path, lock_path

log = logging.getLogger("imageselector.reembed")


@dataclass
class Work:
    """One slice to embed: its shard, its manifest line, its (listing, image) rows."""

    shard: object
    slice: object
    ids: object

    @property
    def key(self) -> tuple[int, int]:
        return (self.shard.number, self.slice.seq)


class Route(Protocol):
    def fingerprint(self) -> str: ...
    def run(self, work: Iterable[Work], load: Callable) -> Iterator[tuple[Work, dict]]: ...
    def close(self) -> None: ...


class LocalRoute:
    """The model in this process (the test profile, or a host with its own GPU)."""

    name = "local"

    def __init__(self, embedder):
        self.embedder = embedder

    def fingerprint(self) -> str:
        return self.embedder.fingerprint()

    def run(self, work, load):
        for w in work:
            images, texts, labels = load(w)
            yield w, self.embedder.embed(images, texts, labels)

    def close(self) -> None:
        pass


def reembed(root, conn, model: str, route: Route, load: Callable,
            should_stop: Callable[[], bool] = lambda: False,
            on_slice: Callable[[Work, int, int], None] | None = None, again: bool = False) -> dict:
    """Run (or resume) the re-embed of ``model``. ``load(work) -> (images, texts, labels)``
    reads a slice's images (bytes, in row order) and listing texts. Returns a summary with
    ``state`` "switched" or "stopped". When the column in force for ``model`` already has
    this route's fingerprint and no run is pending, nothing is computed (``already``): a
    repeated command must not re-embed millions of images; ``again`` forces a new column."""
    from pipeline.index import IndexStore

    vectors = vector_names(model)
    base = root.embeddings_dir
    fd = try_flock(lock_path(base, model))
    if fd is None:
        raise UserError(f"another `imageselector reembed {model}` is running on this root")
    try:
        store = IndexStore.for_root(root)
        store.open(conn)
        if not store.shards:
            raise UserError("the index is empty: nothing to re-embed")
        order, dims = store.layout()
        missing = [v for v in vectors if v not in order]
        if missing:
            raise UserError(f"reembed {model}: the index holds no {', '.join(missing)} vectors "
                            f"(models: {', '.join(order)})")
        if hasattr(route, "should_stop"):      # a route that waits on other machines
            route.should_stop = should_stop
        fingerprint = route.fingerprint()
        in_force = [e for e in cols.read_lines(base) if e.get("model") == model]
        if (not again and not job_path(base, model).exists() and in_force
                and in_force[-1].get("fingerprint") == fingerprint):
            log.info("reembed %s: column %s already holds these weights' vectors: nothing to do",
                     model, in_force[-1]["column_id"])
            return {"model": model, "vectors": vectors, "column_id": in_force[-1]["column_id"],
                    "fingerprint": fingerprint, "previous": in_force[-1].get("previous"),
                    "route": route.name, "slices": 0, "rows": 0, "seconds": 0.0,
                    "state": "switched", "already": True, "fingerprint_now": store.fingerprint}
        job = Job.load_or_start(base, model, vectors, fingerprint, log)
        summary = {"model": model, "vectors": vectors, "column_id": job.column_id,
                   "fingerprint": fingerprint, "previous": store.fingerprint, "route": route.name,
                   "slices": 0, "rows": 0, "seconds": 0.0}
        if job.column_id in cols.committed_ids(base):   # switched before a crash: finish
            return _finish(root, conn, store, job, summary)
        job.drop_abandoned(store.shards, cols.committed_ids(base))
        t0 = time.perf_counter()
        total_slices = sum(len(sh.slices) for sh in store.shards)
        while True:
            todo = job.pending(store.shards)
            if not todo:
                with store.locked():
                    store.open(conn, refresh_derived=False)
                    if not job.pending(store.shards):
                        _switch(root, store, job, summary)
                        break
                continue
            work = (Work(sh, s, sh.part(s, "ids", mmap=False)) for sh, s in todo)
            done_before = total_slices - len(todo)
            for w, out in route.run(work, load):
                summary["rows"] += job.write_slice(w.shard, w.slice, out, dims, store.durable)
                summary["slices"] += 1
                if on_slice:
                    on_slice(w, done_before + summary["slices"], total_slices)
                if should_stop():
                    break
            if should_stop():     # also when a route waiting on its hosts ended early
                summary.update(state="stopped", seconds=round(time.perf_counter() - t0, 3))
                log.info("reembed %s: stopped after %d slices; run it again to resume",
                         model, summary["slices"])
                return summary
            store.open(conn, refresh_derived=False)   # imports that landed meanwhile
            total_slices = sum(len(sh.slices) for sh in store.shards)
        summary["seconds"] = round(time.perf_counter() - t0, 3)
        return _finish(root, conn, store, job, summary)
    finally:
        os.close(fd)
        route.close()


def _switch(root, store, job: Job, summary: dict) -> None:
    """The commit point (store lock held): the model's cross-shard search index is set aside
    (it indexes the old vectors), then one line switches every shard to the new column."""
    from pipeline.index import searchindex

    for v in job.vectors:
        (searchindex.search_dir(store.base, v) / searchindex.STATE_NAME).unlink(missing_ok=True)
    entry = {"model": job.model, "vectors": job.vectors, "column_id": job.column_id,
             "fingerprint": job.fingerprint, "previous": store.fingerprint,
             "shards": {str(sh.number): {"dir": str(job.folder(sh).relative_to(store.base)),
                                         "slices": [s.seq for s in sh.slices]}
                        for sh in store.shards},
             "rows": store.total_rows(), "t": time.time()}
    cols.commit(store.base, entry, store.durable)
    log.info("reembed %s: column %s switched on for %d shards (%d rows)", job.model,
             job.column_id, len(store.shards), store.total_rows())


def _finish(root, conn, store, job: Job, summary: dict) -> dict:
    """After the switch: derived files of the switched vectors (the store rebuilds them on
    open), the cross-shard search index when configured, and the job file removed."""
    from pipeline.index import searchindex

    store.open(conn)
    summary["search_index"] = searchindex.update_for_root(root, job.vectors, force=True)
    job.finish()
    summary.update(state="switched", fingerprint_now=store.fingerprint)
    return summary
