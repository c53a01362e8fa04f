"""run, start, stop, pause, resume: the stage contract on the command line."""
from __future__ import annotations

import argparse
import sys
import time

from imageselector.cli import add_root_argument
from pipeline.core.errors import UserError


def _stage_args(name: str, rest: list[str]) -> argparse.Namespace:
    """Parse a stage's own flags (its module's add_arguments) plus --once."""
    from pipeline.core.stage_runtime import load_entry
    from pipeline.core.stage import spec

    stage = spec(name)
    module, _ = load_entry(stage)
    parser = argparse.ArgumentParser(prog=f"imageselector run {name}", description=stage.description)
    parser.add_argument("--once", action="store_true", help="do the work queued now, then exit 0")
    parser.add_argument("--root", default=None, help="runtime root (may follow the stage name)")
    if hasattr(module, "add_arguments"):
        module.add_arguments(parser)
    return parser.parse_args(rest)


def cmd_run(args) -> int:
    from pipeline.core.root import Root
    from pipeline.core.stage_runtime import run_stage

    stage_args = _stage_args(args.stage, args.rest)
    root = Root.open(stage_args.root or args.root)
    return run_stage(root, args.stage, once=stage_args.once, args=stage_args)


def cmd_start(args) -> int:
    from pipeline.core.root import Root
    from pipeline.core.stage_control import start_detached

    stage_args = _stage_args(args.stage, args.rest)  # refuse bad flags here, not in a detached log
    root = Root.open(stage_args.root or args.root)
    rest = list(args.rest)
    if stage_args.root:  # the detached run gets the root through run_argv
        i = rest.index("--root") if "--root" in rest else None
        rest = rest[:i] + rest[i + 2:] if i is not None else [a for a in rest if not a.startswith("--root=")]
    status = start_detached(root, args.stage, rest)
    print(f"{args.stage}: {status['state']} (pid {status['pid'] or status['last_pid']}); "
          f"log {status['log']}")
    return 0


def _say(text: str) -> None:
    print(text, file=sys.stderr)


def cmd_stop(args) -> int:
    from pipeline.core.locks import lock_holders, writer_pid
    from pipeline.core.root import Root
    from pipeline.core.stage import PIPELINE_ORDER, STOP_ALL_KEEPS, spec
    from pipeline.core.stage_observe import is_live, stage_status
    from pipeline.core.stage_control import request_stop, signal_ladder, wait_stopped

    if args.everything and not args.all:
        raise UserError("--everything goes with --all")
    if not args.all and not args.stage:
        raise UserError("name a stage to stop, or --all")
    if args.all and args.stage:
        raise UserError(f"name a stage or --all, not both (got {args.stage!r} and --all)")
    root = Root.open(args.root)
    names = [args.stage]
    if args.all:
        live = [n for n in PIPELINE_ORDER if is_live(stage_status(root, n))]
        kept = [n for n in live if n in STOP_ALL_KEEPS and not args.everything]
        names = [n for n in live if n not in kept]
        if names:
            print(f"stop --all stops, in this order: {', '.join(names)}")
        for name in kept:
            print(f"{name}: left running, {STOP_ALL_KEEPS[name]} "
                  f"(`imageselector stop {name}` or --all --everything stops it)")
        if not names:
            print("no stage is running" if not kept else "no other stage is running")
            return 0
    wait = args.wait or args.force
    timeout = args.timeout if args.timeout is not None else root.config.get("stage.stop_wait_s")
    code = 0
    requested = []
    for name in names:
        stage = spec(name)
        before = stage_status(root, name)
        if not is_live(before):
            print(f"{name}: not running ({before['state']})")
            continue
        request_stop(root, name)
        print(f"{name}: {stage.kill_file} written; stopping (pid {before['pid']})")
        requested.append((name, before))
    for name, before in requested:
        if not wait:
            continue
        if wait_stopped(root, name, before["pid"], timeout):
            after = stage_status(root, name)
            last = after.get("last_exit") or {}
            print(f"{name}: stopped (exit {last.get('code', '?')}: {last.get('reason', '')})")
            continue
        if not args.force:
            print(f"{name}: still running after {timeout:.0f} s (pid {before['pid']}); "
                  f"it has not honoured {spec(name).kill_file}. Use --force to signal it.")
            code = 1
            continue
        holders = lock_holders(root.db_path)
        _say("DB lock holders before signalling:")
        for h in holders:
            _say(f"  {h['mode']:<6} pid {h['pid']:<7} {h['name']}  {h['cmdline'][:80]}")
        is_writer = writer_pid(holders) == before["pid"]
        if is_writer and not args.kill_writer:
            _say(f"{name} (pid {before['pid']}) holds the DB write lock: SIGKILL needs --kill-writer")
        hb_start = None
        from pipeline.core.fsutil import read_json_or_none

        hb = read_json_or_none(root.heartbeat_path(name)) or {}
        if hb.get("pid") == before["pid"]:
            hb_start = hb.get("proc_start")
        stopped = signal_ladder(before["pid"], hb_start, float(root.config.get("stage.term_grace_s")),
                                allow_kill=not is_writer or args.kill_writer, say=_say)
        # a stage killed before it saw its kill file leaves it behind: remove it
        kill = root.file(spec(name).kill_file)
        if stopped and kill.exists():
            kill.unlink()
        print(f"{name}: {'stopped by signal' if stopped else 'STILL RUNNING'} (pid {before['pid']})")
        if not stopped:
            code = 1
    return code


