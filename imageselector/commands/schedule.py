"""schedule show | install | uninstall | run | run-due, and housekeeping."""
from __future__ import annotations

import json
import time

from imageselector.cli import add_root_argument
from pipeline.core.fmt import date_time


def cmd_show(args) -> int:
    from pipeline.core.db import open_db
    from pipeline.core.root import Root
    from pipeline.core.schedule import show

    root = Root.open(args.root)
    conn = open_db(root)
    try:
        jobs = show(root, conn)
    finally:
        conn.close()
    if args.json:
        print(json.dumps(jobs, indent=1))
        return 0
    for j in jobs:
        last = j["last_run"] or {}
        state = "" if j["enabled"] else "(disabled) "
        print(f"{j['job']:<20} {j['cron']:<14} next {date_time(j['next_run'])}  last {date_time(last.get('started_at'))} "
              f"{last.get('outcome') or ''} {state}")
        for s in j["steps"]:
            print(f"    imageselector {s}")
    return 0


def cmd_install(args, uninstall: bool = False) -> int:
    from pipeline.core.root import Root
    from pipeline.core.schedule import install

    root = Root.open(args.root)
    plan = install(root, platform=args.platform, dry_run=args.dry_run, crontab_file=args.crontab_file,
                   agents_dir=args.agents_dir, load=not args.no_load, uninstall=uninstall)
    if args.dry_run:
        print(plan.text, end="" if plan.text.endswith("\n") else "\n")
        for cmd in plan.commands:
            print("# would run: " + " ".join(cmd))
        return 0
    where = args.crontab_file or ("the crontab" if plan.platform == "cron" else "launchd")
    print(f"schedule {'removed from' if uninstall else 'installed in'} {where}")
    return 0


def cmd_run(args) -> int:
    from pipeline.core.root import Root
    from pipeline.core.schedule import get_job, run_job

    root = Root.open(args.root)
    result = run_job(root, get_job(root, args.job), trigger=args.trigger)
    print(f"{result['job']}: {result['outcome']} (exit {result['exit_code']}"
          f"{', at ' + result['step'] if result['outcome'] != 'ok' else ''})")
    return 0 if result["outcome"] == "ok" else 1


def cmd_run_due(args) -> int:
    from pipeline.core.root import Root
    from pipeline.core.schedule import run_due

    root = Root.open(args.root)
    code = 0
    while True:
        results = run_due(root, dry_run=args.dry_run)
        for r in results:
            print(f"{date_time(time.time())} {r['job']}: {r['outcome']}", flush=True)
            if r["outcome"] not in ("ok", "due"):
                code = 1
        if not args.loop:
            return code
        time.sleep(args.loop)


def cmd_housekeeping(args) -> int:
    from pipeline.core.housekeeping import refresh_disk_usage, rotate_logs
    from pipeline.core.root import Root

    root = Root.open(args.root)
    out: dict = {}
    do_all = not (args.rotate or args.disk)
    if args.rotate or do_all:
        out["rotated"] = rotate_logs(root)
    if args.disk or do_all:
        out["disk"] = refresh_disk_usage(root, max_age_s=0)
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    if "rotated" in out:
        print(f"logs rotated: {', '.join(out['rotated']) or 'none'}")
    if "disk" in out:
        for f in out["disk"]["folders"]:
            size = "-" if f["bytes"] is None else f"{f['bytes'] / 1e9:.2f} GB"
            free = "-" if f["free_bytes"] is None else f"{f['free_bytes'] / 1e9:.1f} GB free"
            print(f"  {f['folder']:<22} {size:>10}  {f['files'] or 0:>9} files  {free}  {f['error'] or ''}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("schedule", help="the cron table: show, install, run, run-due")
    add_root_argument(p)
    ssub = p.add_subparsers(dest="schedule_command", metavar="ACTION", required=True)

    s = ssub.add_parser("show", help="jobs, their next and last runs")
    add_root_argument(s)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_show)

    for name, uninstall in (("install", False), ("uninstall", True)):
        s = ssub.add_parser(name, help=f"{name} the crontab entries (launchd plists on macOS)")
        add_root_argument(s)
        s.add_argument("--dry-run", action="store_true", help="print what would be written; change nothing")
        s.add_argument("--crontab-file", default=None, help="edit this file instead of the user's crontab")
        s.add_argument("--platform", choices=["linux", "darwin"], default=None,
                       help="crontab (linux) or launchd (darwin); default: this machine's")
        s.add_argument("--agents-dir", default=None, help="launchd: where the plists go")
        s.add_argument("--no-load", action="store_true", help="launchd: do not run launchctl")
        s.set_defaults(func=lambda a, u=uninstall: cmd_install(a, u))

    s = ssub.add_parser("run", help="run one job now (what cron and launchd call), recording it")
    add_root_argument(s)
    s.add_argument("job")
    s.add_argument("--trigger", default="manual", choices=["manual", "cron", "launchd", "run-due"])
    s.set_defaults(func=cmd_run)

    s = ssub.add_parser("run-due", help="run the jobs whose time has come (for machines without cron)")
    add_root_argument(s)
    s.add_argument("--dry-run", action="store_true", help="list the due jobs; run nothing")
    s.add_argument("--loop", type=float, default=0, help="check again every this many seconds")
    s.set_defaults(func=cmd_run_due)

    p = sub.add_parser("housekeeping", help="rotate stage logs and measure disk use per folder")
    add_root_argument(p)
    p.add_argument("--rotate", action="store_true")
    p.add_argument("--disk", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_housekeeping)
