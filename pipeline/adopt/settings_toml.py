"""Merging adopted values into a root's TOML file and writing it back.

The root's own values win: a key the root already sets to something else is kept and reported
as a conflict, so running `adopt settings` again (or after the operator edited a value) never
undoes the operator's choice. The file is re-rendered (comments are not kept), so the previous
text is saved beside it first.
"""
from __future__ import annotations

import json
import re

_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def merge(existing: dict, adopted: dict, prefix: str = "") -> tuple[dict, list[tuple[str, object, object]], list[str]]:
    """(merged, conflicts [(dotted key, root's value, original's value)], keys added)."""
    out = dict(existing)
    conflicts, added = [], []
    for key, value in adopted.items():
        dotted = f"{prefix}{key}"
        if key not in existing:
            out[key] = value
            added.append(dotted)
        elif isinstance(existing[key], dict) and isinstance(value, dict):
            out[key], c, a = merge(existing[key], value, dotted + ".")
            conflicts += c
            added += a
        elif existing[key] != value:
            conflicts.append((dotted, existing[key], value))
    return out, conflicts, added


def _key(k: str) -> str:
    return k if _BARE.match(k) else json.dumps(k, ensure_ascii=False)


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)     # a TOML basic string
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def render(data: dict, header: str = "") -> str:
    """TOML for nested tables of scalars, lists and inline tables (lists of tables stay inline)."""
    lines = [header] if header else []

    def table(path: list[str], body: dict) -> None:
        scalars = {k: v for k, v in body.items() if not isinstance(v, dict)}
        subs = {k: v for k, v in body.items() if isinstance(v, dict)}
        if path and (scalars or not subs):
            lines.append("")
            lines.append("[" + ".".join(_key(p) for p in path) + "]")
        for k, v in scalars.items():
            lines.append(f"{_key(k)} = {_value(v)}")
        for k, v in subs.items():
            table(path + [k], v)

    table([], data)
    return "\n".join(lines).lstrip("\n") + "\n"
