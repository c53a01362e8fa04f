"""init price-breaks / init taxonomy: the one-time set-up steps of the crawl, redone at will."""
from __future__ import annotations

from imageselector.cli import add_root_argument
from pipeline.core.errors import UserError


def _client(root):
    from pipeline.etsy.client import EtsyClient

    return EtsyClient.from_root(root)


def cmd_price_breaks(args) -> int:
    from pipeline.etsy.errors import EtsyError, QuotaExhausted
    from pipeline.stages.sync.pricebreaks import price_breaks_from_api, write_band_config
    from pipeline.core.root import Root

    root = Root.open(args.root)
    cfg = root.config
    taxonomy = args.taxonomy if args.taxonomy is not None else int(cfg.get("sync.root_taxonomy_id"))
    target = args.target if args.target is not None else int(cfg.get("sync.price_band_target"))
    max_price = args.max_price if args.max_price is not None else float(cfg.get("sync.price_band_max"))
    path = root.db_dir / str(cfg.get("sync.band_config"))
    client = _client(root)
    print(f"price bands for taxonomy {taxonomy}: under {target} listings each, up to ${max_price:,.2f}")
    try:
        breaks = price_breaks_from_api(client, taxonomy, target, max_price)
    except QuotaExhausted as exc:
        raise UserError(f"Etsy daily quota spent after {client.stats.get('requests', 0)} requests; "
                        f"{path.name} was not changed ({client.redact(exc)})") from None
    except EtsyError as exc:
        raise UserError(f"Etsy API: {client.redact(exc)}; {path.name} was not changed") from None
    finally:
        client.close()
    print(f"{len(breaks) - 1} bands, {client.stats.get('requests', 0)} requests")
    if args.dry_run:
        return 0
    write_band_config(path, taxonomy, args.name, breaks)
    print(f"wrote {path}")
    return 0


def cmd_taxonomy(args) -> int:
    import json

    from pipeline.etsy.errors import EtsyError
    from pipeline.core.fsutil import atomic_write_bytes
    from pipeline.core.root import Root
    from pipeline.stages.sync.store import find_subtree

    root = Root.open(args.root)
    taxonomy = args.taxonomy if args.taxonomy is not None else int(root.config.get("sync.root_taxonomy_id"))
    client = _client(root)
    try:
        nodes = find_subtree(client.taxonomy_nodes(), taxonomy)
    except EtsyError as exc:
        raise UserError(f"Etsy API: {client.redact(exc)}") from None
    finally:
        client.close()
    if not nodes:
        raise UserError(f"taxonomy {taxonomy} is not in Etsy's seller taxonomy")
    ids = [n["id"] for n in nodes]
    leaves = [n["id"] for n in nodes if not n.get("children")]
    atomic_write_bytes(root.db_dir / "furniture_taxonomy_ids.json", json.dumps(ids).encode())
    atomic_write_bytes(root.db_dir / "furniture_leaf_taxonomy_ids.json", json.dumps(leaves).encode())
    print(f"taxonomy {taxonomy}: {len(ids)} nodes, {len(leaves)} leaves; wrote "
          f"furniture_taxonomy_ids.json and furniture_leaf_taxonomy_ids.json in {root.db_dir}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("init", help="set-up steps of the crawl: price bands, taxonomy ids")
    group = p.add_subparsers(dest="init_command", metavar="INIT_COMMAND")

    q = group.add_parser("price-breaks", help="recompute the crawl's price bands from the Etsy API")
    add_root_argument(q)
    q.add_argument("--taxonomy", type=int, default=None, help="taxonomy id (default sync.root_taxonomy_id)")
    q.add_argument("--name", default="Furniture", help="the taxonomy's name in the file")
    q.add_argument("--target", type=int, default=None,
                   help="listings per band: each band holds just under this (default sync.price_band_target)")
    q.add_argument("--max-price", type=float, default=None, help="upper bound of the last band")
    q.add_argument("--dry-run", action="store_true", help="print the bands, write nothing")
    q.set_defaults(func=cmd_price_breaks)

    q = group.add_parser("taxonomy", help="fetch the taxonomy ids (all and leaves) under the crawl root")
    add_root_argument(q)
    q.add_argument("--taxonomy", type=int, default=None, help="taxonomy id (default sync.root_taxonomy_id)")
    q.set_defaults(func=cmd_taxonomy)

    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
