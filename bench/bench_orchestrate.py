"""Benchmark of the orchestrator's overhead per batch with the local worker, against the
worker's own time.

    .venv/bin/python bench/bench_orchestrate.py --batches 4 --batch 2000
    .venv/bin/python bench/bench_orchestrate.py --batches 3 --batch 2000 --tar
    .venv/bin/python bench/bench_orchestrate.py --worker test --batches 3 --batch 64

``--worker stub`` (default): the real worker loop with a model-free embedder, so what is
measured is the orchestrator alone: forming the batch (DB), shipping it (hard links, or a tar
with ``--tar``), fetching and verifying the result (checksums of every image and vector),
placing the bg-removed copies, the index import (durable, fsync on), deleting the raw
downloads, cleaning up. ``--worker test`` runs the real worker stage (test-profile models),
started by the orchestrator itself, and compares its wall time per batch with the overhead.
Images are Etsy-sized (570x456) JPEGs. Prints its figures; never run as a test.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
if not os.environ.get("U2NET_HOME"):
    os.environ["U2NET_HOME"] = tempfile.mkdtemp(prefix="bench-u2net-")


def sample_jpegs(n: int, size=(570, 456)) -> list[bytes]:
    from PIL import Image, ImageDraw

    out = []
    for i in range(n):
        rng = random.Random(i)
        im = Image.new("RGB", size, tuple(rng.randrange(200, 250) for _ in range(3)))
        d = ImageDraw.Draw(im)
        for _ in range(12):   # some texture, so the file is Etsy-sized (tens of KB)
            x0, y0 = rng.randrange(0, size[0]), rng.randrange(0, size[1])
            d.rectangle([x0, y0, x0 + rng.randrange(20, 200), y0 + rng.randrange(20, 200)],
                        fill=tuple(rng.randrange(0, 255) for _ in range(3)))
        noise = Image.effect_noise(size, 60).convert("RGB")
        im = Image.blend(im, noise, 0.1)        # grain: JPEG sizes like Etsy's (~50 KB)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def make_root(base: Path, n: int, batch: int, tar: bool, worker: str):
    from tests.orchestrate_support import db_root

    extra = "" if not tar else "local_direct = false\n"
    root = db_root(base / "root", batch_size=batch, poll_s=0.2, lease_s=3600.0,
                   start_workers=(worker == "test"), extra=extra, start_retry_s=60.0)
    if worker == "test":
        wroot = base / "worker"
        wroot.mkdir()
        (wroot / "imageselector.toml").write_text(
            '[root]\nprofile = "sandbox"\n[models]\nprofile = "test"\ndevice = "cpu"\n'
            '[worker]\npoll_s = 0.2\n')
        root.hosts_path.write_text(f'[workers.local]\nlocal = true\nroot = "{wroot}"\n')
    else:
        wroot = root.path
    t0 = time.perf_counter()
    size = seed_downloaded(root, n, sample_jpegs(64))
    print(f"collection: {n} images, {size / n / 1024:.0f} KB each on average "
          f"(written in {time.perf_counter() - t0:.1f} s)")
    return root, wroot


def seed_downloaded(root, n: int, images: list[bytes]) -> int:
    """``n`` downloaded images (three per listing, with listing texts) from ``images`` in turn,
    on disk and in the DB; returns their bytes. Shared with bench_ray.py."""
    from pipeline.core import db as dbm

    keys = [(100000 + i // 3, 1 + i) for i in range(n)]
    for i, (lid, iid) in enumerate(keys):
        (root.download_dir / f"{lid}_{iid}.jpg").write_bytes(images[i % len(images)])
    conn = dbm.open_db(root)
    with dbm.transaction(conn):
        for lid in sorted({k[0] for k in keys}):
            conn.execute("INSERT INTO listings_static(listing_id, snapshot_timestamp, title, "
                         "materials) VALUES (?, ?, ?, ?)", (lid, time.time(), f"Oak sideboard {lid}",
                                                            '["oak", "brass"]'))
        dbm.add_discovered_images(conn, keys)
        dbm.set_image_state(conn, keys, dbm.DOWNLOADED, expect=dbm.DISCOVERED)
    conn.close()
    return sum(len(images[i % len(images)]) for i in range(n))


class Timers:
    def __init__(self):
        self.per: dict[str, dict[str, float]] = {}

    def add(self, key, what, seconds):
        self.per.setdefault(str(key), {}).setdefault(what, 0.0)
        self.per[str(key)][what] += seconds


def instrument(timers: Timers):
    """Wrap the orchestrator's steps with timers (names as in the figures)."""
    from pipeline.stages.orchestrate import intake, links
    from pipeline.stages.orchestrate.ledger import Ledger

    def wrap(owner, name, what, key_of):
        real = getattr(owner, name)

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            out = real(*args, **kwargs)
            timers.add(key_of(args, kwargs, out), what, time.perf_counter() - t0)
            return out

        setattr(owner, name, timed)

    wrap(Ledger, "create_batch", "form", lambda a, k, out: out.batch_id if out else "-")
    wrap(links.WorkerLink, "_op_ship", "ship", lambda a, k, out: k["order"].batch_id)
    wrap(links.WorkerLink, "_op_fetch", "fetch", lambda a, k, out: int(a[1][1:8]))
    wrap(links.WorkerLink, "_op_cleanup", "cleanup", lambda a, k, out: int(a[1][1:8]))
    wrap(intake, "verify", "verify", lambda a, k, out: int(out.batch_id[1:8]))
    wrap(intake, "place_images", "place", lambda a, k, out: int(a[0].batch_id[1:8]))
    wrap(intake, "import_vectors", "import", lambda a, k, out: a[2])
    wrap(intake, "delete_downloads", "delete_raw", lambda a, k, out: "last")


