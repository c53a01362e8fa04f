"""Crawl units: (taxonomy, price band), each with its cursor in ``crawl_units``.

Etsy answers at most offset 12,000, so every unit must hold at most that many listings.
The bands come from the root's furniture_taxonomy_config.json (``price_breaks``: the
intervals [b0, b1], (b1, b2], ...; a band starts a cent above the previous break). A unit
found to hold more is split in two at a price between its bounds, and the split is saved
(``split_from`` names the parent, whose ``exhausted`` becomes SPLIT), so every later pass
starts from the finer bands.

Prices are handled in whole cents; the DB holds dollars rounded to the cent.
"""
from __future__ import annotations

import math
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.errors import UserError

# crawl_units.exhausted
TODO, DONE, SPLIT = 0, 1, 2


@dataclass(frozen=True)
class Unit:
    unit_id: int
    taxonomy_id: int
    min_cents: int
    max_cents: int
    next_offset: int
    total_count: int | None

    @property
    def min_price(self) -> float:
        return self.min_cents / 100

    @property
    def max_price(self) -> float:
        return self.max_cents / 100

    def label(self) -> str:
        return f"{self.taxonomy_id} ${self.min_price:.2f}-{self.max_price:.2f}"


def cents(dollars: float) -> int:
    return int(round(float(dollars) * 100))


def load_band_config(path: Path) -> list[tuple[int, int, int]]:
    """[(taxonomy_id, min_cents, max_cents)] from a furniture_taxonomy_config.json."""
    from pipeline.core.config import read_json

    try:
        data = read_json(path)
    except FileNotFoundError:
        raise UserError(f"{path}: price band config missing (run `imageselector init price-breaks` "
                        f"or copy the committed default)") from None
    taxonomies = data.get("taxonomies") if isinstance(data, dict) else None
    if not isinstance(taxonomies, list) or not taxonomies:
        raise UserError(f"{path}: expected {{\"taxonomies\": [{{id, price_breaks}}, ...]}}")
    bands = []
    for entry in taxonomies:
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), int):
            raise UserError(f"{path}: each taxonomy needs an integer id")
        breaks = entry.get("price_breaks") or [0, 1000000]
        if not isinstance(breaks, list) or len(breaks) < 2 or not all(
                isinstance(b, (int, float)) and not isinstance(b, bool) and b >= 0 for b in breaks):
            raise UserError(f"{path}: taxonomy {entry['id']}: price_breaks must be a list of "
                            f"at least two prices >= 0")
        points = [cents(b) for b in breaks]
        if any(b <= a for a, b in zip(points, points[1:])):
            raise UserError(f"{path}: taxonomy {entry['id']}: price_breaks must increase")
        for i, (lo, hi) in enumerate(zip(points, points[1:])):
            bands.append((entry["id"], lo if i == 0 else lo + 1, hi))
    return bands


def _row_unit(row) -> Unit:
    return Unit(row[0], row[1], cents(row[2]), cents(row[3]), row[4], row[5])


_UNIT_COLS = "unit_id, taxonomy_id, min_price, max_price, next_offset, total_count"


def sync_units_with_config(conn: sqlite3.Connection, bands: list[tuple[int, int, int]],
                           pass_no: int) -> tuple[int, int]:
    """Make the top-level units match the band config (inside the caller's transaction):
    add missing bands, drop bands no longer configured (with their split parts). Split
    parts of bands that stay are kept. Returns (added, removed)."""
    wanted = {(t, lo, hi) for t, lo, hi in bands}
    rows = conn.execute("SELECT unit_id, taxonomy_id, min_price, max_price FROM crawl_units "
                        "WHERE split_from IS NULL").fetchall()
    have = {(t, cents(lo), cents(hi)): uid for uid, t, lo, hi in rows}
    removed = 0
    for key, uid in have.items():
        if key not in wanted:
            removed += _delete_tree(conn, uid)
    added = 0
    now = time.time()
    for t, lo, hi in bands:
        if (t, lo, hi) not in have:
            conn.execute("INSERT OR IGNORE INTO crawl_units(taxonomy_id, min_price, max_price, "
                         "pass_no, updated_at) VALUES (?, ?, ?, ?, ?)", (t, lo / 100, hi / 100, pass_no, now))
            added += 1
    return added, removed


def _delete_tree(conn: sqlite3.Connection, unit_id: int) -> int:
    children = [r[0] for r in conn.execute("SELECT unit_id FROM crawl_units WHERE split_from = ?", (unit_id,))]
    n = sum(_delete_tree(conn, c) for c in children)
    conn.execute("DELETE FROM crawl_units WHERE unit_id = ?", (unit_id,))
    return n + 1


def reset_for_pass(conn: sqlite3.Connection, pass_no: int) -> None:
    """A new pass: every unit that is not split starts again at offset 0 (in a transaction)."""
    conn.execute("UPDATE crawl_units SET next_offset = 0, exhausted = ?, pass_no = ?, updated_at = ? "
                 "WHERE exhausted != ?", (TODO, pass_no, time.time(), SPLIT))
    conn.execute("UPDATE crawl_units SET pass_no = ? WHERE exhausted = ?", (pass_no, SPLIT))


def next_unit(conn: sqlite3.Connection, skip: set[int]) -> Unit | None:
    """The next unit to crawl, in (taxonomy, price) order, so a split's parts come next."""
    for row in conn.execute(f"SELECT {_UNIT_COLS} FROM crawl_units WHERE exhausted = ? "
                            f"ORDER BY taxonomy_id, min_price, max_price", (TODO,)):
        if row[0] not in skip:
            return _row_unit(row)
    return None


def pending_units(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT COUNT(*) FROM crawl_units WHERE exhausted = ?", (TODO,)).fetchone()[0]


def split_point(lo: int, hi: int) -> int | None:
    """A price (cents) to split [lo, hi] at: the geometric middle (prices spread over
    decades), or the arithmetic one near zero. None for a one-cent band."""
    if hi <= lo:
        return None
    if hi > 200:
        mid = int(math.sqrt(max(lo, 100) * hi))
    else:
        mid = (lo + hi) // 2
    return min(max(mid, lo), hi - 1)


def split_unit(conn: sqlite3.Connection, unit: Unit, count: int, pass_no: int) -> list[tuple[int, int]] | None:
    """Replace a unit by two halves (inside the caller's transaction). None: cannot split."""
    mid = split_point(unit.min_cents, unit.max_cents)
    if mid is None:
        return None
    now = time.time()
    halves = [(unit.min_cents, mid), (mid + 1, unit.max_cents)]
    for lo, hi in halves:
        conn.execute("INSERT INTO crawl_units(taxonomy_id, min_price, max_price, split_from, pass_no, "
                     "updated_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(taxonomy_id, min_price, max_price) "
                     "DO UPDATE SET exhausted = 0, next_offset = 0, split_from = excluded.split_from, "
                     "pass_no = excluded.pass_no",
                     (unit.taxonomy_id, lo / 100, hi / 100, unit.unit_id, pass_no, now))
    conn.execute("UPDATE crawl_units SET exhausted = ?, total_count = ?, updated_at = ? WHERE unit_id = ?",
                 (SPLIT, count, now, unit.unit_id))
    return halves


def advance(conn: sqlite3.Connection, unit: Unit, next_offset: int, count: int, finished: bool) -> None:
    """Move the cursor (inside the page's transaction)."""
    conn.execute("UPDATE crawl_units SET next_offset = ?, total_count = ?, exhausted = ?, updated_at = ? "
                 "WHERE unit_id = ?", (next_offset, count, DONE if finished else TODO, time.time(),
                                       unit.unit_id))
