"""The orchestrator's configuration (pipeline/defaults/orchestrate.toml)."""
from __future__ import annotations

from dataclasses import dataclass

from pipeline.core.config import config_values, toml_defaults
from pipeline.core.errors import UserError


@dataclass(frozen=True)
@toml_defaults("orchestrate", stale_after_s="stage.stale_after_s")
class OrchestrateSettings:
    batch_size: int
    lease_s: float
    lost_after_polls: int
    max_attempts: int
    min_in_flight: int
    max_in_flight: int
    default_rate: float
    poll_s: float
    tick_s: float
    start_workers: bool
    worker_start_retry_s: float
    stop_workers: bool
    error_retry_s: float
    flush_settle_s: float
    flush_max_age_s: float
    local_direct: bool
    implicit_local_worker: bool
    status_timeout_s: float
    stale_after_s: float              # a worker heartbeat older is stale
    ray_drain_s: float                # a graceful stop waits this long for Ray batches

    @classmethod
    def from_config(cls, config, **overrides) -> "OrchestrateSettings":
        values = config_values(cls, config)
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
