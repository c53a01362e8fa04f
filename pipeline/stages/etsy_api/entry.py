"""The `etsy-api` stage: the local Etsy API of a sandbox root, served until KILL_API.

Its flags default to the root's config (sandbox.port, sandbox.listings); the key it accepts
is the one the sync uses (etsy.key_file or $ETSY_API_KEY, else the sandbox key).
"""
from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--port", type=int, default=None, help="loopback port (default sandbox.port)")
    parser.add_argument("--listings", type=int, default=None, help="listings in the catalogue "
                                                                  "(default sandbox.listings)")
    parser.add_argument("--seed", type=int, default=0, help="catalogue seed")
    parser.add_argument("--qps", type=float, default=10.0, help="requests per second it allows (0: no limit)")
    parser.add_argument("--qpd", type=int, default=100000, help="requests per day it allows (0: no limit)")
    parser.add_argument("--big-leaf", default=None, metavar="TAXONOMY:COUNT",
                        help="give one leaf COUNT extra listings (beyond the 12,000 offset cap)")
    parser.add_argument("--fault", action="append", default=[], metavar="NAME=P[:BURST]",
                        help="fault switch (drop, slow, 429, 5xx, html, malformed, error200, "
                             "bad_fields, vanish); repeatable")


def _api_key(ctx) -> str:
    from pipeline.core.errors import UserError
    from pipeline.etsy.settings import read_api_key

    try:
        return read_api_key(ctx.config)
    except UserError:
        from pipeline.sandbox.etsy_api import DEFAULT_KEY

        return DEFAULT_KEY


def run(ctx) -> int:
    from pipeline.core.errors import UserError
    from pipeline.sandbox.etsy_api import serve
    from pipeline.sandbox.etsy_faults import parse_fault

    args = ctx.args
    port = getattr(args, "port", None)
    port = int(ctx.config.get("sandbox.port", 8765)) if port is None else int(port)
    listings = getattr(args, "listings", None)
    listings = int(ctx.config.get("sandbox.listings", 400)) if listings is None else int(listings)
    faults = []
    for text in getattr(args, "fault", None) or []:
        try:
            faults.append(parse_fault(text))
        except ValueError as exc:
            raise UserError(f"--fault: {exc}") from None
    big_leaf = None
    if getattr(args, "big_leaf", None):
        try:
            leaf, count = (int(x) for x in args.big_leaf.split(":"))
            big_leaf = (leaf, count)
        except ValueError:
            raise UserError(f"--big-leaf must be TAXONOMY:COUNT, got {args.big_leaf!r}") from None

    def ready(api) -> None:
        ctx.set_info(base_url=api.base_url, port=api.port, listings=api.catalogue.n)
        ctx.log.info("local Etsy API on %s (%d listings)", api.base_url, api.catalogue.n)

    try:
        serve(port=port, stop=lambda: not ctx.sleep(0.5), on_ready=ready, poll_s=0.0,
              listings=listings, seed=getattr(args, "seed", 0), api_key=_api_key(ctx),
              qps=getattr(args, "qps", 10.0) or None, qpd=getattr(args, "qpd", 100000) or None,
              faults=[(name, (p, burst)) for name, p, burst in faults], big_leaf=big_leaf,
              log=None)
    except OSError as exc:
        raise UserError(f"local Etsy API: cannot listen on 127.0.0.1:{port} ({exc.strerror})") from None
    return 0
