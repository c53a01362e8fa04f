"""What the loop holds in memory: a Flight per active batch, a Worker per host of hosts.toml
(the DB and the spool are the truth after a restart)."""
from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.stages.orchestrate import ledger as lg
from pipeline.stages.orchestrate import scheduler
from pipeline.stages.orchestrate.links import WorkerLink


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
    disk_low: dict | None = None      # its worker waits below a disk floor (heartbeat info)

    def in_error(self, now: float) -> bool:
        return self.error is not None and now < self.error_until


def _named(worker: str, text: str) -> str:
    """Messages name their worker once."""
    return text if text.startswith(f"{worker}:") else f"{worker}: {text}"
