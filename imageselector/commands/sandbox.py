"""sandbox init / serve / up: a root that works on a fresh machine (README's run command)."""
from __future__ import annotations

import os
import sys

from imageselector.cli import add_root_argument
from pipeline.core.errors import UserError


def cmd_init(args) -> int:
    from pipeline.sandbox import init_sandbox

    root = init_sandbox(args.dir, args.port)
    print(f"sandbox root {root.path} (local Etsy API on 127.0.0.1:{root.config.get('sandbox.port')})")
    return 0


def cmd_serve(args) -> int:
    """The local Etsy API in the foreground (the etsy-api stage)."""
    from pipeline.core.root import Root
    from pipeline.core.stage_runtime import run_stage
    import argparse

    root = Root.open(args.root)
    stage_args = argparse.Namespace(port=args.port, listings=args.listings, once=False)
    return run_stage(root, "etsy-api", args=stage_args)


def cmd_up(args) -> int:
    """Create the sandbox if needed, start its local Etsy API, open the console."""
    from pipeline.sandbox import init_sandbox
    from pipeline.core.stage_observe import is_live, stage_status
    from pipeline.core.stage_control import start_detached

    root = init_sandbox(args.dir, args.port)
    if not is_live(stage_status(root, "etsy-api")):
        try:
            start_detached(root, "etsy-api")
        except UserError as exc:
            print(f"imageselector: local Etsy API not started: {exc}", file=sys.stderr)
    if args.no_console:
        print(f"sandbox ready at {root.path}")
        return 0
    argv = [sys.executable, "-m", "imageselector", "--root", str(root.path), "console"]
    os.execv(sys.executable, argv)
    return 0  # not reached


def register(sub) -> None:
    p = sub.add_parser("sandbox", help="a sandbox root: local Etsy API, test-profile models")
    group = p.add_subparsers(dest="sandbox_command", metavar="SANDBOX_COMMAND")

    q = group.add_parser("init", help="create a sandbox root")
    q.add_argument("dir")
    q.add_argument("--port", type=int, default=None, help="port of the local Etsy API (default 8765)")
    q.set_defaults(func=cmd_init)

    q = group.add_parser("serve", help="serve the local Etsy API in the foreground")
    add_root_argument(q)
    q.add_argument("--port", type=int, default=None)
    q.add_argument("--listings", type=int, default=None)
    q.set_defaults(func=cmd_serve)

    q = group.add_parser("up", help="init (if needed), start the local Etsy API, open the console")
    q.add_argument("dir")
    q.add_argument("--port", type=int, default=None)
    q.add_argument("--no-console", action="store_true", help="prepare everything, do not open the console")
    q.set_defaults(func=cmd_up)

    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
