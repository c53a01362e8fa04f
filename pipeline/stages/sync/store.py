"""What the crawl writes: idempotent upserts, each page in one transaction with its cursor.

Every function here runs inside the caller's transaction (``pipeline.core.db.transaction``),
so a page's listings, images, shop stubs and the cursor advance are all or nothing.
"""
from __future__ import annotations

import json
import sqlite3

from pipeline.core.db import add_discovered_images

_LISTING_STATIC = (
    "shop_id", "user_id", "title", "description", "url", "creation_timestamp", "is_customizable",
    "is_personalizable", "listing_type", "tags", "materials", "style", "production_partners",
    "processing_min", "processing_max", "who_made", "when_made", "item_weight", "item_weight_unit",
    "item_length", "item_width", "item_height", "item_dimensions_unit", "should_auto_renew",
    "language", "taxonomy_id")
_JSON_FIELDS = {"tags", "materials", "style", "production_partners"}
_BOOL_FIELDS = {"is_customizable", "is_personalizable", "should_auto_renew"}


def _value(item: dict, name: str):
    value = item.get(name)
    if name in _JSON_FIELDS:
        return json.dumps(value if value is not None else [])
    if name in _BOOL_FIELDS and value is not None:
        return int(bool(value))
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return value


# first_seen is written by the insert alone (the original's rule: a listing's first-seen time
# is kept, never overwritten); a row that has none (adopted without a time) takes this crawl's.
_STATIC_SQL = (
    f"INSERT INTO listings_static(listing_id, snapshot_timestamp, last_dynamic_ts, first_seen, "
    f"{', '.join(_LISTING_STATIC)}) VALUES (?, ?, ?, ?, {', '.join('?' * len(_LISTING_STATIC))}) "
    f"ON CONFLICT(listing_id) DO UPDATE SET snapshot_timestamp = excluded.snapshot_timestamp, "
    f"last_dynamic_ts = excluded.last_dynamic_ts, "
    f"first_seen = coalesce(listings_static.first_seen, excluded.first_seen), "
    + ", ".join(f"{c} = excluded.{c}" for c in _LISTING_STATIC))
_DYNAMIC_SQL = (
    "INSERT OR IGNORE INTO listings_dynamic(listing_id, snapshot_timestamp, state, ending_timestamp, "
    "last_modified_timestamp, quantity, num_favorers, views, price_amount, price_divisor, "
    "price_currency) VALUES (?,?,?,?,?,?,?,?,?,?,?)")
_SHOP_ACTIVITY_SQL = (
    "INSERT INTO shops_static(shop_id, snapshot_timestamp, last_activity_ts) VALUES (?, ?, ?) "
    "ON CONFLICT(shop_id) DO UPDATE SET last_activity_ts = "
    "max(coalesce(shops_static.last_activity_ts, 0), coalesce(excluded.last_activity_ts, 0))")
_IMAGE_SQL = (
    "INSERT INTO images(listing_id, image_id, rank, is_primary, url, url_full, full_width, "
    "full_height, hex_code, created_timestamp) VALUES (?,?,?,?,?,?,?,?,?,?) "
    "ON CONFLICT(listing_id, image_id) DO UPDATE SET rank = excluded.rank, "
    "is_primary = excluded.is_primary, url = excluded.url, url_full = excluded.url_full, "
    "full_width = excluded.full_width, full_height = excluded.full_height, "
    "hex_code = excluded.hex_code, created_timestamp = excluded.created_timestamp")


def _in(conn: sqlite3.Connection, sql: str, ids: list[int]) -> list:
    """``sql`` with ``({ids})`` filled in, in chunks below SQLite's parameter limit."""
    out = []
    for i in range(0, len(ids), 500):
        chunk = ids[i:i + 500]
        out += conn.execute(sql.format(ids=",".join("?" * len(chunk))), chunk).fetchall()
    return out


