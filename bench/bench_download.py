"""Benchmark: this downloader vs img2dataset, side by side, against one local nginx.

    .venv/bin/python bench/bench_download.py [--images 5000] [--distinct 1000]
        [--workers 16,8] [--img2dataset /tmp/bench-venv/bin/img2dataset] [--work /tmp/dl-bench]

Serves N JPEGs (about 200 KB, 1000x700 = 0.7 MP; `--distinct` different pictures, hard-linked
under N names) from nginx started here on a loopback port with a temp config, stopped by its
pid. Runs `imageselector run download --once` (full verification) and img2dataset
(`--resize_mode no`, 2 processes x 8 threads, shards of 250, NO_ALBUMENTATIONS_UPDATE=1) in
the same run, and prints images/s (whole process, and excluding start-up), the ratio, and
CPU seconds per 1,000 images (user+system of the process and its children; nginx apart).
img2dataset lives in its own venv (not a project dependency):
    python3 -m venv /tmp/bench-venv && /tmp/bench-venv/bin/pip install img2dataset
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def make_images(folder: Path, n: int, distinct: int) -> tuple[int, int]:
    """n JPEGs ~200 KB, 1000x700 (cached between runs). Returns (count, mean bytes)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / f".made-{n}-{distinct}"
    if not marker.exists():
        for p in folder.glob("*.jpg"):
            p.unlink()
        w, h = 1000, 700
        y, x = np.mgrid[0:h, 0:w]
        for i in range(distinct):
            rng = np.random.default_rng(i)
            base = np.stack([x * 255 / w, y * 255 / h, (x + y) * 128 / (w + h)], -1)
            blocks = rng.integers(0, 255, (h // 16 + 1, w // 16 + 1, 3)).repeat(16, 0).repeat(16, 1)[:h, :w]
            arr = 0.5 * base + 0.5 * blocks + rng.normal(0, 8.5, (h, w, 3))
            out = io.BytesIO()
            Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=90)
            (folder / f"{i}.jpg").write_bytes(out.getvalue())
        for i in range(distinct, n):
            os.link(folder / f"{i % distinct}.jpg", folder / f"{i}.jpg")
        marker.touch()
    sizes = [(folder / f"{i}.jpg").stat().st_size for i in range(n)]
    return n, sum(sizes) // n


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Nginx:
    def __init__(self, nginx: str, images: Path, work: Path):
        self.port = free_port()
        self.dir = work / "nginx"
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        conf = self.dir / "nginx.conf"
        conf.write_text(f"""
worker_processes 1;
daemon off;
pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 120;
    types {{ image/jpeg jpg; }}
    client_body_temp_path {self.dir}/body;
    proxy_temp_path {self.dir}/proxy;
    fastcgi_temp_path {self.dir}/fastcgi;
    uwsgi_temp_path {self.dir}/uwsgi;
    scgi_temp_path {self.dir}/scgi;
    server {{
        listen 127.0.0.1:{self.port};
        root {images};
    }}
}}
""")
        self.proc = subprocess.Popen([nginx, "-c", str(conf), "-p", str(self.dir), "-e",
                                      str(self.dir / "error.log")], stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                if self.proc.poll() is not None:
                    raise SystemExit(f"nginx exited: {(self.dir / 'error.log').read_text()}")
                time.sleep(0.05)
        raise SystemExit("nginx did not start listening")

    def cpu_s(self) -> float:
        import psutil

        total = 0.0
        try:
            master = psutil.Process(self.proc.pid)
            for p in [master, *master.children()]:
                t = p.cpu_times()
                total += t.user + t.system
        except psutil.Error:
            pass
        return total

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)  # fast shutdown of master and workers
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def run_measured(argv: list[str], env: dict, cwd: Path | None = None, log: Path | None = None):
    """Run a command; wall seconds and CPU seconds (user+sys, it and its reaped children)."""
    out = open(log, "wb") if log else subprocess.DEVNULL
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                            stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if log:
        out.close()
    return proc.returncode, wall, usage.ru_utime + usage.ru_stime


def bench_ours(base_url: str, n: int, workers: int, work: Path) -> dict:
    from pipeline.core.db import add_discovered_images, connect, transaction

    root = work / f"root-ours-{workers}"
    shutil.rmtree(root, ignore_errors=True)
    (root / "data" / "db").mkdir(parents=True)
    conn = connect(root / "data" / "db" / "etsy_data.db")
    with transaction(conn):
        conn.executemany("INSERT INTO images(listing_id, image_id, rank, is_primary, url) "
                         "VALUES (?, ?, 1, 1, ?)",
                         [(i, i, f"{base_url}/{i}.jpg") for i in range(n)])
        add_discovered_images(conn, [(i, i) for i in range(n)])
    conn.close()
    env = dict(os.environ)
    env.pop("IMAGESELECTOR_ROOT", None)
    argv = [str(REPO / ".venv" / "bin" / "python"), "-m", "imageselector", "--root", str(root),
            "run", "download", "--once", "--workers", str(workers),
            "--max-in-flight", str(workers * 2)]
    code, wall, cpu = run_measured(argv, env, cwd=REPO, log=work / f"ours-{workers}.out")
    if code != 0:
        raise SystemExit(f"downloader exited {code}: see {work / f'ours-{workers}.out'}")
    hb = json.loads((root / "run" / "download.json").read_text())
    in_stage = hb["exit"]["at"] - hb["started"]
    conn = sqlite3.connect(root / "data" / "db" / "etsy_data.db")
    done = conn.execute("SELECT COUNT(*) FROM image_status WHERE state = 'downloaded'").fetchone()[0]
    conn.close()
    files = sum(1 for p in (root / "images" / "imagedownload").iterdir() if p.name.endswith(".jpg"))
    shutil.rmtree(root / "images", ignore_errors=True)
    return {"name": f"imageselector download ({workers} workers, full verify)", "ok": done,
            "files": files, "wall": wall, "steady_wall": in_stage, "cpu": cpu}


def bench_img2dataset(exe: str, base_url: str, n: int, work: Path) -> dict:
    urls = work / "urls.txt"
    urls.write_text("".join(f"{base_url}/{i}.jpg\n" for i in range(n)))
    out = work / "i2d-out"
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1")
    argv = [exe, "--url_list", str(urls), "--input_format", "txt", "--output_folder", str(out),
            "--processes_count", "2", "--thread_count", "8", "--resize_mode", "no",
            "--number_sample_per_shard", "250", "--output_format", "files",
            "--distributor", "multiprocessing", "--timeout", "30", "--retries", "0",
            "--enable_wandb", "False"]
    code, wall, cpu = run_measured(argv, env, cwd=work, log=work / "i2d.out")
    if code != 0:
        raise SystemExit(f"img2dataset exited {code}: see {work / 'i2d.out'}")
    ok, starts, ends = 0, [], []
    for stats in out.glob("*_stats.json"):
        s = json.loads(stats.read_text())
        ok += s.get("successes", 0)
        starts.append(s["start_time"])
        ends.append(s["end_time"])
    files = sum(1 for _ in out.rglob("*.jpg"))
    steady = (max(ends) - min(starts)) if starts else float("nan")
    shutil.rmtree(out, ignore_errors=True)
    return {"name": "img2dataset (2 processes x 8 threads, --resize_mode no)", "ok": ok,
            "files": files, "wall": wall, "steady_wall": steady, "cpu": cpu}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--distinct", type=int, default=1000)
    ap.add_argument("--workers", default="16,8", help="comma-separated worker counts for ours")
    ap.add_argument("--img2dataset", default="/tmp/bench-venv/bin/img2dataset")
    ap.add_argument("--nginx", default=shutil.which("nginx") or "/usr/sbin/nginx")
    ap.add_argument("--work", default="/tmp/dl-bench")
    ap.add_argument("--skip-img2dataset", action="store_true")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    n, mean = make_images(work / "images", args.images, args.distinct)
    print(f"{n} JPEGs, mean {mean / 1000:.0f} KB, 1000x700; machine: {os.cpu_count()} cores")
    server = Nginx(args.nginx, work / "images", work)
    base = f"http://127.0.0.1:{server.port}"
    use_i2d = not args.skip_img2dataset and Path(args.img2dataset).exists()
    if not args.skip_img2dataset and not use_i2d:
        print(f"img2dataset not found at {args.img2dataset}: skipped")
    results = []
    print(f"{'run':58s} {'ok':>5s} {'files':>5s} {'img/s':>7s} {'img/s*':>7s} "
          f"{'CPU s/1k':>8s} {'nginx CPU s/1k':>14s} {'load':>5s}", flush=True)
    try:
        # Alternate the tools round by round: the machine is shared, its load drifts.
        for _ in range(args.rounds):
            for workers in [int(w) for w in args.workers.split(",")]:
                results.append(_measure(server, n, lambda: bench_ours(base, n, workers, work)))
            if use_i2d:
                results.append(_measure(server, n, lambda: bench_img2dataset(args.img2dataset, base, n, work)))
    finally:
        server.stop()
    print("img/s: whole process (start-up included); img/s*: excluding start-up "
          "(ours: stage start to exit; img2dataset: first shard start to last shard end); "
          "load: the machine's 1-minute load average around the run (other agents' work)")
    names = list(dict.fromkeys(r["name"] for r in results))
    med = {}
    for name in names:
        runs = [r for r in results if r["name"] == name]
        med[name] = {k: statistics.median(r[k] for r in runs)
                     for k in ("rate", "steady_rate", "cpu_per_k")}
        print(f"median of {len(runs)}: {name}: {med[name]['rate']:.0f} img/s "
              f"({med[name]['steady_rate']:.0f} excluding start-up), "
              f"{med[name]['cpu_per_k']:.2f} CPU s per 1,000 images")
    i2d = [name for name in names if name.startswith("img2dataset")]
    if i2d:
        ref = med[i2d[0]]
        for name in names:
            if name != i2d[0]:
                print(f"ratio {name.split('(')[1].split(',')[0]} / img2dataset: "
                      f"{med[name]['rate'] / ref['rate']:.2f}x whole process, "
                      f"{med[name]['steady_rate'] / ref['steady_rate']:.2f}x excluding start-up")
    return 0


def _measure(server: Nginx, n: int, run) -> dict:
    c0 = server.cpu_s()
    load0 = os.getloadavg()[0]
    r = run()
    r["load"] = (load0 + os.getloadavg()[0]) / 2
    r["nginx_cpu"] = server.cpu_s() - c0
    r["rate"] = r["ok"] / r["wall"]
    r["steady_rate"] = r["ok"] / r["steady_wall"]
    r["cpu_per_k"] = r["cpu"] / r["ok"] * 1000 if r["ok"] else float("nan")
    print(f"{r['name']:58s} {r['ok']:5d} {r['files']:5d} {r['rate']:7.0f} "
          f"{r['steady_rate']:7.0f} {r['cpu_per_k']:8.2f} {r['nginx_cpu'] / n * 1000:14.2f} "
          f"{r['load']:5.1f}", flush=True)
    return r


if __name__ == "__main__":
    sys.exit(main())
