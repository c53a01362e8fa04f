"""Price bands for the crawl (the seed's init/calculate_price_breaks.py).

From a band's lower bound, grow the upper bound by 10% until the band holds at least
``target`` listings, then shrink it by 1% until it holds fewer; the next band starts a cent
higher. Each count is one ``findAllListingsActive`` call with ``limit=1`` (about 15 per
band: a full recomputation for 125 bands costs some 2,000 requests of the day's quota).
Prices are whole cents here; the file holds dollars.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

from pipeline.core.errors import UserError
from pipeline.core.fsutil import atomic_write_bytes


def compute_breaks(count: Callable[[int, int], int], target: int, max_cents: int,
                   start_cents: int = 0, on_band: Callable[[int, int, int], None] | None = None) -> list[int]:
    """Break points in cents: [start, b1, b2, ..., max]. Band i is [b(i-1) + 1 cent, b(i)]
    (the first starts at ``start``)."""
    if target < 1:
        raise UserError(f"price band target must be >= 1, got {target}")
    if max_cents <= start_cents:
        raise UserError("the highest price must be above the lowest")
    breaks = [start_cents]
    lo = start_cents
    while lo <= max_cents:
        hi = min(max_cents, max(lo + 100, math.ceil(lo * 1.1)))
        n = count(lo, hi)
        while n < target and hi < max_cents:
            hi = min(max_cents, max(hi + 1, math.ceil(hi * 1.1)))
            n = count(lo, hi)
        if n < target:  # the rest of the range holds fewer than target: the last band
            breaks.append(max_cents)
            if on_band:
                on_band(lo, max_cents, n)
            break
        while n >= target and hi > lo:
            hi = max(lo, min(hi - 1, math.floor(hi * 0.99)))
            n = count(lo, hi)
        breaks.append(hi)
        if on_band:
            on_band(lo, hi, n)
        if hi >= max_cents:
            break
        lo = hi + 1
    if breaks[-1] != max_cents:
        breaks.append(max_cents)
    return breaks


def _dollars(c: int):
    return c // 100 if c % 100 == 0 else round(c / 100, 2)


def write_band_config(path: Path, taxonomy_id: int, name: str, breaks_cents: list[int]) -> None:
    """Replace one taxonomy's price_breaks in the config file, atomically; others are kept."""
    import json

    from pipeline.core.config import read_json

    try:
        data = read_json(path)
    except FileNotFoundError:
        data = {}
    if not isinstance(data, dict):
        data = {}
    data.setdefault("description",
                    "Furniture taxonomy crawl configuration. Each entry has taxonomy_id, name, and "
                    "price_breaks. Price breaks define intervals: [0, p1], (p1, p2], ..., (pN, max].")
    entries = [e for e in data.get("taxonomies") or [] if isinstance(e, dict) and e.get("id") != taxonomy_id]
    entries.append({"id": taxonomy_id, "name": name, "price_breaks": [_dollars(c) for c in breaks_cents],
                    "computed_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
    data["taxonomies"] = sorted(entries, key=lambda e: e.get("id", 0))
    atomic_write_bytes(path, (json.dumps(data, indent=2) + "\n").encode())


def price_breaks_from_api(client, taxonomy_id: int, target: int, max_price: float,
                          say: Callable[[str], None] = print) -> list[int]:
    def count(lo: int, hi: int) -> int:
        return client.find_active(taxonomy_id, lo / 100, hi / 100, offset=0, limit=1)["count"]

    def on_band(lo: int, hi: int, n: int) -> None:
        say(f"  ${lo / 100:.2f} - ${hi / 100:.2f}: {n} listings")

    return compute_breaks(count, target, int(round(max_price * 100)), on_band=on_band)
