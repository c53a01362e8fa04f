"""Images/s through the orchestrator with a Ray worker (a one-node and a two-node cluster on
loopback) against an SSH worker (a real sshd on 127.0.0.1), on the same machine, the same
images, the same batch size and the same worker compute (test-profile models and the tiny
background model: the real worker code, small models, so the overhead shows).

    .venv/bin/python bench/bench_ray.py [--batches 16] [--batch 32] [--routes ssh,ray1,ray2]
    .venv/bin/python bench/bench_ray.py --reembed [--batches 16] [--batch 32]

Routes:
  ssh   one worker stage on this machine reached over SSH, started by the orchestrator
        (the weekly route); torch may use both cores
  ray1  a one-node cluster (2 CPUs), one model actor of 2 CPUs
  ray2  a two-node cluster (1 CPU each), two model actors of 1 CPU (both cores again)

Per route it prints: start-up (orchestrator start to the first import: connecting, starting
the worker or the actors, loading the models), steady images/s (from the first import to
the last, after each executor has returned two batches), the worker's own embedding time
per batch (the result's wall_s), and the overhead per batch and per image: steady seconds
per batch times the executors working at once, minus the worker's own time (what an
executor spends not embedding: shipping, unpacking, packing, polls, fetching). For Ray also
the actor's whole call per batch and its part outside the embedding (unpack + pack).
``--reembed`` times `imageselector reembed` of one test-profile model (dinov2_base) instead,
over an index of the same number of images in tars (570x456 JPEGs): in this process
(local), on one SSH worker's reembed-serve (ssh: the home lab's route, slices as files over
SFTP), on a one-node and on a two-node cluster; the overhead per slice is the steady
seconds per slice times the executors minus the model's own time per slice (reading the
tars, shipping, writing and hashing the vectors). Prints its figures; never run as a test.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
if not os.environ.get("U2NET_HOME"):
    os.environ["U2NET_HOME"] = tempfile.mkdtemp(prefix="bench-u2net-")

MODELS = """
[models]
profile = "test"
device = "cpu"

[worker]
batch_size = 8
prep_threads = 1
prefetch_images = 16
poll_s = 0.2
"""


class Clock:
    """The worker's own time per batch and the moment of each import."""

    def __init__(self):
        self.worker_s: list[float] = []
        self.imports: list[float] = []
        self.actor_s: list[float] = []     # a Ray actor's whole call: unpack, embed, pack

    def install(self):
        from pipeline.stages.orchestrate import intake

        real_verify, real_import = intake.verify, intake.import_vectors

        def verify(path, manifest):
            result = real_verify(path, manifest)
            self.worker_s.append(float(result.meta.get("wall_s") or 0.0))
            return result

        def import_vectors(*args, **kwargs):
            out = real_import(*args, **kwargs)
            self.imports.append(time.perf_counter())
            return out

        from pipeline.stages.orchestrate.ray_link import RayLink

        real_store = RayLink._store_result

        def store_result(link, name, out):
            self.actor_s.append(float(out.get("seconds") or 0.0))
            return real_store(link, name, out)

        intake.verify, intake.import_vectors = verify, import_vectors
        RayLink._store_result = store_result

        def restore():
            intake.verify, intake.import_vectors = real_verify, real_import
            RayLink._store_result = real_store

        return restore


def make_root(base: Path, n: int, batch: int):
    from bench.bench_orchestrate import sample_jpegs, seed_downloaded
    from tests.orchestrate_support import db_root

    root = db_root(base / "root", batch_size=batch, poll_s=0.2, lease_s=3600.0,
                   start_workers=True, start_retry_s=60.0,
                   extra="max_in_flight = 4\n" + MODELS.replace("[models]", "\n[models]", 1))
    seed_downloaded(root, n, sample_jpegs(32))
    return root


