"""Verification: of a snapshot generation (every file against its manifest, quick_check and
index alignment of the DB copy, read-only: nothing in a generation is ever repaired) and of a
mirror (file counts and sizes of each source against its destination, quick_check of the DB
copy). Each verification of a target or mirror records its row in the backups table."""
from __future__ import annotations

import json
import os
import sqlite3
import stat
from pathlib import Path

from pipeline.core.fsutil import read_json_or_none
from pipeline.stages.backup.copying import sha256_file
from pipeline.stages.backup.generations import DB_REL, MANIFEST, generations
from pipeline.stages.backup.mirror import excluded, mirror_excludes, mirror_pairs
from pipeline.stages.backup.records import (MIRROR, MIRROR_VERIFY, SNAPSHOT_VERIFY, Outcome, db_write, describe,
                                            finish_row, start_row)
from pipeline.stages.backup.targets import BackupError, Mirror, Target


def open_copy_readonly(db: Path) -> sqlite3.Connection:
    """A copy in a read-only generation: immutable=1 (no -shm, no journal, no locks)."""
    return sqlite3.connect(f"file:{db}?mode=ro&immutable=1", uri=True)


def quick_check(db: Path) -> str:
    conn = open_copy_readonly(db)
    try:
        rows = conn.execute("PRAGMA quick_check").fetchall()
    finally:
        conn.close()
    return "ok" if rows == [("ok",)] else "; ".join(r[0] for r in rows[:5])


# ---------------------------------------------------------------------------
# Index alignment of a copy (read-only: never repairs anything in a generation)
# ---------------------------------------------------------------------------
def check_alignment(data_dir: Path, db: Path, sample: int = 2000) -> tuple[list[str], list[str]]:
    """(problems, notes) for the copied index shards against the copied DB.

    Each shard's image_index.json must be rows [listing_id, image_id, global_row, ...] with
    consecutive global rows; every DB image with a global row that the index covers must be
    the same pair there (a sample, plus the last row). Rows the DB knows beyond the derived
    image_index.json are a note (derived files are rebuilt from the parts), not a problem."""
    problems: list[str] = []
    notes: list[str] = []
    emb = Path(data_dir) / "embeddings"
    pairs: dict[int, tuple[int, int]] = {}
    if emb.is_dir():
        for shard in sorted(p for p in emb.iterdir() if p.is_dir() and p.name.startswith("shard_")):
            index_file = shard / "image_index.json"
            if not index_file.exists():
                notes.append(f"{shard.name}: no image_index.json")
                continue
            try:
                rows = json.loads(index_file.read_bytes())
            except (ValueError, OSError) as exc:
                problems.append(f"{shard.name}/image_index.json unreadable ({exc})")
                continue
            if isinstance(rows, dict):
                rows = rows.get("rows", [])
            prev = None
            for i, row in enumerate(rows):
                try:
                    lid, iid, g = int(row[0]), int(row[1]), int(row[2])
                except (TypeError, ValueError, IndexError):
                    problems.append(f"{shard.name}/image_index.json row {i} malformed")
                    break
                if prev is not None and g != prev + 1:
                    problems.append(f"{shard.name}/image_index.json row {i}: global row {g} "
                                    f"after {prev}")
                    break
                prev = g
                pairs[g] = (lid, iid)
    conn = open_copy_readonly(db)
    try:
        n_db = conn.execute("SELECT COUNT(*) FROM image_status WHERE global_row IS NOT NULL").fetchone()[0]
        last = conn.execute("SELECT global_row, listing_id, image_id FROM image_status "
                            "WHERE global_row IS NOT NULL ORDER BY global_row DESC LIMIT 1").fetchone()
        picks = conn.execute(
            "SELECT global_row, listing_id, image_id FROM image_status WHERE global_row IS NOT NULL "
            "ORDER BY RANDOM() LIMIT ?", (sample,)).fetchall()
    finally:
        conn.close()
    if last:
        picks.append(last)
    beyond = 0
    for g, lid, iid in picks:
        if g not in pairs:
            beyond += 1
            continue
        if pairs[g] != (lid, iid):
            problems.append(f"global row {g}: DB has {lid}_{iid}, the index has "
                            f"{pairs[g][0]}_{pairs[g][1]}")
            break
    if beyond and pairs:
        notes.append(f"{beyond} sampled DB rows are beyond the derived image_index.json")
    if n_db and not pairs and emb.is_dir() and any(emb.iterdir()):
        notes.append(f"DB has {n_db} indexed images but no image_index.json was found")
    return problems, notes


