"""Fixtures for the archive, primary, backup and schedule tests: a root whose DB holds
embedded images with global rows and loose bg-removed files, a fake index shard, and helpers
to kill forked children at random moments."""
from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from pipeline.core.db import connect, transaction
from pipeline.core.root import Root

PYTHON = sys.executable


def write_config(root: Root, text: str) -> Root:
    """Append to the root's imageselector.toml and return a fresh Root (config re-read)."""
    path = root.config_path
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(text + "\n")
    return Root(root.path).ensure()


def fake_jpeg(listing_id: int, image_id: int, size: int | None = None) -> bytes:
    rng = random.Random(listing_id * 1000003 + image_id)
    n = size or rng.randint(1500, 4000)
    return b"\xff\xd8\xff\xe0" + rng.randbytes(n) + b"\xff\xd9"


def add_images(root: Root, n: int, start_row: int = 0, per_listing: int = 3, loose: bool = True,
               first_listing: int = 1000, state: str = "embedded") -> dict[tuple[int, int], str]:
    """Insert ``n`` images with global rows start_row.. (rank 1 of each listing is primary),
    write their loose files; returns {(lid, iid): sha256 of the bytes}."""
    conn = connect(root.db_path)
    hashes = {}
    now = time.time()
    rows = []
    for k in range(n):
        g = start_row + k
        lid = first_listing + g // per_listing
        rank = g % per_listing + 1
        iid = lid * 10 + rank
        rows.append((g, lid, iid, rank))
    with transaction(conn):
        for g, lid, iid, rank in rows:
            conn.execute("INSERT OR IGNORE INTO images(listing_id, image_id, rank, is_primary) VALUES (?,?,?,?)",
                         (lid, iid, rank, 1 if rank == 1 else 0))
            conn.execute("INSERT INTO image_status(listing_id, image_id, state, shard, shard_row, global_row, "
                         "updated_at) VALUES (?,?,?,?,?,?,?)", (lid, iid, state, g // 500000, g % 500000, g, now))
    conn.close()
    for g, lid, iid, rank in rows:
        data = fake_jpeg(lid, iid)
        hashes[(lid, iid)] = hashlib.sha256(data).hexdigest()
        if loose:
            (root.bgremoved_dir / f"{lid}_{iid}.jpg").write_bytes(data)
    return hashes


def write_shard(root: Root, n_rows: int, shard: int = 0, extra_files: bool = True) -> Path:
    """A shard folder shaped like the index store's (image_index.json in the original's row
    format, a manifest and a part), matching the DB's global rows."""
    conn = connect(root.db_path)
    rows = conn.execute("SELECT listing_id, image_id, global_row FROM image_status WHERE shard = ? "
                        "AND global_row IS NOT NULL ORDER BY global_row LIMIT ?", (shard, n_rows)).fetchall()
    conn.close()
    d = root.embeddings_dir / f"shard_{shard:04d}"
    (d / "parts").mkdir(parents=True, exist_ok=True)
    (d / "image_index.json").write_text(json.dumps([[lid, iid, g, "0" * 12] for lid, iid, g in rows]))
    if extra_files:
        (d / "manifest.jsonl").write_text(json.dumps({"shard": shard}) + "\n")
        (d / "parts" / "b000001.ids.npy").write_bytes(os.urandom(4096))
        (d / "clip_vitb32.faiss").write_bytes(os.urandom(8192))
    return d


def grow_db(root: Root, megabytes: float) -> None:
    """Add filler rows (alerts) until the DB file is about ``megabytes`` bigger."""
    conn = connect(root.db_path)
    blob = "x" * 4000
    n = int(megabytes * 1024 * 1024 / 4000)
    with transaction(conn):
        conn.executemany("INSERT INTO alerts(at, kind, text) VALUES (?, 'filler', ?)",
                         ((time.time(), blob) for _ in range(n)))
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def fork_and_kill(work, delay_s: float) -> int:
    """Run ``work()`` in a forked child of this (already imported) process and SIGKILL it
    after ``delay_s``. Returns the child's wait status (killed or exited)."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            work()
        except BaseException:
            code = 1
        os._exit(code)
    deadline = time.monotonic() + delay_s
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.001)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    _, status = os.waitpid(pid, 0)
    return status


def timed(work) -> float:
    """How long ``work()`` takes in a forked child (to spread the kill moments over it)."""
    t = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            work()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    return time.monotonic() - t


def cli(*args, root=None, timeout=120, env_extra=None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("IMAGESELECTOR_ROOT", None)
    env.update(env_extra or {})
    argv = [PYTHON, "-m", "imageselector"]
    if root is not None:
        argv += ["--root", str(getattr(root, "path", root))]
    return subprocess.run(argv + [str(a) for a in args], capture_output=True, text=True,
                          timeout=timeout, env=env, stdin=subprocess.DEVNULL)


def try_mount_tmpfs(path: Path, size: str = "2m", readonly: bool = False) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if readonly else "")
    try:
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)],
                              capture_output=True, text=True, timeout=20)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0 and os.path.ismount(path)


def umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=20)
