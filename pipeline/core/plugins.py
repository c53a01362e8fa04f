"""A registry that stages add to from a module of their own, so the part that reads it (the
status snapshot, the doctor) imports no stage: ``pipeline/stages/<stage>/<module>.py`` is
found and imported on first use, by name (keep those modules light: no torch, faiss,
textual), and registers its functions with the decorator."""
from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import threading
from dataclasses import dataclass
from typing import Callable

STAGES_PACKAGE = "pipeline.stages"


@dataclass(frozen=True)
class Registered:
    name: str
    fn: Callable
    order: int


class StageRegistry:
    def __init__(self, what: str, stage_module: str, own_modules: tuple[str, ...] = ()):
        self.what = what                   # e.g. "status section", for the error message
        self.stage_module = stage_module   # e.g. "status": pipeline/stages/<stage>/status.py
        self.own_modules = own_modules     # modules of the reading package that register too
        self._registered: dict[str, Registered] = {}
        self._discovered = False
        self._lock = threading.Lock()

    def register(self, name: str, order: int = 100) -> Callable[[Callable], Callable]:
        """Register ``fn`` under ``name`` (lower ``order`` first); two for one name are refused."""
        def decorate(fn: Callable) -> Callable:
            known = self._registered.get(name)
            if known is not None and known.fn.__qualname__ != fn.__qualname__:
                raise ValueError(f"{self.what} {name!r} has two functions: "
                                 f"{known.fn.__module__}.{known.fn.__qualname__} and "
                                 f"{fn.__module__}.{fn.__qualname__}")
            self._registered[name] = Registered(name, fn, order)
            return fn

        return decorate

    def _discover(self) -> None:
        with self._lock:
            if self._discovered:
                return
            for name in self.own_modules:
                importlib.import_module(name)
            package = importlib.import_module(STAGES_PACKAGE)
            for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
                name = f"{STAGES_PACKAGE}.{info.name}.{self.stage_module}"
                if info.ispkg and importlib.util.find_spec(name) is not None:
                    importlib.import_module(name)
            self._discovered = True

    def entries(self) -> list[Registered]:
        """Every registered function, in display order."""
        self._discover()
        return sorted(self._registered.values(), key=lambda r: (r.order, r.name))
