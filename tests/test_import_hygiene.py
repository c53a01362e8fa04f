"""The house rules, read from the source (harlequin's import-hygiene test, statically): every
import statement, at module level or inside a function, is an edge of the import graph.

- nothing in pipeline/ or remote/ imports Textual or console/;
- remote/ imports no pipeline/ (it is the SSH library; pipeline -> remote only);
- pipeline/core/ imports no stage, no search, no index;
- a stage (pipeline/stages/<stage>/) imports no other stage, and the shared packages (models,
  index, search, status, batches, etsy) import no stage;
- no import cycle anywhere in pipeline/, remote/, console/, bench/, imageselector/.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("pipeline", "remote", "console", "imageselector")
SHARED = ("pipeline.models", "pipeline.index", "pipeline.search", "pipeline.status",
          "pipeline.batches", "pipeline.etsy", "pipeline.watch", "pipeline.doctor")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def source_modules() -> dict[str, Path]:
    found = {}
    for top in PACKAGES + ("bench",):
        for path in sorted((REPO / top).rglob("*.py")):
            found[module_name(path)] = path
    return found


MODULES = source_modules()


def imports_of(name: str, path: Path) -> set[str]:
    """Every module this file imports (``from X import y`` counts y when X.y is a module)."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names
                       if f"{base}.{alias.name}" in MODULES)
    return out


GRAPH = {name: imports_of(name, path) for name, path in MODULES.items()}


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _edges(source_prefix: str):
    for name, targets in GRAPH.items():
        if _within(name, source_prefix):
            for target in sorted(targets):
                yield name, target


def stage_of(name: str) -> str | None:
    parts = name.split(".")
    return parts[2] if len(parts) > 2 and parts[:2] == ["pipeline", "stages"] else None


def test_the_graph_sees_the_whole_tree():
    # A test that read nothing would pass every rule: prove it read the layers.
    assert "pipeline.core.db" in GRAPH and "pipeline.status.snapshot" in GRAPH
    assert "pipeline.core.db" in GRAPH["pipeline.status.snapshot"]
    assert any(stage_of(n) == "orchestrate" for n in GRAPH)


@pytest.mark.parametrize("package", ["pipeline", "remote"])
def test_pipeline_and_remote_import_no_textual_and_no_console(package):
    bad = [(a, b) for a, b in _edges(package)
           if _within(b, "textual") or _within(b, "textual_image") or _within(b, "console")]
    assert bad == []


def test_remote_imports_no_pipeline():
    assert [(a, b) for a, b in _edges("remote") if _within(b, "pipeline")] == []


def test_core_imports_no_stage_no_search_no_index():
    bad = [(a, b) for a, b in _edges("pipeline.core")
           if any(_within(b, p) for p in ("pipeline.stages", "pipeline.search", "pipeline.index"))]
    assert bad == []


def test_a_stage_imports_no_other_stage():
    bad = [(a, b) for a, b in _edges("pipeline.stages")
           if stage_of(b) is not None and stage_of(b) != stage_of(a)]
    assert bad == []


@pytest.mark.parametrize("package", SHARED)
def test_shared_packages_import_no_stage(package):
    assert [(a, b) for a, b in _edges(package) if _within(b, "pipeline.stages")] == []


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle among the project's modules, or None (iterative DFS)."""
    WHITE, GREY, BLACK = 0, 1, 2
    colour = {n: WHITE for n in graph}
    for start in sorted(graph):
        if colour[start] != WHITE:
            continue
        stack = [(start, iter(sorted(t for t in graph[start] if t in graph)))]
        path = [start]
        colour[start] = GREY
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                colour[node] = BLACK
                stack.pop()
                path.pop()
            elif colour[nxt] == GREY:
                return path[path.index(nxt):] + [nxt]
            elif colour[nxt] == WHITE:
                colour[nxt] = GREY
                path.append(nxt)
                stack.append((nxt, iter(sorted(t for t in graph[nxt] if t in graph))))
    return None


def _package_edges_removed(graph):
    # A package's __init__ that names its own submodules is not a cycle of design: drop the edges
    # from a package to what it contains, and from a module to the package it sits in.
    return {n: {t for t in ts if not _within(t, n) and not _within(n, t)} for n, ts in graph.items()}


def test_no_import_cycle():
    assert find_cycle(_package_edges_removed(GRAPH)) is None


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
