"""Backups of data/: timestamped read-only snapshots on backup targets, rsync mirrors with
the writers paused while the DB is copied, their verification, status and restore.

A snapshot generation on a target is a folder `data_YYYYmmdd_HHMMSS/` shaped like a root:

    data/db/etsy_data.db        SQLite's online backup API in ONE step (pages=-1: an
                                incremental backup restarts on every write and never
                                finishes under steady writes), then journal_mode=DELETE so
                                the copy is one self-contained file
    data/...                    every other file of data/ (index shards included)
    config/                     imageselector.toml and hosts.toml, when present
    MANIFEST.json               every file with size, sha256 and the source's mtime

It is built under `.data_....tmp`, checked (PRAGMA quick_check on the DB copy, index
alignment of the copy against the copied DB, every file fsynced), made read-only and only
then renamed into place; older generations beyond the retention are removed after that.
A failure or a kill at any moment leaves the last good generation as it was and records
a failure (a killed run's row is closed as failed by the next run).

A file whose size and mtime equal the previous generation's record is hard-linked from it
instead of copied (rsync's --link-dest idea), so finalized index shards and the index
store's immutable per-batch parts are copied once; the active files and the DB every time.
Targets are `volume` (must be a mount point, on the same device as the path, and pass a
write test: never write into an empty mount point) or `folder` (DECISIONS.md).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sqlite3
import stat
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from pipeline.core.errors import UserError
from pipeline.core.fsutil import exclusive_lock, fsync_dir, read_json_or_none

GEN_RE = re.compile(r"^data_(\d{8}_\d{6})(?:_(\d+))?$")
MANIFEST = "MANIFEST.json"
DB_REL = "data/db/etsy_data.db"
CHUNK = 1024 * 1024
SNAPSHOT, MIRROR, MIRROR_VERIFY, SNAPSHOT_VERIFY = "snapshot", "mirror", "mirror-verify", "snapshot-verify"


class BackupError(UserError):
    """A backup, mirror or restore could not be done; the message says why."""


class BackupAborted(BackupError):
    """The backup stage was asked to stop in the middle of a copy."""


# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------
@dataclass
class Target:
    name: str
    kind: str                  # volume | folder
    path: Path
    mount: Path | None
    job: str
    generations: int
    create: bool
    max_bytes: int


@dataclass
class Mirror:
    name: str
    kind: str
    dest: Path
    mount: Path | None
    sources: list[str]
    job: str
    create: bool = False


def _abs(root, value: str) -> Path:
    p = Path(os.path.expanduser(str(value)))
    return Path(os.path.normpath(p if p.is_absolute() else root.path / p))


def _check_kind(where: str, kind) -> str:
    if kind not in ("volume", "folder"):
        raise UserError(f"{where}: kind must be \"volume\" or \"folder\", got {kind!r}")
    return kind


def load_targets(root) -> list[Target]:
    raw = root.config.get("backup.targets") or {}
    out = []
    for name, t in sorted(raw.items()):
        where = f"backup.targets.{name}"
        if not isinstance(t, dict) or "path" not in t:
            raise UserError(f"{where}: needs at least kind and path")
        kind = _check_kind(where, t.get("kind", "folder"))
        path = _abs(root, t["path"])
        mount = _abs(root, t["mount"]) if t.get("mount") else (path if kind == "volume" else None)
        gens = int(t.get("generations", root.config.get("backup.generations")))
        if gens < 1:
            raise UserError(f"{where}: generations must be at least 1, got {gens}")
        out.append(Target(name, kind, path, mount, str(t.get("job", "backup")), gens,
                          bool(t.get("create", False)), int(t.get("max_bytes", 0))))
    return out


def load_mirrors(root) -> list[Mirror]:
    raw = root.config.get("backup.mirrors") or {}
    out = []
    for name, m in sorted(raw.items()):
        where = f"backup.mirrors.{name}"
        if not isinstance(m, dict) or "dest" not in m or not m.get("sources"):
            raise UserError(f"{where}: needs dest and sources")
        kind = _check_kind(where, m.get("kind", "folder"))
        dest = _abs(root, m["dest"])
        mount = _abs(root, m["mount"]) if m.get("mount") else (dest if kind == "volume" else None)
        out.append(Mirror(name, kind, dest, mount, [str(s) for s in m["sources"]],
                          str(m.get("job", "mirror-data")), bool(m.get("create", False))))
    return out


def find_target(root, name: str) -> Target:
    for t in load_targets(root):
        if t.name == name:
            return t
    names = ", ".join(t.name for t in load_targets(root)) or "none configured"
    raise UserError(f"no backup target named {name!r} (targets: {names})")


# ---------------------------------------------------------------------------
# Target checks
# ---------------------------------------------------------------------------
def check_destination(kind: str, path: Path, mount: Path | None, create: bool, what: str) -> None:
    """Refuse a destination that is not there, not a mounted volume, or not writable."""
    if kind == "volume":
        mount = mount or path
        if not os.path.ismount(mount):
            raise BackupError(f"{what}: {mount} is not a mounted volume (refusing to write into "
                              f"an empty mount point)")
        try:
            rel = os.path.relpath(path, mount)
        except ValueError:
            rel = ".."
        if rel.startswith(".."):
            raise BackupError(f"{what}: {path} is not on the volume {mount}")
    if not path.exists():
        # under a verified mount point a missing folder is safe to create
        if create or (kind == "volume" and Path(path) != Path(mount or path)):
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise BackupError(f"{what}: cannot create {path} ({exc.strerror})") from None
        else:
            raise BackupError(f"{what}: {path} does not exist")
    if not path.is_dir():
        raise BackupError(f"{what}: {path} is not a folder")
    if kind == "volume" and os.stat(path).st_dev != os.stat(mount or path).st_dev:
        raise BackupError(f"{what}: {path} is not on the mounted volume {mount}")
    probe = path / f".write_test.{os.getpid()}"
    try:
        with open(probe, "wb") as fh:
            fh.write(b"ok")
            fh.flush()
            os.fsync(fh.fileno())
        os.unlink(probe)
    except OSError as exc:
        try:
            os.unlink(probe)
        except OSError:
            pass
        raise BackupError(f"{what}: {path} is not writable ({exc.strerror})") from None


@contextmanager
def _dir_lock(path: Path, what: str) -> Iterator[None]:
    with exclusive_lock(path / ".backup.lock") as held:
        if not held:
            raise BackupError(f"{what}: another backup is writing to {path}")
        yield


# ---------------------------------------------------------------------------
# Generations
# ---------------------------------------------------------------------------
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


def _new_gen_name(target_path: Path, now: float) -> str:
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


def _make_writable(path: Path) -> None:
    for dirpath, dirnames, _ in os.walk(path):
        os.chmod(dirpath, 0o755)


def remove_tree(path: Path) -> None:
    if path.exists():
        _make_writable(path)
        shutil.rmtree(path)


def cleanup_temps(target_path: Path) -> list[str]:
    """Remove what an interrupted snapshot left (we hold the target lock)."""
    removed = []
    for n in os.listdir(target_path):
        if n.startswith(".data_") and n.endswith(".tmp"):
            remove_tree(target_path / n)
            removed.append(n)
    return removed


def _make_readonly(path: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(path, topdown=False):
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), 0o444)
        os.chmod(dirpath, 0o555)


# ---------------------------------------------------------------------------
# Copying with hashes, links and a byte budget
# ---------------------------------------------------------------------------
class _Budget:
    """Bytes this snapshot may still write (a target's quota, or free space less the reserve)."""

    def __init__(self, limit: int | None, what: str):
        self.left = limit
        self.what = what

    def take(self, n: int) -> None:
        if self.left is None:
            return
        self.left -= n
        if self.left < 0:
            raise BackupError(f"{self.what}: target full (quota or reserve reached)")


def copy_file(src: Path, dst: Path, budget: _Budget | None = None) -> tuple[int, str]:
    """Copy with sha256 and fsync; returns (bytes, sha256)."""
    h = hashlib.sha256()
    n = 0
    with open(src, "rb") as fi, open(dst, "xb") as fo:
        while True:
            chunk = fi.read(CHUNK)
            if not chunk:
                break
            if budget is not None:
                budget.take(len(chunk))
            fo.write(chunk)
            h.update(chunk)
            n += len(chunk)
        fo.flush()
        os.fsync(fo.fileno())
    return n, h.hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(CHUNK)
            if not chunk:
                return h.hexdigest()
            h.update(chunk)


def _data_files(root) -> list[tuple[str, os.stat_result]]:
    """Every file of data/ except the live DB and its WAL/SHM, in a safe copy order: within
    an index shard, manifests first, then parts, then derived files (an index store commits
    a batch by its manifest line, so a copy taken in this order is never ahead of itself)."""
    out = []
    base = root.path
    skip = {root.db_path, Path(str(root.db_path) + "-wal"), Path(str(root.db_path) + "-shm"),
            Path(str(root.db_path) + "-journal")}
    for dirpath, dirnames, filenames in os.walk(root.data_dir):
        dirnames.sort()
        for f in filenames:
            p = Path(dirpath) / f
            if p in skip or f.startswith(".") and (f.endswith(".tmp") or f.endswith(".lock")):
                continue
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            if stat.S_ISREG(st.st_mode):
                out.append((str(p.relative_to(base)), st))

    def order(item):
        # within a shard: derived files, then the manifest, then the parts, so the copy is a
        # state a crash can leave (derived <= manifest <= parts), which the store recovers
        parts = item[0].split("/")
        if len(parts) >= 4 and parts[1] == "embeddings":
            rank = 1 if parts[3].startswith("manifest") else (2 if len(parts) > 4 else 0)
            return ("/".join(parts[:3]), rank, item[0])
        return ("/".join(parts[:-1]), 0, item[0])

    return sorted(out, key=order)


def backup_db(src_db: Path, dst: Path, busy_timeout_s: float = 60.0, flush_every_s: float = 0.2) -> None:
    """SQLite's online backup API in one step, then a self-contained rollback-journal file.

    The step runs without the GIL; meanwhile a thread flushes the copy every
    ``flush_every_s``, so the disk never holds gigabytes of dirty pages whose final flush
    would stall the live writers' commits (their fsync queues behind it)."""
    import threading

    src = sqlite3.connect(f"file:{src_db}?mode=ro", uri=True, timeout=busy_timeout_s)
    done = threading.Event()
    flusher = None
    try:
        src.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        dst_conn = sqlite3.connect(str(dst), isolation_level=None)
        try:
            dst_conn.execute("PRAGMA synchronous = OFF")
            fd = os.open(dst, os.O_RDONLY | os.O_CREAT, 0o644)

            def flush() -> None:
                while not done.wait(flush_every_s):
                    try:
                        os.fdatasync(fd)
                    except OSError:
                        return

            flusher = threading.Thread(target=flush, name="backup-flush", daemon=True)
            flusher.start()
            try:
                src.backup(dst_conn, pages=-1)
            finally:
                done.set()
                flusher.join()
                os.close(fd)
            dst_conn.execute("PRAGMA journal_mode = DELETE")
        finally:
            dst_conn.close()
    finally:
        done.set()
        src.close()
    fd = os.open(dst, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
# The backups table
# ---------------------------------------------------------------------------
def _db_write(conn, fn):
    from pipeline.core.db import retry_on_busy, transaction

    @retry_on_busy
    def run():
        with transaction(conn):
            return fn()

    return run()


def start_row(conn, target: str, kind: str, now: float | None = None) -> int:
    now = time.time() if now is None else now
    return _db_write(conn, lambda: conn.execute(
        "INSERT INTO backups(target, kind, started_at) VALUES (?, ?, ?)", (target, kind, now)).lastrowid)


def finish_row(conn, row_id: int, ok: bool, verified: bool = False, size: int | None = None,
               path: str | None = None, error: str | None = None) -> None:
    _db_write(conn, lambda: conn.execute(
        "UPDATE backups SET finished_at = ?, ok = ?, verified = ?, size_bytes = ?, path = ?, "
        "error = ? WHERE backup_id = ?",
        (time.time(), 1 if ok else 0, 1 if verified else 0, size, path, error, row_id)))


def close_interrupted(conn) -> int:
    """Rows of a backup that died without finishing: recorded as failed (call holding the
    backup lock, so no live backup owns them)."""
    return _db_write(conn, lambda: conn.execute(
        "UPDATE backups SET finished_at = ?, ok = 0, error = COALESCE(error, "
        "'interrupted: the backup process died before finishing') WHERE finished_at IS NULL",
        (time.time(),)).rowcount)


@contextmanager
def backup_lock(root) -> Iterator[None]:
    """The backup stage's instance lock (run/backup.lock), also taken by `backup verify`."""
    with exclusive_lock(root.lock_path("backup")) as held:
        if not held:
            raise BackupError("the backup stage is running on this root; try again when it ends")
        yield


# ---------------------------------------------------------------------------
# Snapshots
# ---------------------------------------------------------------------------
@dataclass
class Outcome:
    target: str
    kind: str
    ok: bool
    path: str | None = None
    size: int | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)


def _free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _tree_bytes(path: Path) -> int:
    total = 0
    seen = set()
    for dirpath, _, filenames in os.walk(path):
        for f in filenames:
            try:
                st = os.lstat(os.path.join(dirpath, f))
            except FileNotFoundError:
                continue
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            total += st.st_size
    return total


def snapshot(root, conn, target: Target, between: Callable[[], bool] | None = None,
             log=None, now: float | None = None) -> Outcome:
    """One snapshot generation on ``target``; records its row; never raises for a failure of
    the target (the Outcome says it), only for a bug."""
    row = start_row(conn, target.name, SNAPSHOT)
    checked = False
    try:
        check_destination(target.kind, target.path, target.mount, target.create,
                          f"backup target {target.name}")
        checked = True
        with _dir_lock(target.path, f"backup target {target.name}"):
            cleanup_temps(target.path)
            out = _write_generation(root, target, between, log, now)
        finish_row(conn, row, True, verified=True, size=out.size, path=out.path)
        return out
    except (BackupError, OSError, sqlite3.Error) as exc:
        msg = _describe(exc, target.name)
        if log:
            log.error("snapshot to %s failed: %s", target.name, msg)
        try:
            if checked:  # never touch a destination that failed its checks
                with _dir_lock(target.path, target.name):
                    cleanup_temps(target.path)
        except (OSError, BackupError):
            pass
        finish_row(conn, row, False, error=msg)
        return Outcome(target.name, SNAPSHOT, False, error=msg)
    except BaseException as exc:
        finish_row(conn, row, False, error=f"{type(exc).__name__}: {exc}")
        raise


def _describe(exc: BaseException, name: str) -> str:
    if isinstance(exc, BackupError):
        return str(exc)
    if isinstance(exc, OSError):
        import errno

        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return f"backup target {name}: target full ({exc.strerror}) while writing {exc.filename or ''}".rstrip()
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            return f"backup target {name}: not writable ({exc.strerror})"
        return f"backup target {name}: {exc.strerror or exc} ({exc.filename or ''})"
    return f"backup target {name}: {exc}"


def _write_generation(root, target: Target, between, log, now) -> Outcome:
    now = time.time() if now is None else now
    tpath = target.path
    name = _new_gen_name(tpath, now)
    tmp = tpath / f".{name}.tmp"
    prev = generations(tpath)
    prev_gen = prev[-1] if prev else None
    prev_files = {}
    if prev_gen is not None:
        prev_files = (read_json_or_none(prev_gen / MANIFEST) or {}).get("files", {})
    files = _data_files(root)
    # space: the DB and every file that cannot be linked from the previous generation
    try:
        db_size = root.db_path.stat().st_size + _size_or_zero(Path(str(root.db_path) + "-wal"))
    except FileNotFoundError:
        raise BackupError(f"backup target {target.name}: no DB at {root.db_path}") from None
    # files that are one inode under several names (an adopted shard's part and its derived
    # index) are copied once per generation and linked under their other names
    seen_inodes: set[tuple[int, int]] = set()
    need = db_size
    for rel, st in files:
        if _linkable(prev_files.get(rel), st):
            continue
        if st.st_nlink > 1:
            if (st.st_dev, st.st_ino) in seen_inodes:
                continue
            seen_inodes.add((st.st_dev, st.st_ino))
        need += st.st_size
    reserve = int(root.config.get("backup.min_free_bytes"))
    free = _free_bytes(tpath) - reserve
    limit = free
    if target.max_bytes:
        limit = min(limit, target.max_bytes - _tree_bytes(tpath))
    if need > limit:
        raise BackupError(f"backup target {target.name}: target full: needs {need:,} bytes, "
                          f"{max(limit, 0):,} available at {tpath}")
    budget = _Budget(limit, f"backup target {target.name}")
    manifest_files: dict[str, list] = {}
    try:
        (tmp / "data" / "db").mkdir(parents=True)
        # 1. the DB, first: index files copied after it can only be ahead of it
        db_copy = tmp / DB_REL
        backup_db(root.db_path, db_copy, float(root.config.get("db.busy_timeout_s")) * 6)
        db_bytes = db_copy.stat().st_size
        budget.take(db_bytes)
        manifest_files[DB_REL] = [db_bytes, sha256_file(db_copy), None]
        # 2. the rest of data/, linked from the previous generation where unchanged
        linked = copied = 0
        copied_inodes: dict[tuple[int, int], str] = {}
        for rel, st in files:
            if between is not None and not between():
                raise BackupAborted(f"backup target {target.name}: stopped (kill file or signal) "
                                    f"before finishing; the last good backup is unchanged")
            dst = tmp / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            rec = prev_files.get(rel)
            if _linkable(rec, st):
                try:
                    os.link(prev_gen / rel, dst)
                    manifest_files[rel] = list(rec)
                    linked += 1
                    continue
                except OSError:
                    pass  # a filesystem without hard links: copy
            twin = copied_inodes.get((st.st_dev, st.st_ino)) if st.st_nlink > 1 else None
            if twin is not None:
                try:
                    os.link(tmp / twin, dst)
                    manifest_files[rel] = list(manifest_files[twin][:2]) + [st.st_mtime_ns]
                    linked += 1
                    continue
                except OSError:
                    pass
            try:
                n, digest = copy_file(root.path / rel, dst, budget)
            except FileNotFoundError:
                continue  # removed since the walk (e.g. an orphan part cleaned up)
            manifest_files[rel] = [n, digest, st.st_mtime_ns]
            if st.st_nlink > 1:
                copied_inodes[(st.st_dev, st.st_ino)] = rel
            copied += 1
        # 3. the root's config (no secrets by design)
        for cfg_name in ("imageselector.toml", "hosts.toml"):
            src = root.path / cfg_name
            if src.is_file():
                (tmp / "config").mkdir(exist_ok=True)
                n, digest = copy_file(src, tmp / "config" / cfg_name, budget)
                manifest_files[f"config/{cfg_name}"] = [n, digest, None]
        # 4. checks on the copy before it may replace anything
        qc = quick_check(db_copy)
        if qc != "ok":
            raise BackupError(f"backup target {target.name}: quick_check of the DB copy failed: {qc}")
        problems, notes = check_alignment(tmp / "data", db_copy)
        if problems:
            raise BackupError(f"backup target {target.name}: index alignment of the copy failed: "
                              f"{problems[0]}")
        size = sum(v[0] for v in manifest_files.values())
        manifest = {"format": 1, "generation": name, "created": now, "finished": time.time(),
                    "root": str(root.path), "files": manifest_files, "bytes": size,
                    "linked": linked, "copied": copied,
                    "checks": {"quick_check": qc, "alignment_notes": notes}}
        with open(tmp / MANIFEST, "x", encoding="utf-8") as fh:
            json.dump(manifest, fh, indent=0)
            fh.flush()
            os.fsync(fh.fileno())
        for dirpath, _, _ in os.walk(tmp):
            fsync_dir(Path(dirpath))
        _make_readonly(tmp)
        final = tpath / name
        os.replace(tmp, final)
        fsync_dir(tpath)
    except BaseException:
        remove_tree(tmp)
        raise
    # 5. retention, only after a new good generation is in place
    for old in generations(tpath)[:-target.generations]:
        remove_tree(old)
        if log:
            log.info("retention: removed %s", old)
    if log:
        log.info("snapshot %s on %s: %d files copied, %d linked, %d bytes",
                 name, target.name, copied, linked, size)
    return Outcome(target.name, SNAPSHOT, True, str(final), size, notes=notes)


def _size_or_zero(p: Path) -> int:
    try:
        return p.stat().st_size
    except FileNotFoundError:
        return 0


def _linkable(rec, st) -> bool:
    return bool(rec) and rec[2] is not None and rec[0] == st.st_size and rec[2] == st.st_mtime_ns


# ---------------------------------------------------------------------------
# Verifying and restoring a generation
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
        msg = _describe(exc, target.name)
        finish_row(conn, row, False, error=msg)
        return Outcome(target.name, SNAPSHOT_VERIFY, False, error=msg)


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


# ---------------------------------------------------------------------------
# Mirrors
# ---------------------------------------------------------------------------
def _mirror_pairs(root, mirror: Mirror) -> list[tuple[Path, Path, bool]]:
    """(source, destination, holds_the_db) per source of a mirror."""
    pairs = []
    for s in mirror.sources:
        p = Path(os.path.expanduser(s))
        if p.is_absolute():
            src, dst = p, mirror.dest / p.name
        else:
            src, dst = root.path / p, mirror.dest / p
        holds_db = _is_within(root.db_path, src)
        pairs.append((src, dst, holds_db))
    return pairs


def _is_within(path: Path, folder: Path) -> bool:
    try:
        Path(path).absolute().relative_to(Path(folder).absolute())
        return True
    except ValueError:
        return False


def _rsync(root, src: Path, dst: Path, excludes: list[str], what: str) -> None:
    prog = root.config.get("backup.rsync")
    exe = shutil.which(prog)
    if exe is None:
        raise BackupError(f"{what}: rsync is not installed (looked for {prog!r}); install it "
                          f"(Debian/Ubuntu: apt-get install rsync; macOS ships one)")
    dst.mkdir(parents=True, exist_ok=True)
    argv = [exe, *root.config.get("backup.rsync_args")]
    for e in excludes:
        argv += ["--exclude", e]
    argv += [f"{src}/", f"{dst}/"]
    proc = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or [""]
        raise BackupError(f"{what}: rsync {src} -> {dst} failed (exit {proc.returncode}): {tail[0]}")


def _db_excludes(root, src: Path) -> list[str]:
    rel = "/" + str(root.db_path.relative_to(src))
    return [rel, rel + "-wal", rel + "-shm", rel + "-journal", "/" + str(Path(rel).parent)[1:] + "/.*.tmp"]


@contextmanager
def writers_paused(root, timeout_s: float, log=None) -> Iterator[None]:
    """Pause every pausable stage (the pause protocol) and wait until each live one has
    acknowledged; resume on exit. Pause files the operator made are left in place."""
    from pipeline.core.stage import PAUSABLE, STAGES, all_writers_paused, pause_acknowledged, pause_stages, resume_stages

    ours = [n for n in PAUSABLE if not root.file(STAGES[n].pause_file).exists()]
    pause_stages(root, ours)
    try:
        deadline = time.monotonic() + timeout_s
        while not all_writers_paused(root):
            if time.monotonic() >= deadline:
                waiting = [n for n in PAUSABLE if pause_acknowledged(root, n) is False]
                raise BackupError(f"writers did not pause within {timeout_s:.0f} s "
                                  f"({', '.join(waiting)}); mirror not taken")
            time.sleep(0.1)
        if log:
            log.info("writers paused")
        yield
    finally:
        resume_stages(root, ours)


def mirror(root, conn, m: Mirror, log=None) -> Outcome:
    row = start_row(conn, m.name, MIRROR)
    started = time.time()
    what = f"mirror {m.name}"
    try:
        check_destination(m.kind, m.dest, m.mount, m.create, what)
        pairs = _mirror_pairs(root, m)
        for src, _, _ in pairs:
            if not src.exists():
                raise BackupError(f"{what}: source {src} does not exist")
        with _dir_lock(m.dest, what):
            db_pairs = [p for p in pairs if p[2]]
            if db_pairs:
                with writers_paused(root, float(root.config.get("backup.pause_timeout_s")), log):
                    for src, dst, _ in db_pairs:
                        db_dst = dst / root.db_path.relative_to(src)
                        db_dst.parent.mkdir(parents=True, exist_ok=True)
                        tmp = db_dst.with_name(f".{db_dst.name}.tmp")
                        _unlink(tmp)
                        backup_db(root.db_path, tmp)
                        os.replace(tmp, db_dst)
                        fsync_dir(db_dst.parent)
                        _rsync(root, src, dst, _db_excludes(root, src), what)
            for src, dst, holds in pairs:
                if not holds:
                    _rsync(root, src, dst, [], what)
        size = sum(_tree_bytes(dst) for _, dst, _ in pairs)
        finish_row(conn, row, True, size=size, path=str(m.dest))
        out = Outcome(m.name, MIRROR, True, str(m.dest), size)
    except (BackupError, OSError, sqlite3.Error) as exc:
        msg = _describe(exc, m.name) if not isinstance(exc, BackupError) else str(exc)
        if log:
            log.error("%s failed: %s", what, msg)
        finish_row(conn, row, False, error=msg)
        return Outcome(m.name, MIRROR, False, error=msg)
    return out


def count_tree(folder: Path, before: float | None = None, skip: set[str] = frozenset()) -> dict[str, int]:
    """{relative path: size} of the regular files under ``folder`` (files modified at or after
    ``before`` left out: they changed after the mirror began)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".~tmp~")]
        for f in filenames:
            p = Path(dirpath) / f
            rel = str(p.relative_to(folder))
            if rel in skip:
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
        for src, dst, holds in _mirror_pairs(root, m):
            skip = set()
            if holds:
                rel = str(root.db_path.relative_to(src))
                skip = {rel, rel + "-wal", rel + "-shm", rel + "-journal"}
            a = count_tree(src, since, skip)
            b = count_tree(dst, None, skip)
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
        _db_write(conn, lambda: conn.execute(
            "UPDATE backups SET verified = 1 WHERE backup_id = (SELECT MAX(backup_id) FROM backups "
            "WHERE target = ? AND kind = ? AND ok = 1)", (m.name, MIRROR)))
        return Outcome(m.name, MIRROR_VERIFY, True, str(m.dest), notes=lines)
    except (BackupError, OSError, sqlite3.Error) as exc:
        msg = str(exc) if isinstance(exc, BackupError) else _describe(exc, m.name)
        finish_row(conn, row, False, error=msg)
        return Outcome(m.name, MIRROR_VERIFY, False, error=msg)


# ---------------------------------------------------------------------------
# Status
# ---------------------------------------------------------------------------
def job_interval_s(root, job: str) -> float | None:
    try:
        from pipeline.core.schedule import job_interval, load_jobs

        jobs = load_jobs(root)
        return job_interval(jobs[job].cron) if job in jobs else None
    except UserError:
        return None


def backup_status(root, conn, now: float | None = None, configured: bool = True) -> list[dict]:
    """Per target and mirror: last success, age, size, verified, overdue. The configured
    ones first (never run: overdue), then any the backups table still remembers that the
    config no longer names (``configured`` false, never overdue). ``configured=False``
    lists only the remembered ones (for a status whose backup config does not parse)."""
    now = time.time() if now is None else now
    factor = float(root.config.get("backup.overdue_factor"))
    items = []
    if configured:
        items = [(t.name, SNAPSHOT, t.job, str(t.path), t.kind) for t in load_targets(root)]
        items += [(m.name, MIRROR, m.job, str(m.dest), m.kind) for m in load_mirrors(root)]
    named = {(name, kind) for name, kind, *_ in items}
    items += [(name, kind, None, None, None) for name, kind in conn.execute(
        "SELECT DISTINCT target, kind FROM backups WHERE kind IN (?, ?) ORDER BY target, kind",
        (SNAPSHOT, MIRROR)) if (name, kind) not in named]
    out = []
    for name, kind, job, path, tkind in items:
        ok_row = conn.execute(
            "SELECT finished_at, size_bytes, verified, path FROM backups WHERE target = ? AND kind = ? "
            "AND ok = 1 ORDER BY finished_at DESC LIMIT 1", (name, kind)).fetchone()
        last = conn.execute(
            "SELECT started_at, finished_at, ok, error FROM backups WHERE target = ? AND kind = ? "
            "ORDER BY started_at DESC, backup_id DESC LIMIT 1", (name, kind)).fetchone()
        vkind = SNAPSHOT_VERIFY if kind == SNAPSHOT else MIRROR_VERIFY
        ver = conn.execute(
            "SELECT finished_at, ok, error FROM backups WHERE target = ? AND kind = ? AND finished_at "
            "IS NOT NULL ORDER BY finished_at DESC LIMIT 1", (name, vkind)).fetchone()
        interval = job_interval_s(root, job) if job else None
        last_success = ok_row[0] if ok_row else None
        age = round(now - last_success, 1) if last_success else None
        verified = bool(ok_row and ok_row[2])
        if ver is not None and ok_row is not None and ver[0] >= ok_row[0]:
            verified = bool(ver[1])  # a later verification decides
        in_progress = bool(last and last[1] is None)
        failed_last = bool(last and last[1] is not None and not last[2])
        out.append({
            "target": name, "kind": kind, "target_kind": tkind, "path": path, "job": job,
            "configured": tkind is not None,
            "last_success": last_success, "age_s": age,
            "size_bytes": ok_row[1] if ok_row else None, "verified": verified,
            "interval_s": interval,
            "overdue": tkind is not None and (last_success is None
                                              or (interval is not None and age > interval * factor)),
            "last_attempt": last[0] if last else None,
            "last_ok": None if not last or last[1] is None else bool(last[2]),
            "in_progress": in_progress,
            "last_error": last[3] if failed_last else None,
            "last_verify": ver[0] if ver else None,
            "last_verify_error": ver[2] if ver and not ver[1] else None,
        })
    return out


def status_view(root, conn, now: float, errors: list[str]) -> list[dict]:
    """The status snapshot's and the console's ``backups``: backup_status; when the backup
    config does not parse, the targets the DB remembers, with the error in ``errors``."""
    try:
        return backup_status(root, conn, now)
    except UserError as exc:
        errors.append(f"backups: {exc}")
        return backup_status(root, conn, now, configured=False)


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
