"""index verify / rebuild / prune-columns / info: the index store on the command line."""
from __future__ import annotations

import json
import sys

from imageselector.cli import add_root_argument


def _open_db_if_any(root):
    from pipeline.core.db import open_db

    return open_db(root) if root.db_path.exists() else None


def cmd_verify(args) -> int:
    from pipeline.index import verify
    from pipeline.core.root import Root

    root = Root.open(args.root)
    conn = None if args.no_db else _open_db_if_any(root)
    problems, summary = verify(root, conn, full=not args.quick)
    if args.json:
        print(json.dumps({"ok": not problems, "problems": problems, **summary}, indent=1))
    else:
        for p in problems:
            print(f"problem: {p}")
        state = "OK" if not problems else f"FAILED ({len(problems)} problems)"
        print(f"index {state}: {summary['shards']} shards, {summary['rows']:,} rows"
              f"{'' if conn is not None else ' (no DB checked)'}",
              file=sys.stdout if not problems else sys.stderr)
    return 0 if not problems else 1


def cmd_rebuild(args) -> int:
    from pipeline.index import rebuild
    from pipeline.core.root import Root

    root = Root.open(args.root)
    done = rebuild(root, force=not args.missing_only, shards=args.shard or None)
    print(f"rebuilt shards: {', '.join(map(str, done)) or 'none'}")
    return 0


def cmd_info(args) -> int:
    from pipeline.index import IndexStore
    from pipeline.core.root import Root

    root = Root.open(args.root)
    store = IndexStore.for_root(root)
    store.open(refresh_derived=False)
    info = [{"shard": s.number, "rows": s.rows, "capacity": s.capacity, "full": s.full,
             "batches": len({x.batch_id for x in s.slices}), "fingerprint": s.fingerprint,
             "derived": s.derived_state().get("files", {})} for s in store.shards]
    if args.json:
        print(json.dumps(info, indent=1))
    else:
        for s in info:
            kinds = sorted({f.get("type", "Flat") for k, f in s["derived"].items() if k != "image_index.json"})
            print(f"shard_{s['shard']:04d} {s['rows']:>9,} / {s['capacity']:,} rows "
                  f"{'final ' if s['full'] else 'active'} {s['batches']} batches "
                  f"types {','.join(kinds) or '-'} fingerprint {s['fingerprint']}")
        if not info:
            print("no shards yet")
    return 0


def cmd_prune_columns(args) -> int:
    from pipeline.core.root import Root
    from pipeline.reembed.prune import prune_columns

    root = Root.open(args.root)
    removed = prune_columns(root, dry_run=args.dry_run)
    if args.json:
        print(json.dumps({"dry_run": args.dry_run, "folders": removed}, indent=1))
        return 0
    verb = "would remove" if args.dry_run else "removed"
    for r in removed:
        print(f"{verb} {r['folder']} ({r['bytes'] / 1e6:,.1f} MB)")
    total = sum(r["bytes"] for r in removed)
    print(f"{verb} {len(removed)} column folders, {total / 1e6:,.1f} MB"
          if removed else "no superseded column folders")
    return 0


def register(sub) -> None:
    p = sub.add_parser("index", help="the index store: verify, rebuild, prune-columns, info")
    add_root_argument(p)
    isub = p.add_subparsers(dest="index_command", metavar="ACTION", required=True)

    v = isub.add_parser("verify", help="exit 0 only when every index file, image_index.json, "
                                       "the parts and the DB agree")
    add_root_argument(v)
    v.add_argument("--quick", action="store_true",
                   help="counts, dims and ids only; do not recompute vector hashes")
    v.add_argument("--no-db", action="store_true", help="do not compare with the DB")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=cmd_verify)

    r = isub.add_parser("rebuild", help="re-derive the FAISS files and image_index.json from the parts")
    add_root_argument(r)
    r.add_argument("--shard", type=int, action="append", help="only this shard (repeatable)")
    r.add_argument("--missing-only", action="store_true",
                   help="only extend or build what is missing or stale")
    r.set_defaults(func=cmd_rebuild)

    pc = isub.add_parser("prune-columns", help="remove re-embedded columns no shard reads any more "
                                              "(replaced by a later re-embed, or given up)")
    add_root_argument(pc)
    pc.add_argument("--dry-run", action="store_true", help="list them, remove nothing")
    pc.add_argument("--json", action="store_true")
    pc.set_defaults(func=cmd_prune_columns)

    i = isub.add_parser("info", help="shards, rows, index types")
    add_root_argument(i)
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_info)
