"""Benchmark: the runner's own overhead (CPU seconds per hour of a run) and the time from
KILL_PIPELINE to every stage stopped. Uses the selftest stage as phase-1 work, so it runs on
any root. Prints its figures; never run as a test.

    .venv/bin/python bench/bench_runner.py [--seconds 120] [--check-s 5]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from pipeline.core import db
from pipeline.core.fsutil import read_json_or_none
from pipeline.core.root import Root
from pipeline.core.stage_observe import is_live, stage_status


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=120)
    ap.add_argument("--check-s", type=float, default=5.0)
    args = ap.parse_args()
    root = Root(Path(tempfile.mkdtemp(prefix="bench-runner-")) / "root").ensure()
    root.config_path.write_text(
        "[runner]\n"
        f'phase1 = ["selftest --work-s 0.5"]\ndriver = "selftest"\nphase2 = []\ncheck_s = {args.check_s}\n')
    conn = db.open_db(root)
    with db.transaction(conn):
        db.add_discovered_images(conn, [(i, i) for i in range(100_000)])
    cli = [sys.executable, "-m", "imageselector", "--root", str(root.path)]
    subprocess.run(cli + ["start", "pipeline"], check=True, capture_output=True)
    pid = read_json_or_none(root.heartbeat_path("pipeline"))["pid"]
    proc = psutil.Process(pid)
    time.sleep(3)  # past start-up (imports, first checks)
    t0, c0 = time.time(), sum(proc.cpu_times()[:2])
    time.sleep(args.seconds)
    t1, c1 = time.time(), sum(proc.cpu_times()[:2])
    cpu_per_hour = (c1 - c0) / (t1 - t0) * 3600
    print(f"machine: {psutil.cpu_count()} cores; runner check interval {args.check_s} s")
    print(f"runner CPU: {c1 - c0:.3f} s over {t1 - t0:.0f} s = {cpu_per_hour:.1f} CPU s per hour "
          f"= {cpu_per_hour / 36:.3f}% of one core")
    k0 = time.time()
    root.file("KILL_PIPELINE").write_text("")
    while is_live(stage_status(root, "pipeline")) or is_live(stage_status(root, "selftest")):
        time.sleep(0.02)
    print(f"KILL_PIPELINE -> runner and every stage stopped: {time.time() - k0:.2f} s "
          f"(selftest units take 0.5 s; runner checks every {args.check_s} s)")


if __name__ == "__main__":
    main()
