"""search: ensemble similarity search by text, image file or indexed listing; search eval."""
from __future__ import annotations

import json
import sys

from imageselector.cli import add_root_argument
from pipeline.core.errors import UserError


def _models(text: str | None) -> list[str] | None:
    if not text:
        return None
    names = [m.strip() for m in text.split(",") if m.strip()]
    if not names:
        raise UserError("--models names no model")
    return names


def _price(item) -> str:
    if item.get("price") is None:
        return "-"
    return f"{item['price']:.2f} {item.get('currency') or ''}".strip()


def cmd_search(args) -> int:
    from pipeline.core.root import Root

    root = Root.open(args.root)
    if args.action == "eval":
        return _cmd_eval(root, args)
    if args.action == "index":
        from pipeline.index.searchindex import update_for_root

        done = update_for_root(root, force=args.force)
        if not done:
            print("no cross-shard search index configured (search.index_type is empty)")
        for row in done:
            print(json.dumps(row, default=str))
        return 0
    from pipeline.search.query import search
    from pipeline.stages.archive.primary import primary_location

    results, warnings = search(root, text=args.text, image=args.image, listing=args.listing,
                               image_id=args.image_id, k=args.k, models=_models(args.models),
                               locate=primary_location)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    if args.json:
        print(json.dumps(results, indent=1))
        return 0
    if not results:
        print("no results")
    print(f"{'#':>3} {'score':>8} {'agree':>5}  {'listing':>12} {'image':>12}  {'price':>12}  "
          f"{'shop':<16} title")
    for i, r in enumerate(results, 1):
        print(f"{i:>3} {r['score']:>8.5f} {r['agree']:>5}  {r['listing_id']:>12} {r['image_id']:>12}  "
              f"{_price(r):>12}  {str(r.get('shop') or '-')[:16]:<16} {str(r.get('title') or '-')[:60]}")
        ranks = ", ".join(f"{m} #{v['rank']} {v['score']:.3f}" for m, v in r["models"].items())
        print(f"{'':>17}{ranks}")
        prim = r["primary_image"]
        where = prim["path"] or "not on disk"
        if prim["offset"] is not None:
            where += f" @ {prim['offset']} ({prim['size']} bytes)"
        print(f"{'':>17}primary image: {where}")
    return 0


def _cmd_eval(root, args) -> int:
    from pipeline.search.engine import SearchEngine
    from pipeline.search.evaluate import evaluate

    if not 1 <= args.queries <= 100_000:
        raise UserError(f"--queries must be between 1 and 100000, got {args.queries}")
    engine = SearchEngine.for_root(root)
    engine.check_k(args.k)
    report = evaluate(engine, args.queries, args.k, _models(args.models))
    for w in engine.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    print(f"recall@{report['k']} against exact search, {report['queries']} queries:")
    for m, v in report["per_model"].items():
        print(f"  {m:<18} {v:.4f}  ({', '.join(report['types'][m])})")
    print(f"  {'fused':<18} {report['fused']:.4f}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("search", help="ensemble similarity search (or: search eval)",
                       description="Search by text, image file or indexed listing. "
                                   "'search eval' measures recall@k of the configured "
                                   "indexes against exact search.")
    add_root_argument(p)
    p.add_argument("action", nargs="?", choices=["eval", "index"],
                   help="eval: recall of the indexes; index: build or extend the cross-shard search "
                        "indexes (data/embeddings/search_*/, derived: safe to delete)")
    p.add_argument("--force", action="store_true", help="index: retrain from scratch")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--text", help="text (both CLIP text towers)")
    what.add_argument("--image", help="an image file (background removed, all image models)")
    what.add_argument("--listing", type=int, help="an indexed listing id (its stored vectors)")
    p.add_argument("--image-id", type=int, help="with --listing: this image of the listing")
    p.add_argument("-k", type=int, default=10, help="results (listings) to return")
    p.add_argument("--models", help="comma-separated index names (default: by query kind)")
    p.add_argument("--json", action="store_true", help="a JSON list, best first")
    p.add_argument("--queries", type=int, default=100, help="eval: number of sample queries")
    p.set_defaults(func=cmd_search)
