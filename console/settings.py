"""The console's settings, read once from the root's config (section `console`)."""
from __future__ import annotations

from dataclasses import dataclass

from console.commands import validate_keymap
from pipeline.core.config import config_values, toml_defaults

REFRESH_STEPS = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
THUMBNAIL_MODES = ("auto", "halfblock", "none")


@dataclass
@toml_defaults("console")
class ConsoleSettings:
    refresh_s: float
    source_timeout_s: float
    db_timeout_s: float
    lock_open_scan_s: float
    history_s: float
    log_lines: int
    log_context: int
    thumbnails: str
    search_k: int
    keymap: dict

    @classmethod
    def from_config(cls, config) -> "ConsoleSettings":
        from pipeline.core.errors import UserError

        settings = cls(**config_values(cls, config))
        settings.keymap = validate_keymap(settings.keymap)
        if settings.refresh_s <= 0:
            raise UserError(f"console.refresh_s must be above 0, got {settings.refresh_s}")
        if settings.thumbnails not in THUMBNAIL_MODES:
            raise UserError(f"console.thumbnails must be one of {', '.join(THUMBNAIL_MODES)}, "
                            f"got {settings.thumbnails!r}")
        return settings


def next_refresh(current: float, faster: bool) -> float:
    """The next step of the refresh interval up or down."""
    steps = REFRESH_STEPS
    if faster:
        smaller = [s for s in steps if s < current - 1e-9]
        return smaller[-1] if smaller else steps[0]
    larger = [s for s in steps if s > current + 1e-9]
    return larger[0] if larger else steps[-1]
