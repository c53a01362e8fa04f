"""One batch, start to finish, with the models loaded once: shared by the worker stage
(batches from its inbox) and the orchestrator's Ray actors (a batch unpacked in a scratch
folder on the actor's node). The embedder is built from a configuration, so an actor on a
rented machine needs no root there: the orchestrator sends the sections it needs.
"""
from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pipeline.batches import batchfile, results
from pipeline.batches.batchfile import BatchError, WorkerDirs
from pipeline.core.config import config_values, toml_defaults

# the configuration sections an embedder is built from (what a Ray actor is sent)
EMBEDDER_SECTIONS = ("models", "worker")

DONE, REJECTED, STOPPED, SKIPPED = "done", "rejected", "stopped", "skipped"


@dataclass(frozen=True)
@toml_defaults("worker")
class WorkerSettings:
    batch_size: int
    prep_threads: int
    prefetch_images: int
    poll_s: float

    @classmethod
    def from_config(cls, config) -> "WorkerSettings":
        return cls(**config_values(cls, config))


def build_embedder(root, batch_size: int | None = None):
    """Models and background removal as the root's configuration says (nothing loaded yet)."""
    return embedder_from_config(root.config, root.profile, batch_size)


def embedder_overrides(config) -> dict:
    """The sections an embedder needs, as dotted overrides (for ``Config(None, overrides)``)."""
    return {f"{section}.{key}": value for section in EMBEDDER_SECTIONS
            for key, value in config.section(section).items()}


def embedder_from_config(config, root_profile: str | None, batch_size: int | None = None):
    from pipeline.models.bgremove import BackgroundRemover, settings_from_config
    from pipeline.models.embed import Embedder
    from pipeline.models.loading import ModelSet
    from pipeline.models.registry import ModelSettings

    model_settings = ModelSettings.from_config(config, root_profile=root_profile)
    models = ModelSet(model_settings)
    models.check_weights()
    remover = BackgroundRemover(settings_from_config(config, model_settings.profile))
    ws = WorkerSettings.from_config(config)
    return Embedder(models, remover, batch_size=batch_size or ws.batch_size, prep_threads=ws.prep_threads,
                    prefetch=ws.prefetch_images)


def reject(dirs: WorkerDirs, batch_path: Path, reason: str) -> Path:
    """Move a bad batch aside (with the reason beside it) and tell the orchestrator."""
    target = dirs.rejected / batch_path.name
    if target.exists():
        target = dirs.rejected / f"{batch_path.name}.{int(time.time())}"
    results.write_rejection(dirs.outbox, batch_path.name, reason)
    (batch_path / "REJECTED.txt").write_text(reason + "\n", encoding="utf-8")
    shutil.move(str(batch_path), str(target))
    return target


def process_batch(dirs: WorkerDirs, batch_path: Path, embedder,
                  should_stop: Callable[[], bool] = lambda: False,
                  on_progress: Callable[[int], None] = lambda n: None,
                  log: logging.Logger | None = None) -> str:
    """One batch, start to finish. Returns DONE, REJECTED, STOPPED or SKIPPED."""
    from pipeline.models.embed import Job, Stopped

    log = log or logging.getLogger("imageselector.worker")
    batch_id = batch_path.name
    existing = dirs.outbox / batch_id
    if (existing / results.RESULT).is_file():
        log.info("batch %s already has a result: removing it from the inbox", batch_id)
        batchfile.remove_tree(batch_path)
        batchfile.remove_tree(results.kept_path(dirs.outbox, batch_id))
        return SKIPPED
    try:
        batch = batchfile.read_batch(batch_path)
    except BatchError as exc:
        log.error("rejected: %s", exc)
        batchfile.remove_tree(results.kept_path(dirs.outbox, batch_id))
        reject(dirs, batch_path, str(exc))
        return REJECTED
    fingerprint = embedder.models.fingerprint()
    writer = results.ResultWriter(dirs.outbox, batch_id)
    earlier, dropped = writer.take_kept(batch.rows, fingerprint)
    if dropped:
        log.warning("batch %s: rows kept by a stopped run not used (%s): embedding it all",
                    batch_id, dropped)
    done = set(earlier.ok) | {i for i, _ in earlier.failed} if earlier else set()
    if earlier:
        log.info("batch %s: resuming: %d rows embedded and %d failed before the stop, %d to go",
                 batch_id, len(earlier.ok), len(earlier.failed), len(batch.rows) - len(done))
    jobs = [Job(i, row, batch.image_path(row)) for i, row in enumerate(batch.rows) if i not in done]
    texts = [row.text for row in batch.rows]
    try:
        out = embedder.run(jobs, texts, writer, should_stop=should_stop, on_progress=on_progress)
        out = out.merged(earlier)
        failed = [(batch.rows[i], reason) for i, reason in out.failed]
        for row, reason in failed:
            log.warning("batch %s: image %s failed: %s", batch_id, row.image_name, reason)
        writer.commit([batch.rows[i] for i in out.ok], out.vectors, failed,
                      fingerprint, embedder.models.fingerprint_detail(),
                      extra={"seconds": {k: round(v, 3) for k, v in out.seconds.items()},
                             "wall_s": round(out.wall_s, 3)})
    except Stopped as stop:
        finished = stop.finished.merged(earlier) if stop.finished else earlier
        if finished and (finished.ok or finished.failed):
            writer.keep(batch.rows, finished, fingerprint)
            log.info("batch %s: stop requested; %d of %d rows finished and kept for the next "
                     "run, the batch left in the inbox", batch_id,
                     len(finished.ok) + len(finished.failed), len(batch.rows))
        else:
            writer.abort()
            log.info("batch %s: stop requested; left untouched in the inbox", batch_id)
        return STOPPED
    except BaseException:
        writer.abort()
        raise
    batchfile.remove_tree(batch_path)
    log.info("batch %s: %d embedded, %d failed in %.1f s", batch_id, len(out.ok),
             len(out.failed), out.wall_s)
    return DONE
