"""The doctor's areas: each is ``fn(ctx) -> list[Check]`` registered under an area name.

The doctor's own areas register from their modules in this package; a stage registers what
only it knows from ``pipeline/stages/<stage>/doctor.py`` (found on first use; see
pipeline/core/plugins.py), so this shared package imports no stage.
"""
from __future__ import annotations

from typing import Callable

from pipeline.core.plugins import Registered, StageRegistry

OWN_AREAS = ("pipeline.doctor.etsy", "pipeline.doctor.workers", "pipeline.doctor.alerts",
             "pipeline.doctor.schedule", "pipeline.doctor.safety")

_registry = StageRegistry("doctor area", "doctor", OWN_AREAS)


def doctor_check(area: str, order: int = 100) -> Callable[[Callable], Callable]:
    """Register ``fn`` as the checks of ``area`` (lower ``order`` first)."""
    return _registry.register(area, order)


def areas() -> list[Registered]:
    """Every registered area, in display order."""
    return _registry.entries()
