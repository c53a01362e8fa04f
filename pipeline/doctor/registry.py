"""The doctor's areas: each is ``fn(ctx) -> list[Check]`` registered under an area name.

The doctor's own areas register from their modules in this package; a stage registers what
only it knows from ``pipeline/stages/<stage>/doctor.py`` (found and imported on first use, as
pipeline/status/registry.py does for status providers), so this shared package imports no
stage. Keep those modules light (no torch, faiss, textual).
"""
from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import threading
from dataclasses import dataclass
from typing import Callable

AreaCheck = Callable[..., list]
STAGES_PACKAGE = "pipeline.stages"
OWN_AREAS = ("pipeline.doctor.etsy", "pipeline.doctor.workers", "pipeline.doctor.alerts",
             "pipeline.doctor.schedule", "pipeline.doctor.safety")


@dataclass(frozen=True)
class Area:
    name: str
    fn: AreaCheck
    order: int


_registered: dict[str, Area] = {}
_discovered = False
_lock = threading.Lock()


def doctor_check(area: str, order: int = 100) -> Callable[[AreaCheck], AreaCheck]:
    """Register ``fn`` as the checks of ``area`` (lower ``order`` first)."""
    def register(fn: AreaCheck) -> AreaCheck:
        known = _registered.get(area)
        if known is not None and known.fn.__qualname__ != fn.__qualname__:
            raise ValueError(f"doctor area {area!r} has two check functions: "
                             f"{known.fn.__module__}.{known.fn.__qualname__} and "
                             f"{fn.__module__}.{fn.__qualname__}")
        _registered[area] = Area(area, fn, order)
        return fn

    return register


def _discover() -> None:
    global _discovered
    with _lock:
        if _discovered:
            return
        for name in OWN_AREAS:
            importlib.import_module(name)
        package = importlib.import_module(STAGES_PACKAGE)
        for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
            name = f"{STAGES_PACKAGE}.{info.name}.doctor"
            if info.ispkg and importlib.util.find_spec(name) is not None:
                importlib.import_module(name)
        _discovered = True


def areas() -> list[Area]:
    """Every registered area, in display order."""
    _discover()
    return sorted(_registered.values(), key=lambda a: (a.order, a.name))