def write_listings(conn: sqlite3.Connection, items: list[dict], images: dict[int, list[dict] | None],
                   now: float, refresh_s: float, url_field: str) -> tuple[int, int]:
    """One page of listings: static rows, a dynamic snapshot for each listing whose last one
    is older than ``refresh_s``, shop activity, and the images of the listings in ``images``
    (None: known and unchanged, images left as they are). Listings absent from ``images``
    are skipped whole (they vanished before the batch call). Returns (listings, new images)."""
    items = [it for it in items if it["listing_id"] in images]
    if not items:
        return 0, 0
    ids = [it["listing_id"] for it in items]
    last = dict(_in(conn, "SELECT listing_id, last_dynamic_ts FROM listings_static "
                          "WHERE listing_id IN ({ids})", ids))
    static_rows, dynamic_rows, activity = [], [], {}
    for it in items:
        lid = it["listing_id"]
        previous = last.get(lid)
        snapshot = previous is None or now - previous >= refresh_s
        static_rows.append((lid, now, now if snapshot else previous, now,
                            *(_value(it, c) for c in _LISTING_STATIC)))
        if snapshot:
            price = it.get("price") or {}
            dynamic_rows.append((lid, now, it.get("state"), it.get("ending_timestamp"),
                                 it.get("last_modified_timestamp"), it.get("quantity"),
                                 it.get("num_favorers"), it.get("views"), price.get("amount"),
                                 price.get("divisor"), price.get("currency_code")))
        ts = it.get("last_modified_timestamp") or it.get("creation_timestamp") or 0
        activity[it["shop_id"]] = max(activity.get(it["shop_id"], 0), ts)
    conn.executemany(_STATIC_SQL, static_rows)
    conn.executemany(_DYNAMIC_SQL, dynamic_rows)
    conn.executemany(_SHOP_ACTIVITY_SQL, [(sid, now, ts) for sid, ts in activity.items()])
    image_rows, keys, known_before = [], [], []
    for lid in ids:
        listing_images = images[lid]
        if not listing_images:
            continue
        primary_rank = min(im["rank"] for im in listing_images)
        for im in listing_images:
            iid = im["listing_image_id"]
            keys.append((lid, iid))
            image_rows.append((lid, iid, im["rank"], int(im["rank"] == primary_rank),
                               im.get(url_field) or im.get("url_570xN"), im.get("url_fullxfull"),
                               im.get("full_width"), im.get("full_height"), im.get("hex_code"),
                               im.get("created_timestamp")))
        if lid in last:
            known_before.append((lid, [im["listing_image_id"] for im in listing_images]))
    conn.executemany(_IMAGE_SQL, image_rows)
    # a known listing's old primary that is no longer among its images must not stay one
    for lid, iids in known_before:
        marks = ",".join("?" * len(iids))
        conn.execute(f"UPDATE images SET is_primary = 0 WHERE listing_id = ? AND is_primary = 1 "
                     f"AND image_id NOT IN ({marks})", (lid, *iids))
    return len(items), add_discovered_images(conn, keys, now=now)


def known_unchanged(conn: sqlite3.Connection, items: list[dict]) -> set[int]:
    """Listings already stored with their images whose Etsy last_modified_timestamp has not
    moved since the newest snapshot: their images need no batch call."""
    ids = [it["listing_id"] for it in items]
    if not ids:
        return set()
    latest = {lid: lm for lid, lm in _in(
        conn, "SELECT d.listing_id, d.last_modified_timestamp FROM listings_static s "
              "JOIN listings_dynamic d ON d.listing_id = s.listing_id "
              "AND d.snapshot_timestamp = s.last_dynamic_ts WHERE s.listing_id IN ({ids})", ids)}
    with_images = {r[0] for r in _in(conn, "SELECT DISTINCT listing_id FROM images "
                                           "WHERE listing_id IN ({ids})", ids)}
    return {it["listing_id"] for it in items
            if it["listing_id"] in with_images and latest.get(it["listing_id"]) is not None
            and latest[it["listing_id"]] == it.get("last_modified_timestamp")}


_SHOP_STATIC = ("shop_name", "user_id", "title", "create_date", "url", "currency_code",
                "is_shop_us_based", "shipping_from_country_iso", "shop_location_country_iso")


