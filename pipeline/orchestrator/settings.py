"""The orchestrator's configuration (pipeline/defaults/orchestrate.toml)."""
from __future__ import annotations

from dataclasses import dataclass, fields

from pipeline.errors import UserError


@dataclass(frozen=True)
class OrchestrateSettings:
    batch_size: int = 10000
    lease_s: float = 1800.0
    lost_after_polls: int = 3
    max_attempts: int = 3
    min_in_flight: int = 2
    max_in_flight: int = 4
    default_rate: float = 5.0
    poll_s: float = 5.0
    tick_s: float = 0.5
    start_workers: bool = True
    worker_start_retry_s: float = 60.0
    stop_workers: bool = True
    error_retry_s: float = 300.0
    flush_settle_s: float = 30.0
    flush_max_age_s: float = 86400.0
    local_direct: bool = True
    implicit_local_worker: bool = True
    status_timeout_s: float = 3.0
    stale_after_s: float = 30.0       # stage.stale_after_s: a worker heartbeat older is stale

    @classmethod
    def from_config(cls, config, **overrides) -> "OrchestrateSettings":
        values = {f.name: config.get(f"orchestrate.{f.name}") for f in fields(cls)
                  if f.name != "stale_after_s"}
        values["stale_after_s"] = float(config.get("stage.stale_after_s"))
        values.update(overrides)
        settings = cls(**values)
        settings.check(config)
        return settings

    def check(self, config=None) -> None:
        where = getattr(config, "file_path", None) or "orchestrate"
        if self.batch_size < 1:
            raise UserError(f"{where}: orchestrate.batch_size must be at least 1, got {self.batch_size}")
        if self.lease_s <= 0:
            raise UserError(f"{where}: orchestrate.lease_s must be positive, got {self.lease_s}")
        if not 1 <= self.min_in_flight <= self.max_in_flight:
            raise UserError(f"{where}: orchestrate.min_in_flight ({self.min_in_flight}) must be at "
                            f"least 1 and at most max_in_flight ({self.max_in_flight})")
        if self.max_attempts < 1:
            raise UserError(f"{where}: orchestrate.max_attempts must be at least 1")
        if self.poll_s <= 0 or self.tick_s <= 0:
            raise UserError(f"{where}: orchestrate.poll_s and tick_s must be positive")
