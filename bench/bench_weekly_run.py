"""Benchmark: the sandbox weekly run (`imageselector run pipeline`) from a fresh sandbox root to
its end, for N listings each: wall time, phase 1 and phase 2, and how much of phase 1 is
waiting (from the last image any phase-1 stage moved to the end of phase 1: the drain).
Prints its figures; never run as a test.

    .venv/bin/python bench/bench_weekly_run.py [--listings 20 200] [--check-s 5]
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipeline.core import db
from pipeline.core.fsutil import read_json_or_none
from pipeline.core.root import Root

PHASE1 = ("sync", "download", "orchestrate", "tar")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(root: Path, *args, timeout: float = 3600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "imageselector", "--root", str(root), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def one_run(listings: int, check_s: float) -> dict:
    base = Path(tempfile.mkdtemp(prefix="bench-weekly-"))
    path = base / "sandbox"
    env_home = base / "u2net"
    os.environ["U2NET_HOME"] = str(env_home)
    port = free_port()
    subprocess.run([sys.executable, "-m", "imageselector", "sandbox", "init", str(path), "--port", str(port)],
                   check=True, capture_output=True)
    root = Root(path)
    with open(root.config_path, "a") as fh:
        fh.write(f"\n[runner]\ncheck_s = {check_s}\n")
    qps = root.db_dir / "qps_config.json"
    qps.write_text(json.dumps({**json.loads(qps.read_text()), "qps": 100}))
    cli(path, "start", "etsy-api", "--listings", listings, "--qps", 0).check_returncode()
    try:
        started = time.time()
        out = cli(path, "run", "pipeline")
        wall = time.time() - started
    finally:
        cli(path, "stop", "etsy-api", "--wait")
    conn = db.open_db(root)
    steps = conn.execute("SELECT step, phase, started_at, ended_at, outcome FROM runner_steps ORDER BY rowid").fetchall()
    p1 = [s for s in steps if s[1] == 1]
    p2 = [s for s in steps if s[1] == 2]
    phase1_end = max(s[3] for s in p1)
    last_moved = max((read_json_or_none(root.heartbeat_path(n)) or {}).get("progress_at") or 0 for n in PHASE1)
    return {"listings": listings, "exit": out.returncode, "wall_s": wall,
            "phase1_s": phase1_end - min(s[2] for s in p1),
            "phase2_s": max(s[3] for s in p2) - min(s[2] for s in p2) if p2 else 0.0,
            "drain_wait_s": max(0.0, phase1_end - last_moved),
            "images": conn.execute("SELECT COUNT(*) FROM images").fetchone()[0],
            "outcomes": sorted({s[4] for s in steps}), "queues": db.queue_depths(conn)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--listings", type=int, nargs="+", default=[20, 200])
    ap.add_argument("--check-s", type=float, default=5.0, help="runner.check_s (the default is 5)")
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} cores; runner.check_s = {args.check_s}")
    print("| listings | images | exit | wall | phase 1 | phase 2 | phase-1 drain wait | step outcomes | left discovered/downloaded/batched |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n in args.listings:
        r = one_run(n, args.check_s)
        q = r["queues"]
        print(f"| {n} | {r['images']} | {r['exit']} | {r['wall_s']:.1f} s | {r['phase1_s']:.1f} s | "
              f"{r['phase2_s']:.1f} s | {r['drain_wait_s']:.1f} s | {', '.join(r['outcomes'])} | "
              f"{q['discovered']}/{q['downloaded']}/{q['batched']} |", flush=True)


if __name__ == "__main__":
    main()