def write_shop(conn: sqlite3.Connection, shop: dict, now: float) -> None:
    """Static fields, a dynamic snapshot, and the review count that decides a review fetch.
    ``prev_review_count`` is the count when reviews were last fetched completely;
    ``curr_review_count`` the count Etsy gives now."""
    values = [shop.get(c) if c != "is_shop_us_based" else
              (None if shop.get(c) is None else int(bool(shop.get(c)))) for c in _SHOP_STATIC]
    if values[3] is None:
        values[3] = shop.get("created_timestamp")
    conn.execute(
        f"INSERT INTO shops_static(shop_id, snapshot_timestamp, {', '.join(_SHOP_STATIC)}, "
        f"last_dynamic_ts, curr_review_count) VALUES (?, ?, {', '.join('?' * len(_SHOP_STATIC))}, ?, ?) "
        f"ON CONFLICT(shop_id) DO UPDATE SET snapshot_timestamp = excluded.snapshot_timestamp, "
        + ", ".join(f"{c} = excluded.{c}" for c in _SHOP_STATIC)
        + ", last_dynamic_ts = excluded.last_dynamic_ts, curr_review_count = excluded.curr_review_count",
        (shop["shop_id"], now, *values, now, shop.get("review_count")))
    conn.execute(
        "INSERT OR IGNORE INTO shops_dynamic(shop_id, snapshot_timestamp, update_date, "
        "listing_active_count, accepts_custom_requests, num_favorers, transaction_sold_count, "
        "review_average, review_count) VALUES (?,?,?,?,?,?,?,?,?)",
        (shop["shop_id"], now, shop.get("update_date") or shop.get("updated_timestamp"),
         shop.get("listing_active_count"),
         None if shop.get("accepts_custom_requests") is None else int(bool(shop["accepts_custom_requests"])),
         shop.get("num_favorers"), shop.get("transaction_sold_count"), shop.get("review_average"),
         shop.get("review_count")))


def mark_shop_gone(conn: sqlite3.Connection, shop_id: int, now: float) -> None:
    """Etsy no longer has the shop: remember the attempt so it is not asked for every pass."""
    conn.execute("UPDATE shops_static SET last_dynamic_ts = ? WHERE shop_id = ?", (now, shop_id))


def upsert_reviews(conn: sqlite3.Connection, reviews: list[dict]) -> int:
    n = 0
    for r in reviews:
        cur = conn.execute(
            "INSERT INTO reviews(shop_id, listing_id, transaction_id, buyer_user_id, rating, review, "
            "language, create_timestamp, updated_timestamp) VALUES (?,?,?,?,?,?,?,?,?) "
            "ON CONFLICT(shop_id, listing_id, create_timestamp) DO UPDATE SET "
            "transaction_id = excluded.transaction_id, buyer_user_id = excluded.buyer_user_id, "
            "rating = excluded.rating, review = excluded.review, language = excluded.language, "
            "updated_timestamp = excluded.updated_timestamp",
            (r["shop_id"], r["listing_id"], r.get("transaction_id"), r.get("buyer_user_id"),
             r.get("rating"), r.get("review"), r.get("language"), r["create_timestamp"],
             r.get("updated_timestamp") or r.get("update_timestamp")))
        n += cur.rowcount
    return n


def write_taxonomy(conn: sqlite3.Connection, nodes: list[dict], now: float) -> int:
    """Upsert flattened nodes (id, parent_id, name, level, full_path_taxonomy_ids, children)."""
    for node in nodes:
        conn.execute(
            "INSERT INTO taxonomy_static(taxonomy_id, parent_id, name, level, full_path_ids, is_leaf, "
            "fetched_at) VALUES (?,?,?,?,?,?,?) ON CONFLICT(taxonomy_id) DO UPDATE SET "
            "parent_id = excluded.parent_id, name = excluded.name, level = excluded.level, "
            "full_path_ids = excluded.full_path_ids, is_leaf = excluded.is_leaf, "
            "fetched_at = excluded.fetched_at",
            (node["id"], node.get("parent_id"), node["name"], node.get("level"),
             json.dumps(node.get("full_path_taxonomy_ids") or []), int(not node.get("children")), now))
    return len(nodes)


def find_subtree(tree: list[dict], root_id: int) -> list[dict]:
    """The node ``root_id`` and all below it, flattened in pre-order."""
    def walk(nodes):
        for node in nodes:
            if node.get("id") == root_id:
                return node
            found = walk(node.get("children") or [])
            if found:
                return found
        return None

    root = walk(tree)
    if root is None:
        return []
    out = []

    def flatten(node):
        out.append(node)
        for child in node.get("children") or []:
            flatten(child)

    flatten(root)
    return out
