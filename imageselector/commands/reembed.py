"""reembed MODEL [--workers local|ray|NAME]: one model's vectors computed again for the whole
index (pipeline/reembed/). The images come from the tars by offset (loose files for the
newest, not yet tarred), the listing texts from the DB; both are read here and handed to the
re-embed loop, which imports no stage."""
from __future__ import annotations

import json
import signal
import sys

from imageselector.cli import add_root_argument


def slice_loader(root, conn, text_needed: bool):
    """``load(work) -> (images, texts, labels)`` for the re-embed loop."""
    from pipeline.stages.archive.tarindex import read_image
    from pipeline.stages.archive.tarmembers import TarError
    from pipeline.stages.orchestrate.ledger import text_for
    from pipeline.core.errors import UserError

    def load(work):
        pairs = [(int(a), int(b)) for a, b in work.ids.tolist()]
        images = []
        for lid, iid in pairs:
            try:
                images.append(read_image(root, conn, lid, iid))
            except (OSError, TarError) as exc:
                raise UserError(f"image {lid}_{iid} (shard {work.shard.number}, batch line "
                                f"{work.slice.seq}): cannot be read: {exc}") from None
        texts = None
        if text_needed:
            listing = sorted({lid for lid, _ in pairs})
            known = {}
            for lo in range(0, len(listing), 500):
                chunk = listing[lo:lo + 500]
                marks = ",".join("?" * len(chunk))
                for lid, title, materials in conn.execute(
                        f"SELECT listing_id, title, materials FROM listings_static "
                        f"WHERE listing_id IN ({marks})", chunk):
                    known[lid] = text_for(title, materials)
            texts = [known.get(lid, text_for(None, None)) for lid, _ in pairs]
        return images, texts, [f"{lid}_{iid}" for lid, iid in pairs]

    return load


def make_route(root, model: str, workers: str, batch_size: int | None,
               slice_timeout_s: float = 1800.0):
    """The compute: this process ("local"); the Ray worker of hosts.toml named ``workers``
    ("ray": the only one); or SSH/local workers of hosts.toml named ``NAME[,NAME...]``
    ("hosts": every one of them)."""
    from pipeline.core.errors import UserError
    from pipeline.models.batch_run import WorkerSettings
    from pipeline.models.registry import ModelSettings

    size = batch_size or WorkerSettings.from_config(root.config).batch_size
    if workers == "local":
        from pipeline.reembed.compute import ColumnEmbedder
        from pipeline.reembed.run import LocalRoute

        settings = ModelSettings.from_config(root.config, root_profile=root.profile)
        return LocalRoute(ColumnEmbedder(settings, model, size))
    from pipeline.core.hosts import worker_hosts

    hosts, _ = worker_hosts(root, implicit_local=False, include_ray=True)
    ray_hosts = hosts.ray
    names = [n.strip() for n in workers.split(",") if n.strip()]
    if workers == "hosts" or any(n in hosts.workers for n in names):
        return hosts_route(root, hosts, model, names if workers != "hosts" else list(hosts.workers),
                           size, slice_timeout_s)
    if workers == "ray":
        if len(ray_hosts) != 1:
            raise UserError(f"--workers ray: hosts.toml has {len(ray_hosts)} Ray workers "
                            f"({', '.join(ray_hosts) or 'none'}); name one")
        workers = next(iter(ray_hosts))
    host = ray_hosts.get(workers)
    if host is None:
        raise UserError(f"--workers {workers}: no worker of that name in hosts.toml "
                        f"(SSH/local workers: {', '.join(hosts.workers) or 'none'}; Ray workers: "
                        f"{', '.join(ray_hosts) or 'none'}; or --workers local)")
    from pipeline.models.batch_run import embedder_overrides
    from pipeline.reembed.ray_route import RayRoute

    return RayRoute(workers, host.ray, embedder_overrides(root.config), root.profile, model, size)


def hosts_route(root, hosts, model: str, names: list[str], batch_size: int,
                slice_timeout_s: float):
    from pipeline.core.errors import UserError
    from pipeline.core.hosts import make_transport
    from pipeline.reembed.hosts_route import HostsRoute

    unknown = [n for n in names if n not in hosts.workers]
    if unknown or not names:
        known = ", ".join(list(hosts.workers) + list(hosts.ray)) or "none"
        raise UserError(f"--workers: no worker {', '.join(unknown) or '(none named)'} in "
                        f"hosts.toml (workers: {known}; or --workers local)")
    lanes = [(hosts.workers[n], make_transport(root, hosts, hosts.workers[n])) for n in names]
    return HostsRoute(lanes, model, batch_size, slice_timeout_s=slice_timeout_s)


