"""Benchmark: the status snapshot's schedule section, with the next-fire and job-interval
results cached (now) against recomputing them on every refresh (before: the caches cleared
before each snapshot), side by side in one run on one root. Prints its figures.

    .venv/bin/python bench/bench_status_schedule.py [--n 50]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from pipeline.core import cron, schedule
from pipeline.core.root import Root
from pipeline.status.snapshot import snapshot


def timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=50)
    args = ap.parse_args()
    root = Root(Path(tempfile.mkdtemp(prefix="bench-schedule-")) / "root").ensure()
    with open(root.config_path, "a") as fh:
        fh.write(f'[backup.targets.usb]\nkind = "folder"\npath = "{root.path / "bk"}"\ncreate = true\n')
    root = Root(root.path)
    snapshot(root, with_locks=False)

    def uncached():
        cron.job_interval.cache_clear()
        cron._next_fire_after_minute.cache_clear()
        snapshot(root, with_locks=False)

    jobs = len(schedule.load_jobs(root))
    print(f"machine: {os.cpu_count()} cores; {jobs} schedule jobs; snapshot() without the lock view")
    print("| variant | median | p95 |")
    print("|---|---|---|")
    for name, fn in (("recomputed every refresh (before)", uncached),
                     ("cached per cron text / minute (now)", lambda: snapshot(root, with_locks=False))):
        ms = sorted(timed(fn, args.n))
        print(f"| {name} | {statistics.median(ms):.2f} ms | {ms[int(0.95 * (len(ms) - 1))]:.2f} ms |")


if __name__ == "__main__":
    main()
