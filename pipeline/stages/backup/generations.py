"""Snapshot generations on a backup target: folders `data_YYYYmmdd_HHMMSS[_N]/` shaped like a
root, each with a MANIFEST.json; listing the complete ones, naming a new one, removing what an
interrupted snapshot left, and making a finished one read-only."""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

from pipeline.stages.backup.copying import remove_tree

GEN_RE = re.compile(r"^data_(\d{8}_\d{6})(?:_(\d+))?$")
MANIFEST = "MANIFEST.json"
DB_REL = "data/db/etsy_data.db"


def generations(target_path: Path) -> list[Path]:
    """Complete generations (renamed into place, with a manifest), oldest first."""
    try:
        names = os.listdir(target_path)
    except OSError:
        return []
    gens = [target_path / n for n in names if GEN_RE.match(n)]
    gens = [g for g in gens if (g / MANIFEST).is_file()]
    return sorted(gens, key=lambda g: _gen_key(g.name))


def _gen_key(name: str) -> tuple[str, int]:
    m = GEN_RE.match(name)
    return (m.group(1), int(m.group(2) or 1))


def new_gen_name(target_path: Path, now: float) -> str:
    """A name that sorts after every existing generation (retention removes the first ones),
    even when two run in the same second or the clock went back."""
    ts, n = time.strftime("%Y%m%d_%H%M%S", time.localtime(now)), 1
    existing = [_gen_key(g.name) for g in generations(target_path)]
    if existing and max(existing) >= (ts, n):
        ts, n = max(existing)
        n += 1
    while True:
        name = f"data_{ts}" if n == 1 else f"data_{ts}_{n}"
        if not (target_path / name).exists() and not (target_path / f".{name}.tmp").exists():
            return name
        n += 1


def cleanup_temps(target_path: Path) -> list[str]:
    """Remove what an interrupted snapshot left (we hold the target lock)."""
    removed = []
    for n in os.listdir(target_path):
        if n.startswith(".data_") and n.endswith(".tmp"):
            remove_tree(target_path / n)
            removed.append(n)
    return removed


def make_readonly(path: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(path, topdown=False):
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), 0o444)
        os.chmod(dirpath, 0o555)
