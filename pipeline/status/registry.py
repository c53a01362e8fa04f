"""Status providers: each part adds its section of the snapshot by registering a function
here, so the snapshot imports no stage and a new stage adds its panel data without touching
the snapshot. A stage registers from ``pipeline/stages/<stage>/status.py`` (found on first
use; see pipeline/core/plugins.py).

A provider is ``fn(root, conn, now, errors) -> JSON-able value``; ``conn`` is None when the DB
could not be opened, and ``errors`` collects the lines the snapshot shows under its sections.
"""
from __future__ import annotations

from typing import Callable

from pipeline.core.plugins import Registered, StageRegistry

# pipeline.reembed is a command's package, not a stage: its section is registered here
_registry = StageRegistry("status section", "status", ("pipeline.reembed.status",))


def status_provider(section: str, order: int = 100) -> Callable[[Callable], Callable]:
    """Register ``fn`` as the provider of snapshot key ``section`` (lower ``order`` first)."""
    return _registry.register(section, order)


def providers() -> list[Registered]:
    """Every registered provider, in display order."""
    return _registry.entries()