def _pausable_names(root, args) -> list[str]:
    from pipeline.core.stage import PAUSABLE

    if args.all or not args.stage:
        return list(PAUSABLE)
    return [args.stage]


def cmd_pause(args) -> int:
    from pipeline.core.root import Root
    from pipeline.core.stage_control import pause_acknowledged, pause_stages

    root = Root.open(args.root)
    names = _pausable_names(root, args)
    written = pause_stages(root, names)
    print("pause requested: " + ", ".join(written))
    if not args.wait:
        return 0
    deadline = time.monotonic() + args.timeout
    pending = set(names)
    while pending and time.monotonic() < deadline:
        for name in list(pending):
            ack = pause_acknowledged(root, name)
            if ack is None or ack:
                print(f"{name}: {'paused' if ack else 'not running'}")
                pending.discard(name)
        if pending:
            time.sleep(0.1)
    for name in sorted(pending):
        print(f"{name}: has not acknowledged the pause within {args.timeout:.0f} s")
    return 1 if pending else 0


def cmd_resume(args) -> int:
    from pipeline.core.root import Root
    from pipeline.core.stage_control import resume_stages

    root = Root.open(args.root)
    names = _pausable_names(root, args)
    resume_stages(root, names)
    print("resumed: " + ", ".join(names))
    return 0


def register(sub) -> None:
    from pipeline.core.stage import STOP_ALL_KEEPS

    p = sub.add_parser("run", help="run a stage in the foreground",
                       description="Run a stage in the foreground. Stage flags follow the name "
                                   "(`imageselector run STAGE --help`).")
    add_root_argument(p)
    p.add_argument("stage")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="--once and the stage's own flags")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("start", help="start a stage detached (it survives this shell)")
    add_root_argument(p)
    p.add_argument("stage")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="--once and the stage's own flags")
    p.set_defaults(func=cmd_start)

    p = sub.add_parser("stop", help="stop a stage by its kill file (signals only with --force)")
    add_root_argument(p)
    p.add_argument("stage", nargs="?")
    p.add_argument("--all", action="store_true",
                   help="every running stage, in pipeline order, except what stop all leaves "
                        "running (" + ", ".join(STOP_ALL_KEEPS) + ")")
    p.add_argument("--everything", action="store_true",
                   help="with --all: stop " + ", ".join(STOP_ALL_KEEPS) + " too")
    p.add_argument("--wait", action="store_true", help="wait until it has exited")
    p.add_argument("--timeout", type=float, default=None, help="seconds to wait (default stage.stop_wait_s)")
    p.add_argument("--force", action="store_true",
                   help="after the wait: SIGTERM (handled like the kill file), then SIGKILL")
    p.add_argument("--kill-writer", action="store_true",
                   help="second confirmation: allow SIGKILL of the process holding the DB write lock")
    p.set_defaults(func=cmd_stop)

    p = sub.add_parser("pause", help="ask stages to reach a safe point and pause (PAUSE_<stage>)")
    add_root_argument(p)
    p.add_argument("stage", nargs="?")
    p.add_argument("--all", action="store_true")
    p.add_argument("--wait", action="store_true", help="wait for each running stage's PAUSED_ acknowledgement")
    p.add_argument("--timeout", type=float, default=60.0)
    p.set_defaults(func=cmd_pause)

    p = sub.add_parser("resume", help="remove the pause files")
    add_root_argument(p)
    p.add_argument("stage", nargs="?")
    p.add_argument("--all", action="store_true")
    p.set_defaults(func=cmd_resume)