def stop_worker(wroot: Path, wait_s: float = 60.0) -> None:
    """The worker stage the orchestrator started: its kill file, then wait for its pid."""
    from pipeline.core.procs import pid_alive

    try:
        pid = json.loads((wroot / "run" / "worker.json").read_text()).get("pid")
    except (FileNotFoundError, ValueError):
        return
    (wroot / "KILL_WORKER").write_text("bench done\n")
    deadline = time.monotonic() + wait_s
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--batch", type=int, default=2000)
    ap.add_argument("--tar", action="store_true", help="the SSH workers' tar route, locally")
    ap.add_argument("--worker", choices=["stub", "test"], default="stub")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()

    from tests.orchestrate_support import StubWorker, run_orchestrator

    base = Path(tempfile.mkdtemp(prefix="bench-orch-"))
    n = args.batches * args.batch
    root, wroot = make_root(base, n, args.batch, args.tar, args.worker)
    timers = Timers()
    instrument(timers)
    worker_walls: dict[str, float] = {}
    stub = None
    if args.worker == "stub":
        stub = StubWorker(wroot).start()
    import pipeline.stages.orchestrate.intake as intake_mod

    real_verify = intake_mod.verify

    def verify_and_note(path, manifest):
        result = real_verify(path, manifest)
        worker_walls[result.batch_id] = float(result.meta.get("wall_s") or 0.0)
        return result

    intake_mod.verify = verify_and_note
    t0 = time.perf_counter()
    orch = run_orchestrator(root, once=True, timeout_s=3600)
    wall = time.perf_counter() - t0
    if stub is not None:
        stub.stop()
    if args.worker == "test":
        stop_worker(wroot)
    assert orch.exit_code == 0, orch.failure
    steps = ["form", "ship", "fetch", "verify", "place", "import", "cleanup"]
    print(f"\nroute: {'tar (as for SSH workers, locally)' if args.tar else 'direct (hard links)'}; "
          f"worker: {args.worker}; batches of {args.batch}")
    print("batch  " + " ".join(f"{s:>8}" for s in steps) + "  overhead  worker_s")
    totals = {s: 0.0 for s in steps}
    over_all, worker_all = 0.0, 0.0
    for key in sorted(k for k in timers.per if k.isdigit()):
        t = timers.per[key]
        over = sum(t.get(s, 0.0) for s in steps)
        wk = next((v for name, v in worker_walls.items() if int(name[1:8]) == int(key)), 0.0)
        over_all += over
        worker_all += wk
        for s in steps:
            totals[s] += t.get(s, 0.0)
        print(f"{key:>5}  " + " ".join(f"{t.get(s, 0.0):8.2f}" for s in steps) +
              f"  {over:8.2f}  {wk:8.2f}")
    nb = max(1, len([k for k in timers.per if k.isdigit()]))
    raw = timers.per.get("last", {}).get("delete_raw", 0.0)
    per_img = (over_all + raw) / n
    print(f"\nper batch of {args.batch}: orchestrator {((over_all + raw) / nb):.2f} s "
          f"({per_img * 1000:.2f} ms/image; delete_raw {raw / nb:.2f} s)")
    print(f"  -> a 10,000-image batch: ~{per_img * 10000:.1f} s of orchestrator work")
    print(f"end to end: {n} images in {wall:.1f} s = {n / wall:.0f} images/s through the "
          f"orchestrator with this worker")
    if worker_all:
        print(f"worker's own time: {worker_all / nb:.2f} s per batch; overhead = "
              f"{100 * (over_all + raw) / worker_all:.1f}% of it")
    prod_rate = 0.311     # bench/results/worker.md: full-size models, 2-core CPU
    print(f"vs the production worker on this CPU (0.311 images/s, bench/results/worker.md): "
          f"a 10,000-image batch takes ~{10000 / prod_rate / 3600:.1f} h; overhead "
          f"{100 * per_img * prod_rate:.3f}%")
    print(json.dumps({"per_image_ms": round(per_img * 1000, 3),
                      "steps_s_per_batch": {s: round(v / nb, 3) for s, v in totals.items()}}))
    if not args.keep:
        import shutil

        shutil.rmtree(base, ignore_errors=True)
    else:
        print(f"kept {base}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
