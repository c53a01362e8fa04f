"""How many listings a crawl pass misses when listings end during it, before and after the
overlapping pages (pipeline/stages/sync/paging.py).

    .venv/bin/python bench/bench_sync_paging.py [--listings 6000] [--ends 0,1,3,10] [--overlaps 0,5]

The local Etsy API ends ``end_per_search`` of the listings each query has served so far
after every search page (etsy_changes.py), so each later page shifts forward, as on the
live Etsy when listings sell out or expire mid-crawl. For each (ends, overlap) the
taxonomy and listings phases of a fresh root run in this process (page_size 100, three
price bands). Missed = listings still active at the end that the pass never stored; the
search and batch requests show what the overlap costs.
"""
from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from etsy_support import KEY, make_root, run_sync  # noqa: E402
from pipeline.core.fsutil import read_json_or_none  # noqa: E402
from pipeline.sandbox.etsy_api import LocalEtsyAPI  # noqa: E402

BANDS = (0, 40, 300, 1000000)


def one(work: Path, listings: int, ends: int, overlap: int) -> dict:
    with LocalEtsyAPI(listings=listings, api_key=KEY, end_per_search=ends) as api:
        root = make_root(work / f"e{ends}_o{overlap}", api.base_url, bands=BANDS,
                         sync={"page_size": 100, "page_overlap": overlap})
        start = time.monotonic()
        code = run_sync(root, phases="taxonomy,listings")
        wall = time.monotonic() - start
        conn = sqlite3.connect(str(root.db_path))
        got = {r[0] for r in conn.execute("SELECT listing_id FROM listings_static")}
        conn.close()
        ended = api.ended_ids()
        active = set(api.catalogue.expected()) - ended
        stats = api.stats()["counters"]
        counters = (read_json_or_none(root.heartbeat_path("sync")) or {}).get("counters", {})
        return {"ends": ends, "overlap": overlap, "exit": code, "active": len(active), "ended": len(ended),
                "missed": len(active - got), "search": stats.get("search", 0), "batch": stats.get("batch", 0),
                "lookbacks": counters.get("paging_lookbacks", 0), "wall_s": round(wall, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listings", type=int, default=6000)
    ap.add_argument("--ends", default="0,1,3,10", help="listings ended after each search page")
    ap.add_argument("--overlaps", default="0,5", help="sync.page_overlap values (0: before)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_paging_") as tmp:
        for ends in [int(x) for x in args.ends.split(",")]:
            for overlap in [int(x) for x in args.overlaps.split(",")]:
                rows.append(one(Path(tmp), args.listings, ends, overlap))
                if args.json:
                    print(json.dumps(rows[-1]), flush=True)
    if args.json:
        return
    print("| ended per page | overlap | ended in the pass | still active | missed | search | batch "
          "| look-backs | wall |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['ends']} | {r['overlap']} | {r['ended']:,} | {r['active']:,} | {r['missed']:,} | "
              f"{r['search']} | {r['batch']} | {r['lookbacks']} | {r['wall_s']:.1f} s |")


if __name__ == "__main__":
    main()
