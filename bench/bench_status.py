"""Benchmark: `status --json` on a DB with 10 million image_status rows, and `locks` with
300 processes running. Prints its figures; never run as a test.

    .venv/bin/python bench/bench_status.py [--rows 10000000] [--procs 300] [--dir /tmp/bench-status]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from pipeline.core import db
from pipeline.core.locks import LockTracker
from pipeline.core.root import Root
from pipeline.status.snapshot import snapshot


def build(root: Root, rows: int) -> None:
    conn = db.open_db(root)
    have = conn.execute("SELECT SUM(n) FROM queue_counts").fetchone()[0] or 0
    if have >= rows:
        print(f"DB already holds {have:,} image rows")
        return
    t0 = time.perf_counter()
    conn.execute("PRAGMA synchronous = OFF")
    states = ["discovered", "downloaded", "embedded", "tarred", "tarred", "tarred", "dead"]
    chunk = 200_000
    now = time.time()
    for start in range(have, rows, chunk):
        with db.transaction(conn):
            conn.executemany(
                "INSERT INTO image_status(listing_id, image_id, state, updated_at) VALUES (?,?,?,?)",
                ((i // 5, i, states[i % len(states)], now) for i in range(start, min(rows, start + chunk))))
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    print(f"built {rows:,} rows in {time.perf_counter() - t0:.0f} s; "
          f"DB {root.db_path.stat().st_size / 1e9:.2f} GB")


def timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def describe(name: str, ms: list[float]) -> None:
    ms = sorted(ms)
    print(f"{name:<44} median {statistics.median(ms):7.2f} ms   p95 {ms[max(0, int(len(ms) * 0.95) - 1)]:7.2f} ms"
          f"   (n={len(ms)})")


def cpu_timed(fn, n: int) -> list[float]:
    """CPU ms of this process per call: on a shared machine, what the call itself costs."""
    out = []
    for _ in range(n):
        t0 = time.process_time()
        fn()
        out.append((time.process_time() - t0) * 1000)
    return out


def sections(root: Root, tracker: LockTracker, n: int = 30) -> None:
    """Where one snapshot's time goes: each part timed alone (median wall / CPU ms), so a
    section that starts repeating work on every refresh shows here."""
    from pipeline.status.registry import providers
    from pipeline.status.snapshot import local_stage_names
    from pipeline.core.stage_observe import stage_status

    conn = db.open_db(root)
    now = time.time()
    parts = [("open_db + close", lambda: db.open_db(root).close()),
             ("queue depths", lambda: db.queue_depths(conn)),
             ("stages (heartbeat files)",
              lambda: [stage_status(root, name, now) for name in local_stage_names(root)]),
             ("locks (/proc/locks + descriptor scan)", lambda: tracker.holders(root.db_path, now=now))]
    parts += [(f"section {p.name}", (lambda p=p: p.fn(root, conn, now, [])))
              for p in providers()]
    for name, fn in parts:
        fn()
        wall, cpu = timed(fn, n), cpu_timed(fn, n)
        print(f"  {name:<42} wall {statistics.median(wall):6.2f} ms   cpu {statistics.median(cpu):6.2f} ms")
    conn.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--procs", type=int, default=300)
    ap.add_argument("--dir", default="/tmp/bench-status")
    ap.add_argument("--sections-only", action="store_true",
                    help="only the snapshot and its per-section breakdown (no CLI runs, no extra processes)")
    args = ap.parse_args()
    root = Root(args.dir).ensure()
    build(root, args.rows)
    print(f"machine: {os.cpu_count()} cores; python {sys.version.split()[0]}")

    tracker = LockTracker()
    describe("snapshot() in-process, locks included", timed(lambda: snapshot(root, tracker), 50))
    describe("  the same, CPU time of this process", cpu_timed(lambda: snapshot(root, tracker), 50))
    # a live display (the console) re-reads /proc/locks every refresh but scans every
    # process's descriptors only every console.lock_open_scan_s (5 s)
    live = LockTracker(open_scan_s=5.0)
    describe("snapshot(), descriptor scan every 5 s (live)", timed(lambda: snapshot(root, live), 50))
    sections(root, tracker)
    describe("snapshot() in-process, without locks", timed(lambda: snapshot(root, with_locks=False), 50))
    if args.sections_only:
        return
    conn = db.open_db(root)
    describe("queue depths alone (O(1) counters)", timed(lambda: db.queue_depths(conn), 200))
    describe("COUNT(*) GROUP BY state (what counters avoid)", timed(lambda: db.count_states_slowly(conn), 3))
    conn.close()
    cli = [sys.executable, "-m", "imageselector", "--root", str(root.path), "status", "--json"]
    describe("`imageselector status --json` incl. start-up", timed(
        lambda: subprocess.run(cli, capture_output=True, check=True), 10))

    describe(f"locks with {len(list(Path('/proc').glob('[0-9]*')))} processes",
             timed(lambda: tracker.holders(root.db_path), 50))
    sleepers = [subprocess.Popen(["sleep", "600"]) for _ in range(args.procs)]
    holders = [subprocess.Popen([sys.executable, "-c",
                                 "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); "
                                 "c.execute('select 1 from queue_counts').fetchone(); sys.stdin.read()",
                                 str(root.db_path)], stdin=subprocess.PIPE) for _ in range(3)]
    try:
        time.sleep(2)
        n = len(list(Path("/proc").glob("[0-9]*")))
        describe(f"locks with {n} processes (3 holders)", timed(lambda: tracker.holders(root.db_path), 50))
        describe(f"snapshot() with {n} processes", timed(lambda: snapshot(root, tracker), 50))
        describe("  the same, CPU time of this process", cpu_timed(lambda: snapshot(root, tracker), 50))
        describe(f"snapshot(), {n} processes, scan every 5 s", timed(lambda: snapshot(root, live), 50))
        describe(f"`imageselector locks --json`, {n} processes", timed(
            lambda: subprocess.run([sys.executable, "-m", "imageselector", "--root", str(root.path),
                                    "locks", "--json"], capture_output=True, check=True), 10))
        print("holders seen:", json.dumps([(h.pid, h.mode) for h in tracker.holders(root.db_path)]))
    finally:
        for p in sleepers:
            p.kill()
            p.wait()
        for p in holders:
            p.stdin.close()
            p.wait()


if __name__ == "__main__":
    main()