def run_route(route: str, base: Path, n: int, batch: int) -> dict:
    from tests.orchestrate_support import run_orchestrator, write_hosts

    root = make_root(base / route, n, batch)
    cleanup = []
    executors = 1
    try:
        if route == "ssh":
            cleanup.append(ssh_worker(base / route, root))
        else:
            from tests.ray_support import Cluster

            nodes = 1 if route == "ray1" else 2
            cpus = 2 // nodes
            cluster = Cluster(base / route, num_cpus=cpus).start(nodes=nodes)
            cleanup.append(cluster.stop)
            executors = nodes
            write_hosts(root, f'[workers.cloud]\nkind = "ray"\naddress = "{cluster.address}"\n'
                              f"actors = {nodes}\nnum_cpus = {cpus}\n")
        clock = Clock()
        restore = clock.install()
        t0 = time.perf_counter()
        try:
            orch = run_orchestrator(root, once=True, timeout_s=1800)
        finally:
            restore()
        assert orch.exit_code == 0, orch.failure
    finally:
        for fn in reversed(cleanup):
            fn()
    first, last = clock.imports[0], clock.imports[-1]
    batches = len(clock.imports)
    # steady state: after every executor has returned two batches (models loaded, queue full)
    warm = clock.imports[min(2 * executors, batches - 2)]
    steady = (last - warm) / max(1, batches - 1 - min(2 * executors, batches - 2))
    worker = statistics.median(clock.worker_s)
    over = steady * executors - worker
    actor_over = (statistics.median(a - w for a, w in zip(sorted(clock.actor_s),
                                                          sorted(clock.worker_s)))
                  if clock.actor_s else None)
    return {"route": route, "batches": batches, "batch": batch, "executors": executors,
            "startup_s": round(first - t0, 2),
            "steady_images_per_s": round(batch / steady, 2) if steady else None,
            "end_to_end_images_per_s": round(n / (last - t0), 2),
            "worker_s_per_batch": round(worker, 3),
            "overhead_s_per_batch": round(over, 3),
            "overhead_ms_per_image": round(1000 * over / batch, 2),
            "actor_s_per_batch": round(statistics.median(clock.actor_s), 3) if clock.actor_s else None,
            "actor_overhead_s_per_batch": round(actor_over, 3) if actor_over is not None else None}


def ssh_worker(base: Path, root):
    """An sshd on loopback and a worker root reached through it; returns the clean-up."""
    from bench.bench_orchestrate import stop_worker
    from pipeline.models.testprofile import ensure_tiny_u2net
    from tests.orchestrate_support import write_hosts
    from tests.sshd_support import SSHServer

    ensure_tiny_u2net()
    python = base / "python.sh"     # the SSH session's environment is sshd's: give it ours
    python.write_text("#!/bin/sh\n"
                      f"export U2NET_HOME='{os.environ['U2NET_HOME']}'\n"
                      "export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 NO_ALBUMENTATIONS_UPDATE=1\n"
                      f"export PYTHONPATH='{REPO}'\n"
                      f"exec '{sys.executable}' \"$@\"\n")
    python.chmod(0o755)
    wroot = base / "worker-root"
    wroot.mkdir()
    (wroot / "imageselector.toml").write_text('[root]\nprofile = "sandbox"\n' + MODELS)
    server = SSHServer(base / "sshd").start()
    (root.path / "known_hosts").write_text(server.host_public_line())
    write_hosts(root, f'known_hosts = "known_hosts"\n[workers.w1]\naddress = "127.0.0.1"\n'
                      f'port = {server.port}\nuser = "{server.user}"\n'
                      f'key_file = "{server.client_key}"\nroot = "{wroot}"\npython = "{python}"\n')

    def cleanup():
        stop_worker(wroot)
        server.stop()

    return cleanup


