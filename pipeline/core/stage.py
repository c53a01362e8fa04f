"""Stages: the one table of names, kill and pause files and states (DECISIONS.md).

Nothing else spells these names: use ``STAGES[name].kill_file`` and friends. The stage
runtime every long-running stage uses (ARCHITECTURE.md, "The stage contract") is
stage_runtime.py; observing a stage is stage_observe.py; starting, stopping and pausing one
is stage_control.py.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass


class StageState(str, enum.Enum):
    """The stage states shown by status, the CLI and the console."""

    RUNNING = "running"
    PAUSING = "pausing"
    PAUSED = "paused"
    BLOCKED = "blocked"          # waiting on disk, quota or a volume
    STOPPING = "stopping"
    STOPPED = "stopped"
    CRASHED = "crashed"
    STALE = "stale"              # alive, but the heartbeat has stopped moving
    UNREACHABLE = "unreachable"  # its host does not answer

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class StageSpec:
    name: str
    kill_file: str
    pause_tag: str | None       # PAUSE_<tag> / PAUSED_<tag>; None: the stage has no pause
    where: str                  # "db_host", "worker" or "sandbox"
    entry: str                  # "module:function"
    description: str

    @property
    def pause_file(self) -> str | None:
        return f"PAUSE_{self.pause_tag}" if self.pause_tag else None

    @property
    def paused_file(self) -> str | None:
        return f"PAUSED_{self.pause_tag}" if self.pause_tag else None

    @property
    def uses_db(self) -> bool:
        # A worker never opens the DB (its host has none); the sandbox API has no use for it.
        return self.where == "db_host"


_SPECS = [
    StageSpec("sync", "KILL_SD", "SD", "db_host", "pipeline.stages.sync.entry:run",
              "crawl the Etsy API: taxonomy, listings, images, shops, reviews"),
    StageSpec("download", "KILL_DL", "DL", "db_host", "pipeline.stages.download.entry:run",
              "download discovered images with parallel workers"),
    StageSpec("orchestrate", "KILL_ORCH", "ORCH", "db_host", "pipeline.stages.orchestrate.entry:run",
              "send batches to the workers and import their results"),
    StageSpec("tar", "KILL_TAR", "TAR", "db_host", "pipeline.stages.archive.tar_entry:run",
              "archive bg-removed images in tars of 10,000"),
    StageSpec("primary", "KILL_PRIMARY", None, "db_host", "pipeline.stages.archive.primary_entry:run",
              "extract each listing's primary image into the primary tars"),
    StageSpec("backup", "KILL_BACKUP", None, "db_host", "pipeline.stages.backup.entry:run",
              "back up data/ to the backup targets, mirrors and their verification"),
    StageSpec("pipeline", "KILL_PIPELINE", None, "db_host", "pipeline.stages.runner.entry:run",
              "the weekly run: drives every stage, then the maintenance phase"),
    StageSpec("worker", "KILL_WORKER", None, "worker", "pipeline.stages.worker.entry:run",
              "background removal and the five embeddings (on every worker host)"),
    StageSpec("etsy-api", "KILL_API", None, "sandbox", "pipeline.stages.etsy_api.entry:run",
              "the local Etsy API (sandbox only)"),
    # Not a pipeline stage: a small real stage that proves the stage contract in tests.
    StageSpec("selftest", "KILL_SELFTEST", "SELFTEST", "db_host", "pipeline.stages.selftest.entry:run",
              "fake units of work, for testing the stage contract"),
]

STAGES: dict[str, StageSpec] = {spec.name: spec for spec in _SPECS}

# The order of the pipeline, used for "stop all" and the status listing.
PIPELINE_ORDER = ["sync", "download", "orchestrate", "tar", "primary", "backup", "pipeline",
                  "worker", "etsy-api"]
PAUSABLE = [name for name in PIPELINE_ORDER if STAGES[name].pause_tag]

# What "stop all" (`imageselector stop --all` and the console's A) leaves running unless asked,
# and why: the sandbox's local Etsy API serves sync's requests and the image URLs stored in
# the DB, so stopping "everything" must not take it away (naming it stops it).
STOP_ALL_KEEPS: dict[str, str] = {
    "etsy-api": "the sandbox's local Etsy API, which sync and download need",
}


def spec(name: str) -> StageSpec:
    from pipeline.core.errors import UserError

    try:
        return STAGES[name]
    except KeyError:
        raise UserError(f"unknown stage {name!r} (stages: {', '.join(PIPELINE_ORDER)})") from None


LIVE_STATES = (StageState.RUNNING, StageState.PAUSING, StageState.PAUSED, StageState.BLOCKED,
               StageState.STOPPING, StageState.STALE)
