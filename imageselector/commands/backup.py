"""backup status | verify | restore | list: the backups as the operator sees them."""
from __future__ import annotations

import json

from imageselector.cli import add_root_argument
from pipeline.core.fmt import date_time, size



def cmd_status(args) -> int:
    from pipeline.stages.backup.status import backup_status
    from pipeline.core.db import open_db
    from pipeline.core.root import Root

    root = Root.open(args.root)
    conn = open_db(root)
    try:
        items = backup_status(root, conn)
    finally:
        conn.close()
    if args.json:
        print(json.dumps(items, indent=1))
        return 0
    if not items:
        print("no backup target or mirror configured ([backup.targets.NAME] in imageselector.toml)")
        return 0
    for it in items:
        print("\n".join(backup_lines(it)))
    return 0


def backup_lines(it: dict, indent: str = "") -> list[str]:
    """One target of backup_status as text (also `imageselector status`; the console's
    backups panel shows the same words, pipeline.stages.backup.status.target_words)."""
    from pipeline.stages.backup.status import target_words

    w = target_words(it)
    lines = [f"{indent}{it['target']:<14} {it['kind']:<9} last ok {w['last_ok']:>9}  {w['size']:>8}  "
             f"{w['verified']:<12} {' '.join(w['flags'])}".rstrip()]
    if it.get("last_error"):
        lines.append(f"{indent}  error: {it['last_error']}")
    return lines


def cmd_verify(args) -> int:
    from pipeline.stages.backup.records import backup_lock
    from pipeline.stages.backup.targets import load_mirrors, load_targets
    from pipeline.stages.backup.verify import verify_mirror, verify_target
    from pipeline.core.db import open_db
    from pipeline.core.errors import UserError
    from pipeline.core.root import Root

    root = Root.open(args.root)
    names = set(args.target or [])
    targets = [t for t in load_targets(root) if not names or t.name in names]
    mirrors = [m for m in load_mirrors(root) if not names or m.name in names]
    unknown = names - {t.name for t in targets} - {m.name for m in mirrors}
    if unknown:
        raise UserError(f"no backup target or mirror named {', '.join(sorted(unknown))}")
    if not targets and not mirrors:
        raise UserError("no backup target or mirror configured")
    from pipeline.stages.backup.alerting import send_failure

    results = []
    with backup_lock(root):
        conn = open_db(root)
        try:
            for t in targets:
                results.append(verify_target(root, conn, t))
                if not results[-1].ok:  # backup_verify_failed, also when cron runs this
                    send_failure(root, conn, results[-1], t.path, t.mount)
            for m in mirrors:
                row = conn.execute("SELECT MAX(started_at) FROM backups WHERE target = ? AND "
                                   "kind = 'mirror' AND ok = 1", (m.name,)).fetchone()
                results.append(verify_mirror(root, conn, m, since=row[0] if row else None))
                if not results[-1].ok:
                    send_failure(root, conn, results[-1], m.dest, m.mount)
        finally:
            conn.close()
    bad = [r for r in results if not r.ok]
    if args.json:
        print(json.dumps([r.__dict__ for r in results], indent=1))
    else:
        for r in results:
            print(f"{r.target:<14} {'ok' if r.ok else 'FAILED'}  {r.path or r.error or ''}")
    return 1 if bad else 0


def cmd_restore(args) -> int:
    from pipeline.stages.backup.restore import pick_generation, restore
    from pipeline.stages.backup.targets import find_target
    from pipeline.core.root import Root

    root = Root.open(args.root, create=False)
    target = find_target(root, args.target)
    gen = pick_generation(target, args.generation)
    result = restore(gen, args.into)
    print(f"restored {result['generation']} ({result['files']} files) into {result['into']}")
    return 0


def cmd_list(args) -> int:
    from pipeline.stages.backup.generations import generations
    from pipeline.stages.backup.targets import load_targets
    from pipeline.core.fsutil import read_json_or_none
    from pipeline.core.root import Root

    root = Root.open(args.root)
    out = []
    for t in load_targets(root):
        if args.target and t.name not in args.target:
            continue
        for g in generations(t.path):
            m = read_json_or_none(g / "MANIFEST.json") or {}
            out.append({"target": t.name, "generation": g.name, "path": str(g),
                        "created": m.get("created"), "bytes": m.get("bytes")})
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        for o in out:
            when = date_time(o["created"]) if o["created"] else "?"
            print(f"{o['target']:<14} {o['generation']:<26} {when}  {size(o['bytes'])}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("backup", help="backup status, verification and restore")
    add_root_argument(p)
    bsub = p.add_subparsers(dest="backup_command", metavar="ACTION", required=True)

    s = bsub.add_parser("status", help="per target: last success, age, size, verified, overdue")
    add_root_argument(s)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)

    s = bsub.add_parser("verify", help="re-check the newest generation of each target, and the mirrors")
    add_root_argument(s)
    s.add_argument("--target", action="append", help="only this target or mirror (repeatable)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_verify)

    s = bsub.add_parser("restore", help="restore a backup generation into a fresh root")
    add_root_argument(s)
    s.add_argument("--target", required=True)
    s.add_argument("--generation", default=None, help="data_YYYYmmdd_HHMMSS (default: the newest)")
    s.add_argument("--into", required=True, help="a folder that does not exist yet, or is empty")
    s.set_defaults(func=cmd_restore)

    s = bsub.add_parser("list", help="the generations on each target")
    add_root_argument(s)
    s.add_argument("--target", action="append")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_list)
