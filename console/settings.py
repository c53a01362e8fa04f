"""The console's settings, read once from the root's config (section `console`)."""
from __future__ import annotations

from dataclasses import dataclass, field

from console.commands import validate_keymap

REFRESH_STEPS = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
THUMBNAIL_MODES = ("auto", "halfblock", "none")


@dataclass
class ConsoleSettings:
    refresh_s: float = 1.0
    source_timeout_s: float = 10.0
    db_timeout_s: float = 2.0
    lock_open_scan_s: float = 5.0
    history_s: float = 600.0
    log_lines: int = 500
    log_context: int = 2
    backup_overdue_s: float = 90000.0
    thumbnails: str = "auto"
    search_k: int = 24
    keymap: dict = field(default_factory=dict)

    @classmethod
    def from_config(cls, config) -> "ConsoleSettings":
        from pipeline.errors import UserError

        values = {name: config.get(f"console.{name}") for name in cls.__dataclass_fields__}
        settings = cls(**values)
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