def run_reembed(route: str, base: Path, batches: int, batch: int) -> dict:
    """`reembed` of one test-profile model over an index of ``batches`` x ``batch`` images
    in tars: in this process (local) or on a one- or two-node cluster."""
    from bench.bench_orchestrate import sample_jpegs
    from pipeline.core.db import connect
    from pipeline.reembed.run import LocalRoute, reembed
    from tests.reembed_support import MODEL, build_root, column_embedder
    from imageselector.commands.reembed import slice_loader

    images = sample_jpegs(32)
    root = build_root(base / f"reembed-{route}", batches=[(i + 1, batch) for i in range(batches)],
                      shard_rows=batch * 4, per_tar=batch,
                      image_of=lambda lid, iid: images[(lid * 7 + iid) % len(images)])
    cleanup, executors = [], 1
    compute: list[float] = []
    if route == "local":
        embedder = column_embedder()
        real = embedder.embed

        def timed(*a, **k):
            t = time.perf_counter()
            out = real(*a, **k)
            compute.append(time.perf_counter() - t)
            return out

        embedder.embed = timed
        rt = LocalRoute(embedder)
    elif route == "ssh":           # the home lab's route: one SSH worker's reembed-serve
        from imageselector.commands.reembed import make_route

        (base / f"reembed-{route}-host").mkdir(parents=True)
        cleanup.append(ssh_worker(base / f"reembed-{route}-host", root))
        rt = make_route(root, MODEL, "w1", 8)
    else:
        from pipeline.models.batch_run import embedder_overrides
        from pipeline.reembed.ray_route import RayRoute
        from remote.hosts import RaySpec
        from tests.ray_support import Cluster

        nodes = 1 if route == "ray1" else 2
        cpus = 2 // nodes
        (base / f"reembed-{route}-cluster").mkdir(parents=True)
        cluster = Cluster(base / f"reembed-{route}-cluster", num_cpus=cpus).start(nodes=nodes)
        cleanup.append(cluster.stop)
        executors = nodes
        rt = RayRoute("cloud", RaySpec(cluster.address, nodes, float(cpus)),
                      embedder_overrides(root.config), root.profile, MODEL, 8)
    ends: list[float] = []
    conn = connect(root.db_path)
    t0 = time.perf_counter()
    try:
        out = reembed(root, conn, MODEL, rt, slice_loader(root, conn, False),
                      on_slice=lambda w, d, t: ends.append(time.perf_counter()))
    finally:
        conn.close()
        if route.startswith("ray"):
            import ray

            ray.shutdown()
        for fn in cleanup:
            fn()
    assert out["state"] == "switched"
    wall = time.perf_counter() - t0
    slices = len(ends)
    skip = min(2 * executors, slices - 2)
    steady = (ends[-1] - ends[skip]) / max(1, slices - 1 - skip)
    per_slice = statistics.median(rt.compute_s if route != "local" else compute)
    over = steady * executors - per_slice
    return {"route": f"reembed-{route}", "slices": slices, "batch": batch,
            "executors": executors, "startup_s": round(ends[0] - t0, 2),
            "steady_images_per_s": round(batch / steady, 2),
            "end_to_end_images_per_s": round(slices * batch / wall, 2),
            "compute_s_per_slice": round(per_slice, 3),
            "overhead_s_per_slice": round(over, 3),
            "overhead_ms_per_image": round(1000 * over / batch, 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=16)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--routes", default="ssh,ray1,ray2")
    ap.add_argument("--reembed", action="store_true",
                    help="time `reembed` instead (routes local,ssh,ray1,ray2)")
    args = ap.parse_args()
    if args.reembed:
        base = Path(tempfile.mkdtemp(prefix="bench-reembed-"))
        routes = "local,ssh,ray1,ray2" if args.routes == "ssh,ray1,ray2" else args.routes
        rows = []
        for route in routes.split(","):
            print(f"reembed on {route}: {args.batches} slices of {args.batch} ...", flush=True)
            rows.append(run_reembed(route, base, args.batches, args.batch))
            print(json.dumps(rows[-1]), flush=True)
        print(f"\n{'route':14} {'start s':>8} {'img/s':>7} {'e2e img/s':>9} {'compute s/slice':>15} "
              f"{'overhead s/slice':>16} {'ms/img':>7}")
        for r in rows:
            print(f"{r['route']:14} {r['startup_s']:8.1f} {r['steady_images_per_s']:7.1f} "
                  f"{r['end_to_end_images_per_s']:9.1f} {r['compute_s_per_slice']:15.3f} "
                  f"{r['overhead_s_per_slice']:16.3f} {r['overhead_ms_per_image']:7.1f}")
        import shutil

        shutil.rmtree(base, ignore_errors=True)
        return 0
    base = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    n = args.batches * args.batch
    rows = []
    for route in args.routes.split(","):
        print(f"route {route}: {args.batches} batches of {args.batch} ...", flush=True)
        rows.append(run_route(route, base, n, args.batch))
        print(json.dumps(rows[-1]), flush=True)
    print(f"\n{'route':6} {'start s':>8} {'img/s':>7} {'e2e img/s':>9} {'worker s/b':>10} "
          f"{'overhead s/b':>12} {'ms/img':>7}")
    for r in rows:
        print(f"{r['route']:6} {r['startup_s']:8.1f} {r['steady_images_per_s'] or 0:7.1f} "
              f"{r['end_to_end_images_per_s']:9.1f} {r['worker_s_per_batch']:10.2f} "
              f"{r['overhead_s_per_batch']:12.2f} {r['overhead_ms_per_image']:7.1f}")
    ssh = next((r for r in rows if r["route"] == "ssh"), None)
    if ssh and ssh["steady_images_per_s"]:
        for r in rows:
            if r is not ssh and r["steady_images_per_s"]:
                print(f"{r['route']} / ssh steady images/s: "
                      f"{r['steady_images_per_s'] / ssh['steady_images_per_s']:.2f}x")
    import shutil

    shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
