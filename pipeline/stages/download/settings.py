"""The downloader's settings: pipeline/defaults/download.toml, a root's config, CLI overrides."""
from __future__ import annotations

from dataclasses import dataclass

from pipeline.core.config import config_values, toml_defaults
from pipeline.core.errors import UserError


@dataclass
@toml_defaults("download")
class Settings:
    workers: int
    max_in_flight: int
    per_host: int
    connect_timeout_s: float
    read_timeout_s: float
    total_timeout_s: float
    max_tries: int
    backoff_s: float
    backoff_max_s: float
    failed_retry_after_s: float
    failed_retry_passes: int
    max_redirects: int
    max_bytes: int
    max_pixels: int
    placeholder_max_bytes: int
    verify: str
    fsync: bool
    commit_batch: int
    commit_interval_s: float
    stop_grace_s: float
    idle_poll_s: float
    use_env_proxies: bool
    user_agent: str

    @classmethod
    def from_config(cls, config, **overrides) -> "Settings":
        values = config_values(cls, config)
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        if self.workers < 1:
            raise UserError(f"download workers (--workers or download.workers) must be at "
                            f"least 1, got {self.workers}")
        if self.max_in_flight < self.workers:
            self.max_in_flight = self.workers
        if self.max_tries < 1:
            raise UserError(f"download.max_tries must be at least 1, got {self.max_tries}")
        if self.failed_retry_after_s < 0:
            raise UserError(f"download.failed_retry_after_s must be 0 or more, got "
                            f"{self.failed_retry_after_s}")
        if self.failed_retry_passes < 0:
            raise UserError(f"download.failed_retry_passes must be 0 or more, got "
                            f"{self.failed_retry_passes}")
        if self.verify not in ("draft", "full"):
            raise UserError(f"download.verify must be \"draft\" or \"full\", got {self.verify!r}")
        if self.per_host < 0:
            raise UserError(f"download.per_host must be 0 (no cap) or more, got {self.per_host}")