def cmd_reembed(args) -> int:
    from pipeline.core.db import open_db
    from pipeline.core.root import Root
    from pipeline.models.registry import get_spec
    from pipeline.reembed.run import reembed

    root = Root.open(args.root)
    spec = get_spec(args.model)
    conn = open_db(root)
    stop = {"asked": False}

    def ask_stop(signum, frame):
        stop["asked"] = True
        print("reembed: stopping after the slice in hand (run it again to resume)",
              file=sys.stderr)

    signal.signal(signal.SIGTERM, ask_stop)
    signal.signal(signal.SIGINT, ask_stop)

    def progress(work, done, total):
        if not args.json:
            print(f"reembed {args.model}: shard {work.shard.number} batch line "
                  f"{work.slice.seq} done ({done}/{total})", flush=True)

    if args.slice_timeout <= 0:
        from pipeline.core.errors import UserError
        raise UserError(f"--slice-timeout must be > 0 seconds (got {args.slice_timeout:g})")
    route = make_route(root, args.model, args.workers, args.batch_size, args.slice_timeout)
    summary = reembed(root, conn, args.model, route, slice_loader(root, conn, spec.text),
                      should_stop=lambda: stop["asked"], on_slice=progress, again=args.again)
    if args.json:
        print(json.dumps(summary, indent=1))
    elif summary.get("already"):
        print(f"reembed {args.model}: column {summary['column_id']} already holds these weights' "
              f"vectors: nothing to do (--again computes a new column)")
    elif summary["state"] == "switched":
        print(f"reembed {args.model}: column {summary['column_id']} switched on for search "
              f"(fingerprint {summary['previous']} -> {summary['fingerprint_now']})")
    else:
        print(f"reembed {args.model}: stopped ({summary['slices']} slices this run); "
              f"run the same command to resume")
    return 0 if summary["state"] == "switched" else 3


def register(sub) -> None:
    p = sub.add_parser("reembed", help="compute one model's vectors again for the whole index "
                                       "(resumable; switched on when every shard is done)")
    add_root_argument(p)
    p.add_argument("model", help="a model of the registry (imageselector models)")
    p.add_argument("--workers", default="local",
                   help="local (this process, default), ray (the Ray worker of hosts.toml), "
                        "a Ray worker's name, NAME[,NAME...] of SSH/local workers, or hosts "
                        "(every SSH/local worker of hosts.toml)")
    p.add_argument("--slice-timeout", type=float, default=1800.0,
                   help="seconds a worker host may take over one batch line before it goes "
                        "to another (SSH/local workers; default 1800)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per inference batch (default: worker.batch_size)")
    p.add_argument("--again", action="store_true",
                   help="compute a new column even when the one in force has these weights")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_reembed)
    register_serve(sub)


def cmd_reembed_serve(args) -> int:
    """On a worker: the server of `reembed --workers NAME` (pipeline/reembed/serve.py)."""
    from pipeline.core.root import Root
    from pipeline.models.registry import get_spec
    from pipeline.reembed import serve

    root = Root.open(args.root)
    get_spec(args.model)                      # an unknown model: one line, before detaching
    if args.detach:
        return _serve_detached(root, args)
    from pipeline.core.stage_log import setup_process_logging

    # its lines (ready, idle exit, why a model cannot load) in the log the console shows
    setup_process_logging(root, serve.LOG_NAME, serve.log.name)
    return serve.serve(root, args.model, args.batch_size or 0, args.idle_exit_s)


def _serve_detached(root, args) -> int:
    """Start the server in the background; return once its heartbeat shows it, printing
    its pid as JSON (exit 3: one already serves this model on this root)."""
    import time

    from pipeline.core.detach import spawn_detached
    from pipeline.core.fsutil import read_json_or_none
    from pipeline.core.procs import pid_alive
    from pipeline.reembed import serve

    argv = [sys.executable, "-m", "imageselector", "--root", str(root.path), "reembed-serve",
            args.model, "--idle-exit-s", str(args.idle_exit_s)]
    if args.batch_size:
        argv += ["--batch-size", str(args.batch_size)]
    root.logs_dir.mkdir(parents=True, exist_ok=True)
    beat = root.path / serve.SERVE_DIR / args.model / serve.HEARTBEAT_NAME
    pid = spawn_detached(argv, root.log_path(serve.LOG_NAME), cwd=root.path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        hb = read_json_or_none(beat) or {}
        if hb.get("pid") == pid:
            print(json.dumps({"pid": pid, "state": hb.get("state")}))
            return 0
        if not pid_alive(pid):
            live = hb.get("pid") and pid_alive(hb["pid"]) and hb.get("state") not in ("stopped", "error")
            print(json.dumps({"pid": hb.get("pid"), "state": hb.get("state")}))
            return serve.ALREADY_RUNNING_EXIT if live else 2
        time.sleep(0.05)
    print(f"reembed-serve {args.model}: no heartbeat within 60 s; see {root.log_path(serve.LOG_NAME)}",
          file=sys.stderr)
    return 2


def register_serve(sub) -> None:
    p = sub.add_parser("reembed-serve", help="on a worker: embed re-embed slices for `reembed "
                                             "--workers NAME` (started by it)")
    add_root_argument(p)
    p.add_argument("model")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--idle-exit-s", type=float, default=600.0,
                   help="exit after this long with no slice (default 600)")
    p.add_argument("--detach", action="store_true", help="start in the background and return")
    p.set_defaults(func=cmd_reembed_serve)
