"""Status providers: each part adds its section of the snapshot by registering a function
here, so the snapshot imports no stage and a new stage adds its panel data without touching
the snapshot.

A stage registers from its package's ``status`` module (``pipeline/stages/<stage>/status.py``),
found and imported on first use: keep those modules light (no torch, faiss, textual).

A provider is ``fn(root, conn, now, errors) -> JSON-able value``; ``conn`` is None when the DB
could not be opened, and ``errors`` collects the lines the snapshot shows under its sections.
"""
from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import threading
from dataclasses import dataclass
from typing import Callable

Provider = Callable[..., object]

STAGES_PACKAGE = "pipeline.stages"


@dataclass(frozen=True)
class Registered:
    section: str
    fn: Provider
    order: int


_registered: dict[str, Registered] = {}
_discovered = False
_lock = threading.Lock()


def status_provider(section: str, order: int = 100) -> Callable[[Provider], Provider]:
    """Register ``fn`` as the provider of snapshot key ``section`` (lower ``order`` first)."""
    def register(fn: Provider) -> Provider:
        known = _registered.get(section)
        if known is not None and known.fn.__qualname__ != fn.__qualname__:
            raise ValueError(f"status section {section!r} has two providers: "
                             f"{known.fn.__module__}.{known.fn.__qualname__} and "
                             f"{fn.__module__}.{fn.__qualname__}")
        _registered[section] = Registered(section, fn, order)
        return fn

    return register


def _discover() -> None:
    """Import every stage package's ``status`` module (each registers what it provides)."""
    global _discovered
    with _lock:
        if _discovered:
            return
        package = importlib.import_module(STAGES_PACKAGE)
        for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
            name = f"{STAGES_PACKAGE}.{info.name}.status"
            if info.ispkg and importlib.util.find_spec(name) is not None:
                importlib.import_module(name)
        _discovered = True


def providers() -> list[Registered]:
    """Every registered provider, in display order."""
    _discover()
    return sorted(_registered.values(), key=lambda r: (r.order, r.section))