# ---------------------------------------------------------------------------
# Verifying a generation
# ---------------------------------------------------------------------------
def verify_generation(gen: Path, full: bool = True) -> list[str]:
    """Problems with a generation: every file against the manifest (sha256 when ``full``),
    quick_check and index alignment of its DB."""
    manifest = read_json_or_none(gen / MANIFEST)
    if not manifest:
        return [f"{gen}: no readable {MANIFEST}"]
    problems = []
    for rel, (size, digest, _) in manifest["files"].items():
        p = gen / rel
        try:
            st = p.stat()
        except FileNotFoundError:
            problems.append(f"{rel}: missing")
            continue
        if st.st_size != size:
            problems.append(f"{rel}: {st.st_size} bytes, manifest says {size}")
        elif full and sha256_file(p) != digest:
            problems.append(f"{rel}: checksum differs from the manifest")
    db = gen / DB_REL
    if db.exists():
        qc = quick_check(db)
        if qc != "ok":
            problems.append(f"quick_check: {qc}")
        else:
            problems += check_alignment(gen / "data", db)[0]
    return problems


def verify_target(root, conn, target: Target) -> Outcome:
    row = start_row(conn, target.name, SNAPSHOT_VERIFY)
    try:
        gens = generations(target.path)
        if not gens:
            raise BackupError(f"backup target {target.name}: no backup generation at {target.path}")
        problems = verify_generation(gens[-1])
        if problems:
            raise BackupError(f"backup target {target.name}: {gens[-1].name}: {problems[0]}"
                              + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""))
        finish_row(conn, row, True, verified=True, path=str(gens[-1]))
        return Outcome(target.name, SNAPSHOT_VERIFY, True, str(gens[-1]))
    except (BackupError, OSError, sqlite3.Error) as exc:
        msg = describe(exc, target.name)
        finish_row(conn, row, False, error=msg)
        return Outcome(target.name, SNAPSHOT_VERIFY, False, error=msg)


# ---------------------------------------------------------------------------
# Verifying a mirror
# ---------------------------------------------------------------------------
def count_tree(folder: Path, before: float | None = None, skip: set[str] = frozenset(),
               excludes: list[str] = ()) -> dict[str, int]:
    """{relative path: size} of the regular files under ``folder`` (files modified at or after
    ``before`` left out: they changed after the mirror began; the mirror's rsync excludes too)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        here = os.path.relpath(dirpath, folder)
        here = "" if here == "." else here + "/"
        dirnames[:] = [d for d in dirnames if not d.startswith(".~tmp~")
                       and not (excludes and excluded(here + d, True, excludes))]
        for f in filenames:
            p = Path(dirpath) / f
            rel = str(p.relative_to(folder))
            if rel in skip or (excludes and excluded(rel, False, excludes)):
                continue
            try:
                st = p.lstat()
            except FileNotFoundError:
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            if before is not None and st.st_mtime >= before:
                continue
            out[rel] = st.st_size
    return out


def verify_mirror(root, conn, m: Mirror, since: float | None = None) -> Outcome:
    """File counts and bytes of each source/destination pair (the original's check, kept
    honest: a missing or short file fails it). Files changed after ``since`` are left out."""
    row = start_row(conn, m.name, MIRROR_VERIFY)
    what = f"mirror {m.name}"
    try:
        if m.kind == "volume" and not os.path.ismount(m.mount or m.dest):
            raise BackupError(f"{what}: {m.mount or m.dest} is not a mounted volume")
        lines = []
        problems = []
        for src, dst, holds in mirror_pairs(root, m):
            skip = set()
            if holds:
                rel = str(root.db_path.relative_to(src))
                skip = {rel, rel + "-wal", rel + "-shm", rel + "-journal"}
            a = count_tree(src, since, skip, mirror_excludes(m))
            b = count_tree(dst, None, skip, mirror_excludes(m))
            missing = [r for r in a if r not in b]
            short = [r for r in a if r in b and b[r] != a[r]]
            lines.append(f"{src}: {len(a)} files {sum(a.values()):,} B; {dst}: {len(b)} files "
                         f"{sum(b.values()):,} B")
            if missing or short:
                problems.append(f"{dst}: {len(missing)} missing, {len(short)} of another size "
                                f"(first: {(missing + short)[0]})")
            if holds:
                db_dst = dst / root.db_path.relative_to(src)
                if not db_dst.exists():
                    problems.append(f"{db_dst}: no DB copy")
                else:
                    qc = quick_check(db_dst)
                    if qc != "ok":
                        problems.append(f"{db_dst}: quick_check {qc}")
        if problems:
            raise BackupError(f"{what}: verification failed: {problems[0]}")
        finish_row(conn, row, True, verified=True, path=str(m.dest), error=None)
        db_write(conn, lambda: conn.execute(
            "UPDATE backups SET verified = 1 WHERE backup_id = (SELECT MAX(backup_id) FROM backups "
            "WHERE target = ? AND kind = ? AND ok = 1)", (m.name, MIRROR)))
        return Outcome(m.name, MIRROR_VERIFY, True, str(m.dest), notes=lines)
    except (BackupError, OSError, sqlite3.Error) as exc:
        msg = str(exc) if isinstance(exc, BackupError) else describe(exc, m.name)
        finish_row(conn, row, False, error=msg)
        return Outcome(m.name, MIRROR_VERIFY, False, error=msg)
