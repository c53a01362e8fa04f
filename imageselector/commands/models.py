"""models: the embedding model registry and whether each model's weights are on this host."""
from __future__ import annotations

import json

from imageselector.cli import add_root_argument


def cmd_models(args) -> int:
    from pipeline.core.root import Root
    from pipeline.models.listing import model_listing

    listing = model_listing(Root.open(args.root))
    if args.json:
        print(json.dumps(listing, indent=1))
        return 0
    production = listing["profile"] == "production"
    print(f"profile {listing['profile']}"
          + (f", weights from {listing['cache_dir']}" if production else
             " (random weights built locally, nothing to fetch)"))
    print(f"  {'name':<14} {'library':<13} {'dim':>5}  {'text':<5} weights")
    for m in listing["models"]:
        weights = ("-" if m["weights_present"] is None
                   else "present" if m["weights_present"] else "MISSING")
        print(f"  {m['name']:<14} {m['library']:<13} {m['dim']:>5}  "
              f"{'yes' if m['text'] else 'no':<5} {weights}")
    missing = [m for m in listing["models"] if m["fetch"]]
    for m in missing:
        print(f"  {m['fetch']}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("models", help="the embedding models: library, dimension, text tower, "
                                      "weights present")
    add_root_argument(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_models)
