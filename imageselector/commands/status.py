"""status and locks: the snapshot of the pipeline, as text or JSON."""
from __future__ import annotations

import json
import sys
import time

from imageselector.cli import add_root_argument
from imageselector.commands.backup import backup_lines
from pipeline.core.fmt import duration


def print_locks(holders: list[dict], now: float) -> None:
    if not holders:
        print("  nobody holds the DB")
    for h in holders:
        print(f"  {h['mode']:<6} pid {h['pid']:<7} {duration(now - h['since']):>6}  {h['name']:<16} "
              f"{h['cmdline'][:70]}")


def cmd_status(args) -> int:
    from pipeline.core.root import Root
    from pipeline.status.snapshot import snapshot

    root = Root.open(args.root)
    snap = snapshot(root)
    if args.json:
        print(json.dumps(snap, indent=1, default=str))
        return 0
    now = snap["at"]
    print(f"root {snap['root']} ({snap['profile']})")
    for problem in snap.get("safety") or []:
        # red on a terminal: a production root left unattended like this is not safe
        line = f"{problem['severity'].upper()}: {problem['text']}"
        print(f"\033[1;31m{line}\033[0m" if sys.stdout.isatty() else line)
    print("queues:")
    reasons = snap.get("queue_reasons") or {}
    for state, n in snap["queues"].items():
        why = reasons.get(state)
        why_text = f"  {why['reason']}" + (f" ({why['next']})" if why.get("next") else "") if why else ""
        print(f"  {state:<11} {'?' if n is None else f'{n:,}':>12}{why_text}")
    print("stages:")
    for st in snap["stages"]:
        last = st.get("last_exit") or {}
        extra = f"pid {st['pid']}" if st["pid"] else (f"last exit {last.get('code')} {last.get('outcome', '')}"
                                                      if last else "")
        rate = f"{st['rate']:.2f}/s" if st.get("rate") else ""
        print(f"  {st['name']:<12} {st['state']:<11} {extra:<24} hb {duration(st['heartbeat_age_s']):>5} {rate}")
        if st.get("blocked_reason"):      # e.g. "disk low: PATH FREE free, floor FLOOR"
            print(f"    blocked: {st['blocked_reason']}")
    print("DB lock holders:")
    print_locks(snap.get("locks", []), now)
    print("backups:")
    if not snap["backups"]:
        print("  none yet")
    for b in snap["backups"]:
        print("\n".join(backup_lines(b, indent="  ")))
    for err in snap["errors"]:
        print(f"error: {err}")
    return 1 if snap["errors"] else 0


def cmd_locks(args) -> int:
    from pipeline.core.locks import lock_holders
    from pipeline.core.root import Root

    root = Root.open(args.root)
    holders = lock_holders(root.db_path, method=args.method, seen_path=root.run_dir / "locks_seen.json")
    if args.json:
        print(json.dumps(holders, indent=1))
    else:
        print(f"DB {root.db_path}")
        print_locks(holders, time.time())
    return 0


def register(sub) -> None:
    p = sub.add_parser("status", help="queues, stages, DB lock holders and backups")
    add_root_argument(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("locks", help="which processes hold the DB, and how")
    add_root_argument(p)
    p.add_argument("--json", action="store_true")
    p.add_argument("--method", choices=["auto", "proc", "probe"], default="auto",
                   help="proc: /proc/locks (Linux); probe: the F_GETLK helper (macOS)")
    p.set_defaults(func=cmd_locks)
