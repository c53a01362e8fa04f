"""Restore: a snapshot generation of a backup target into a fresh root folder, every file
checked against the manifest while copied, and the choice of the generation to restore."""
from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from pipeline.core.errors import UserError
from pipeline.core.fsutil import fsync_dir, read_json_or_none
from pipeline.stages.backup.copying import copy_file, remove_tree
from pipeline.stages.backup.generations import DB_REL, MANIFEST, generations
from pipeline.stages.backup.targets import BackupError, Target


def restore(gen: Path, into: Path) -> dict:
    """Restore a generation into a fresh root folder ``into`` (missing or empty): every file
    checked against the manifest while copied, into a temporary sibling renamed at the end."""
    into = Path(into).absolute()
    if into.exists() and (not into.is_dir() or any(into.iterdir())):
        raise UserError(f"restore: {into} exists and is not empty (restore into a fresh folder)")
    manifest = read_json_or_none(gen / MANIFEST)
    if not manifest:
        raise BackupError(f"restore: {gen} is not a complete backup generation (no {MANIFEST})")
    tmp = into.parent / f".{into.name}.restoring-{os.getpid()}"
    remove_tree(tmp)
    try:
        tmp.mkdir(parents=True)
        for rel, (size, digest, mtime_ns) in manifest["files"].items():
            dst_rel = rel[len("config/"):] if rel.startswith("config/") else rel
            dst = tmp / dst_rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            n, got = copy_file(gen / rel, dst)
            if n != size or got != digest:
                raise BackupError(f"restore: {gen.name}/{rel} does not match its manifest "
                                  f"(backup damaged)")
            os.chmod(dst, 0o644)
            if mtime_ns:
                os.utime(dst, ns=(mtime_ns, mtime_ns))
        db = tmp / DB_REL
        if db.exists():
            conn = sqlite3.connect(str(db))
            try:
                qc = conn.execute("PRAGMA quick_check").fetchall()
            finally:
                conn.close()
            if qc != [("ok",)]:
                raise BackupError(f"restore: quick_check of the restored DB failed: {qc[:3]}")
        for dirpath, _, _ in os.walk(tmp):
            fsync_dir(Path(dirpath))
        if into.exists():
            into.rmdir()
        os.replace(tmp, into)
        fsync_dir(into.parent)
    except BaseException:
        remove_tree(tmp)
        raise
    from pipeline.core.root import Root

    Root(into).ensure()
    return {"generation": gen.name, "into": str(into), "files": len(manifest["files"]),
            "bytes": manifest.get("bytes")}


def pick_generation(target: Target, generation: str | None) -> Path:
    gens = generations(target.path)
    if not gens:
        raise UserError(f"backup target {target.name}: no backup generation at {target.path}")
    if generation is None:
        return gens[-1]
    for g in gens:
        if g.name == generation:
            return g
    raise UserError(f"backup target {target.name}: no generation {generation!r} "
                    f"(have: {', '.join(g.name for g in gens[-5:])})")
