"""Backup of a big DB with a steady writer running: how long the snapshot takes, and the
writer's longest commit (its stall) during the backup.

    .venv/bin/python bench/bench_backup.py --gb 2 [--dir /tmp/bench_backup]

Builds (once, reused) a root whose DB is about --gb GB, starts a writer process that commits
one small transaction every 5 ms and times each commit, then takes a snapshot to a folder
target and prints the figures."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

WRITER = r"""
import json, sqlite3, sys, time
db, out = sys.argv[1], sys.argv[2]
conn = sqlite3.connect(db, timeout=60, isolation_level=None)
conn.execute("PRAGMA busy_timeout = 60000")
conn.execute("PRAGMA synchronous = FULL")
import os
samples = []
stop_file = sys.argv[3]
while not os.path.exists(stop_file):
    t0 = time.time()
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO alerts(at, kind, text) VALUES (?, 'bench', 'x')", (t0,))
    conn.execute("COMMIT")
    samples.append((t0, time.time() - t0))
    time.sleep(0.005)
json.dump(samples, open(out, "w"))
"""


def build(root, gb: float) -> None:
    from pipeline.core.db import connect

    conn = connect(root.db_path, synchronous="OFF")
    have = root.db_path.stat().st_size
    want = int(gb * 1024 ** 3)
    blob = os.urandom(3000).hex()[:4000]
    t = time.time()
    while have < want:
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO alerts(at, kind, text) VALUES (?, 'filler', ?)",
                         ((time.time(), blob) for _ in range(20000)))
        conn.execute("COMMIT")
        have = root.db_path.stat().st_size
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    print(f"DB built: {root.db_path.stat().st_size / 1024 ** 3:.2f} GB in {time.time() - t:.0f} s", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=2.0)
    ap.add_argument("--dir", default="/tmp/bench_backup")
    ap.add_argument("--no-flush", action="store_true",
                    help="A/B: no periodic flush of the copy during the backup step")
    args = ap.parse_args()
    if args.no_flush:
        import functools

        import pipeline.stages.backup.snapshot as backup

        backup.backup_db = functools.partial(backup.backup_db, flush_every_s=3600.0)
    from pipeline.stages.backup.snapshot import snapshot
    from pipeline.stages.backup.targets import load_targets
    from pipeline.core.db import connect
    from pipeline.core.root import Root

    base = Path(args.dir)
    root = Root(base / "root").ensure()
    root.config_path.write_text(f'[backup.targets.bench]\nkind = "folder"\npath = "{base / "target"}"\n'
                                f'create = true\ngenerations = 1\n')
    root = Root(root.path).ensure()
    build(root, args.gb)
    size = root.db_path.stat().st_size
    samples_path = base / "writer.json"
    stop_file = base / "writer.stop"
    for p in (samples_path, stop_file):
        if p.exists():
            p.unlink()
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(root.db_path), str(samples_path),
                               str(stop_file)])
    time.sleep(3.0)  # the writer's baseline
    conn = connect(root.db_path)
    t0 = time.time()
    out = snapshot(root, conn, load_targets(root)[0])
    t1 = time.time()
    conn.close()
    time.sleep(2.0)
    stop_file.write_text("stop")
    writer.wait()
    samples = json.loads(samples_path.read_text())
    during = [d for t, d in samples if t0 <= t <= t1]
    before = [d for t, d in samples if t < t0]
    print(json.dumps({
        "db_gb": round(size / 1024 ** 3, 2), "ok": out.ok, "error": out.error,
        "snapshot_s": round(t1 - t0, 1), "db_mb_per_s": round(size / 1024 ** 2 / (t1 - t0), 1),
        "writer_commits_during_backup": len(during),
        "writer_longest_commit_during_backup_ms": round(max(during) * 1000, 1) if during else None,
        "writer_median_commit_during_backup_ms": round(sorted(during)[len(during) // 2] * 1000, 2) if during else None,
        "writer_longest_commit_before_backup_ms": round(max(before) * 1000, 1) if before else None,
    }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
