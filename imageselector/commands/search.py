"""search: ensemble similarity search (text, image files and URLs, listings, same item
elsewhere) with filters; search eval; search index."""
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


def build_request(args):
    """The SearchRequest of the command line (the console builds the same object)."""
    from pipeline.search.request import Filters, SearchRequest, parse_since

    exclude = frozenset()
    if args.exclude:
        try:
            exclude = frozenset(int(x) for x in args.exclude.split(",") if x.strip())
        except ValueError:
            raise UserError(f"--exclude takes listing ids separated by commas, got {args.exclude!r}") from None
    filters = Filters(min_price=args.min_price, max_price=args.max_price, taxonomy=args.taxonomy,
                      shop=args.shop, state=args.state, since=parse_since(args.since),
                      exclude=exclude)
    return SearchRequest(text=args.text, images=args.image or [], urls=args.url or [],
                         listing=args.listing, image_id=args.image_id, same_as=args.same_as,
                         combine=args.combine, filters=filters, k=args.k,
                         models=_models(args.models))


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
    from pipeline.search.query import run
    from pipeline.stages.archive.primary import primary_location

    if args.json and args.csv:
        raise UserError("give --json or --csv, not both")
    req = build_request(args)
    got = run(root, req, locate=primary_location)
    for w in got.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if args.csv:
        _write_csv(got.results, same_as=got.kind == "same_as")
    elif args.json:
        if got.kind == "same_as":
            print(json.dumps({"same_as": req.same_as, "notes": got.notes, "groups": got.groups},
                             indent=1))
        else:
            print(json.dumps(got.results, indent=1))
    elif got.kind == "same_as":
        _print_groups(req.same_as, got)
    else:
        _print_results(got.results)
    return 0


def _write_csv(results, same_as: bool) -> None:
    import csv

    from pipeline.search.results import CSV_FIELDS, csv_row

    out = csv.writer(sys.stdout, lineterminator="\n")
    out.writerow(CSV_FIELDS)
    for r in results:
        if same_as:  # per-model scores in the ranks column
            r = {**r, "ranks": r.get("scores")}
        out.writerow(csv_row(r))


def _print_groups(listing: int, got) -> None:
    for note in got.notes:
        print(note)
    if not got.groups:
        print(f"no other listing sells the item of listing {listing}")
        return
    for g in got.groups:
        print(f"shop {g['shop_id']} {g.get('shop') or ''}".rstrip())
        for r in g["listings"]:
            print(f"  {r['listing_id']:>12}  {_price(r):>12}  {r['score']:.3f}  {r['url']}  "
                  f"{str(r.get('title') or '-')[:50]}")


def _print_results(results) -> None:
    if not results:
        print("no results")
        return
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
        print(f"{'':>17}primary image: {where}  {r['url']}")


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
                       description="Search by text, image files or URLs, or a listing; "
                                   "--same-as finds the same item in other shops. "
                                   "'search eval' measures recall@k of the configured "
                                   "indexes against exact search.")
    add_root_argument(p)
    p.add_argument("action", nargs="?", choices=["eval", "index"],
                   help="eval: recall of the indexes; index: build or extend the cross-shard search "
                        "indexes (data/embeddings/search_*/, derived: safe to delete)")
    p.add_argument("--force", action="store_true", help="index: retrain from scratch")
    q = p.add_argument_group("query (text and images may go together)")
    q.add_argument("--text", help="text (both CLIP text towers)")
    q.add_argument("--image", action="append", metavar="FILE",
                   help="an image file (background removed, all image models); repeatable")
    q.add_argument("--url", action="append", metavar="URL",
                   help="an image URL (fetched with the downloader's checks) or an Etsy listing "
                        "URL; repeatable")
    q.add_argument("--combine", choices=["mean", "fuse"], default="mean",
                   help="several images: mean of the normalised vectors per model (default), "
                        "or one search per image, fused")
    q.add_argument("--listing", help="a listing id or Etsy listing URL (its stored vectors; "
                                     "not indexed: its images through the Etsy API)")
    q.add_argument("--image-id", type=int, help="with --listing: this image of the listing")
    q.add_argument("--same-as", metavar="LISTING",
                   help="the other listings selling the same item (near-duplicate images in "
                        "every model), grouped by shop")
    f = p.add_argument_group("filters (applied before the top k is cut)")
    f.add_argument("--min-price", type=float, help="lowest price, in the listing's currency")
    f.add_argument("--max-price", type=float, help="highest price, in the listing's currency")
    f.add_argument("--taxonomy", type=int, metavar="ID", help="a taxonomy node and its children")
    f.add_argument("--shop", type=int, metavar="ID", help="one shop")
    f.add_argument("--state", default="active", help="listing state (default active; any: all)")
    f.add_argument("--since", metavar="DATE", help="first seen after this date (YYYY-MM-DD)")
    f.add_argument("--exclude", metavar="IDS", help="listing ids to leave out (comma-separated)")
    p.add_argument("-k", type=int, default=10, help="results (listings) to return")
    p.add_argument("--models", help="comma-separated index names (default: by query kind)")
    p.add_argument("--json", action="store_true", help="a JSON list, best first")
    p.add_argument("--csv", action="store_true", help="CSV with a header row, best first")
    p.add_argument("--queries", type=int, default=100, help="eval: number of sample queries")
    p.set_defaults(func=cmd_search)
