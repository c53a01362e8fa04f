"""Benchmark the sync against the local Etsy API: the rate it holds, how fast it crawls
when nothing holds it back, and how many new images a request buys.

    .venv/bin/python bench/bench_sync.py [--window 60] [--listings 6000] [--threads 2]

1. Rate: the local API enforces 5 QPS (a one-second bucket, like Etsy's per-second limit)
   and the root's qps_config.json says 5; the real `imageselector run sync --once` runs for
   --window seconds, then KILL_SD stops it. Achieved QPS is measured at the server over the
   span from its first to its last API request; client-caused 429s are the server's
   per-second and per-day refusals (no fault is switched on).
2. Lifted: no limit on either side; the listings phase of a fresh root, listings/s.
3. Yield: new images per 1,000 requests for a first full pass (all phases), and for a
   second pass after 5% new listings appear (known, unchanged listings skip the batch call).
"""
from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.core.fsutil import atomic_write_bytes  # noqa: E402
from pipeline.core.root import Root  # noqa: E402
from pipeline.sandbox.catalogue import Catalogue  # noqa: E402
from pipeline.sandbox.etsy_api import LocalEtsyAPI  # noqa: E402

KEY = "benchkeystring:benchsharedsecret"
BANDS = [0, 15, 40, 90, 200, 500, 1500, 1000000]


def make_root(path: Path, base_url: str, qps: float, threads: int) -> Root:
    root = Root(path).ensure()
    key_file = root.path / "etsy.key"
    atomic_write_bytes(key_file, KEY.encode(), mode=0o600)
    (root.path / "imageselector.toml").write_text(
        f'[etsy]\nbase_url = "{base_url}"\nkey_file = "{key_file}"\n\n[sync]\nthreads = {threads}\n')
    (root.db_dir / "qps_config.json").write_text(json.dumps({"qps": qps, "daily_floor": 50,
                                                             "slowdown_fraction": 0.95}))
    (root.db_dir / "furniture_taxonomy_config.json").write_text(json.dumps(
        {"taxonomies": [{"id": 967, "name": "Furniture", "price_breaks": BANDS}]}))
    return Root(path).ensure()


def point_at(root: Root, base_url: str) -> None:
    path = root.path / "imageselector.toml"
    lines = [f'base_url = "{base_url}"' if line.startswith("base_url") else line
             for line in path.read_text().splitlines()]
    path.write_text("\n".join(lines) + "\n")


def run_cli(root: Root, *extra: str, window: float | None = None) -> tuple[int, float]:
    env = dict(os.environ)
    env.pop("IMAGESELECTOR_ROOT", None)
    argv = [sys.executable, "-m", "imageselector", "--root", str(root.path), "run", "sync", "--once", *extra]
    t0 = time.time()
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    if window is not None:
        try:
            proc.wait(timeout=window)
        except subprocess.TimeoutExpired:
            root.file("KILL_SD").write_text("bench")
    code = proc.wait()
    return code, time.time() - t0


def images(root: Root) -> int:
    conn = sqlite3.connect(root.db_path)
    try:
        return conn.execute("SELECT COUNT(*) FROM image_status").fetchone()[0]
    finally:
        conn.close()


def bench_rate(args, work: Path) -> None:
    with LocalEtsyAPI(listings=args.listings, api_key=KEY, qps=5, qpd=100000) as api:
        root = make_root(work / "rate", api.base_url, qps=5, threads=args.threads)
        code, wall = run_cli(root, window=args.window)
        st = api.stats()
        c = st["counters"]
        n = c.get("requests", 0)
        span = (st["last_at"] - st["first_at"]) if n > 1 else 0
        qps = (n - 1) / span if span else 0
        client_429 = c.get("limited_qps", 0) + c.get("limited_qpd", 0)
        print(f"rate: server limit 5 QPS, client 5 QPS, {args.threads} threads, window {args.window:.0f} s")
        print(f"  {n} requests over {span:.1f} s: {qps:.3f} QPS = {100 * qps / 5:.1f}% of the limit; "
              f"client-caused 429s: {client_429} (exit {code})")


def bench_lifted(args, work: Path) -> None:
    for threads in sorted({1, args.threads}):
        with LocalEtsyAPI(listings=args.listings, api_key=KEY) as api:
            root = make_root(work / f"lifted{threads}", api.base_url, qps=100000, threads=threads)
            code, wall = run_cli(root, "--phases", "taxonomy,listings")
            n = api.stats()["counters"]["requests"]
            print(f"lifted: {threads} thread(s): {args.listings} listings, {images(root)} images, "
                  f"{n} requests in {wall:.1f} s (process start included): "
                  f"{args.listings / wall:.0f} listings/s, {n / wall:.0f} requests/s (exit {code})")


def bench_yield(args, work: Path) -> None:
    shops = max(3, args.listings // 6)
    first_cat = Catalogue(listings=args.listings, shops=shops)
    with LocalEtsyAPI(catalogue=first_cat, api_key=KEY) as api:
        root = make_root(work / "yield", api.base_url, qps=100000, threads=args.threads)
        code, _ = run_cli(root)
        c = api.stats()["counters"]
        n, imgs = c["requests"], images(root)
        print(f"yield, first pass (all phases): {imgs} new images / {n} requests = "
              f"{1000 * imgs / n:.0f} per 1,000 requests (search {c.get('search')}, batch {c.get('batch')}, "
              f"shops {c.get('shop')}, reviews {c.get('reviews')}, exit {code})")
        listing_requests = c.get("search", 0) + c.get("batch", 0) + c.get("taxonomy", 0)
        print(f"  listings phase alone: {1000 * imgs / listing_requests:.0f} new images per 1,000 requests")
    grown = Catalogue(listings=int(args.listings * 1.05), shops=shops, epoch=first_cat.epoch)
    with LocalEtsyAPI(catalogue=grown, api_key=KEY) as api:
        point_at(root, api.base_url)
        before = images(root)
        code, _ = run_cli(root)
        c = api.stats()["counters"]
        n, new = c["requests"], images(root) - before
        print(f"yield, second pass with 5% new listings: {new} new images / {n} requests = "
              f"{1000 * new / n:.0f} per 1,000 requests (search {c.get('search')}, batch {c.get('batch')}, "
              f"shops {c.get('shop', 0)}, reviews {c.get('reviews', 0)}, exit {code})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=float, default=60.0, help="seconds of the 5 QPS run")
    parser.add_argument("--listings", type=int, default=6000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip", default="", help="comma list of rate,lifted,yield to skip")
    args = parser.parse_args()
    skip = set(args.skip.split(","))
    with tempfile.TemporaryDirectory(prefix="bench_sync_") as tmp:
        work = Path(tmp)
        if "lifted" not in skip:
            bench_lifted(args, work)
        if "yield" not in skip:
            bench_yield(args, work)
        if "rate" not in skip:
            bench_rate(args, work)


if __name__ == "__main__":
    main()
