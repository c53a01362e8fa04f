"""watch: alert the operator about what went wrong while no stage runs (backup overdue, disk
low, stale stages and workers, missed scheduled jobs, the weekly run not started), once per
condition, and once more when it is ok again. `schedule install` runs `watch --once` every
15 minutes."""
from __future__ import annotations

import json
import time

from imageselector.cli import add_root_argument


def _print(result: dict) -> None:
    conds = result["conditions"]
    print(f"watch on {result['host']}: {len(conds)} condition(s)")
    for c in conds:
        print(f"  {c['kind']:<16} {c['text'].splitlines()[0]}")
    for r in result["report"]:
        how = "sent" if r["sent"] else f"not sent: {r['error']}" if r["error"] else ""
        print(f"  {r['action']}: {r['text'].splitlines()[0]}" + (f" ({how})" if how else ""))
    for err in result["errors"]:
        print(f"error: {err}")


def cmd_watch(args) -> int:
    from pipeline.core.errors import AlreadyRunning
    from pipeline.core.root import Root
    from pipeline.watch.job import WatchBusy, watch_once

    root = Root.open(args.root)
    interval = float(root.config.get("watch.interval_s"))
    while True:
        try:
            result = watch_once(root)
        except WatchBusy as exc:
            raise AlreadyRunning(str(exc)) from None   # exit 3: the schedule records "busy"
        if args.json:
            print(json.dumps(result, indent=1, default=str))
        else:
            _print(result)
        if args.once:
            return 0
        time.sleep(interval)


def register(sub) -> None:
    p = sub.add_parser("watch", help="alert on overdue backups, low disk, stale stages, missed "
                                     "jobs and a weekly run not started (once per condition)")
    add_root_argument(p)
    p.add_argument("--once", action="store_true",
                   help="one pass, then exit (what the schedule runs every 15 minutes); without "
                        "it, repeat every watch.interval_s")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_watch)
