"""The listing attributes search filters on, as arrays (issue 19): for each listing id, its
newest price and state, taxonomy node, shop and first-seen time.

Loaded from the DB in one query (newest listings_dynamic row per listing, by the unique
(listing_id, snapshot_timestamp) index) and kept while the DB's listings do not change (a
long-lived caller such as the console re-checks a cheap signature before each query), so a
filter is a few vectorised comparisons, not a DB scan per query."""
from __future__ import annotations

import numpy as np

from pipeline.core.errors import UserError

_SQL = ("SELECT s.listing_id, s.shop_id, s.taxonomy_id, s.first_seen, d.price_amount, "
        "d.price_divisor, d.state FROM listings_static s LEFT JOIN listings_dynamic d ON d.id = "
        "(SELECT id FROM listings_dynamic x WHERE x.listing_id = s.listing_id "
        "ORDER BY x.snapshot_timestamp DESC LIMIT 1) ORDER BY s.listing_id")


def db_signature(conn) -> tuple:
    """Changes when listings or their snapshots are added (a new state or price is a new
    listings_dynamic row)."""
    return (conn.execute("SELECT count(*) FROM listings_static").fetchone()[0],
            conn.execute("SELECT max(id) FROM listings_dynamic").fetchone()[0],
            conn.execute("SELECT count(*) FROM taxonomy_static").fetchone()[0])


class ListingTable:
    """Arrays aligned with ``ids`` (sorted listing ids): price (NaN: none), state (a code
    into ``state_names``), taxonomy and shop (-1: none), first_seen (NaN: none)."""

    def __init__(self, ids, price, state, taxonomy, shop, first_seen, signature=None):
        self.ids = np.asarray(ids, dtype=np.int64)
        self.price = np.asarray(price, dtype=np.float64)
        # states as small codes (a state never stored counts as active: the crawl reads
        # only active listings), so the state filter is one integer comparison
        names = sorted({(x or "active") for x in state})
        code = {n: i for i, n in enumerate(names)}
        self.state_names = names
        self.state = np.fromiter((code[x or "active"] for x in state), np.int16, len(state))
        self.taxonomy = np.asarray(taxonomy, dtype=np.int64)
        self.shop = np.asarray(shop, dtype=np.int64)
        self.first_seen = np.asarray(first_seen, dtype=np.float64)
        self.signature = signature

    @classmethod
    def load(cls, conn) -> "ListingTable":
        sig = db_signature(conn)
        rows = conn.execute(_SQL).fetchall()
        if not rows:
            z = np.zeros(0)
            return cls(z, z, z, z, z, z, sig)
        lid, shop, tax, seen, amount, divisor, state = zip(*rows)
        price = [a / (d or 1) if a is not None else np.nan for a, d in zip(amount, divisor)]
        return cls(lid, price, state, [-1 if t is None else t for t in tax],
                   [-1 if s is None else s for s in shop],
                   [np.nan if s is None else s for s in seen], sig)

    def fresh(self, conn) -> bool:
        return self.signature == db_signature(conn)

    def position(self, listing_ids) -> tuple[np.ndarray, np.ndarray]:
        """(index into the arrays, found) for each listing id."""
        q = np.asarray(listing_ids, dtype=np.int64)
        pos = np.searchsorted(self.ids, q)
        pos = np.minimum(pos, max(len(self.ids) - 1, 0))
        found = (self.ids[pos] == q) if len(self.ids) else np.zeros(len(q), bool)
        return pos, found

    def passes(self, filters, subtree: np.ndarray | None) -> np.ndarray:
        """Per listing of the table: does it pass ``filters`` (a request.Filters)? The
        taxonomy filter takes the node and its descendants (``subtree``)."""
        ok = np.ones(len(self.ids), dtype=bool)
        with np.errstate(invalid="ignore"):
            if filters.min_price is not None:
                ok &= self.price >= filters.min_price - 1e-9
            if filters.max_price is not None:
                ok &= self.price <= filters.max_price + 1e-9
            if filters.since is not None:
                ok &= self.first_seen > filters.since
        if filters.shop is not None:
            ok &= self.shop == int(filters.shop)
        if subtree is not None:
            ok &= np.isin(self.taxonomy, subtree)
        if filters.state != "any":
            want = str(filters.state)
            if want not in self.state_names:
                return np.zeros(len(self.ids), dtype=bool)
            ok &= self.state == self.state_names.index(want)
        return ok


def taxonomy_subtree(conn, taxonomy_id: int) -> np.ndarray:
    """The node and its descendants from taxonomy_static; only the node when the DB holds no
    taxonomy; a one-line error for a node the stored taxonomy does not know."""
    tid = int(taxonomy_id)
    if conn.execute("SELECT count(*) FROM taxonomy_static").fetchone()[0] == 0:
        return np.array([tid], dtype=np.int64)
    if conn.execute("SELECT 1 FROM taxonomy_static WHERE taxonomy_id = ?", (tid,)).fetchone() is None:
        raise UserError(f"--taxonomy {tid} is not a node of the stored taxonomy")
    rows = conn.execute("WITH RECURSIVE sub(id) AS (SELECT ? UNION SELECT t.taxonomy_id FROM "
                        "taxonomy_static t JOIN sub ON t.parent_id = sub.id) SELECT id FROM sub",
                        (tid,)).fetchall()
    return np.array(sorted(r[0] for r in rows), dtype=np.int64)
