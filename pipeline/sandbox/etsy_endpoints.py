"""The local Etsy API's endpoints: which path answers what, with Etsy's parameters, checks and
JSON shapes (taxonomy, search, batch, listing, images, shop, reviews), over the catalogue.
``api`` is the LocalEtsyAPI serving (its catalogue, faults, changes, stats and search cache).

As in Etsy's OpenAPI spec, search answers ``ShopListing`` (no ``views``, no
``production_partners``) and the batch call ``ShopListingWithAssociations`` (with them).
"""
from __future__ import annotations

import math

API_PREFIX = "/v3/application"
MAX_OFFSET = 12000


class BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _int(params: dict, name: str, default=None, lo=None, hi=None):
    values = params.get(name)
    if not values or values[0] == "":
        return default
    try:
        value = int(values[0])
    except ValueError:
        raise BadRequest(400, f"Expected int for {name}, got {values[0]!r}") from None
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise BadRequest(400, f"{name} must be between {lo} and {hi}")
    return value


def _cents(params: dict, name: str):
    values = params.get(name)
    if not values or values[0] == "":
        return None
    try:
        value = float(values[0])
    except ValueError:
        raise BadRequest(400, f"Expected float for {name}, got {values[0]!r}") from None
    if value < 0 or not math.isfinite(value):
        raise BadRequest(400, f"{name} must be a non-negative number")
    return int(round(value * 100))


def route(api, path: str, params: dict) -> tuple[int, object]:
    cat = api.catalogue
    parts = [p for p in path.split("/") if p]
    if parts == ["seller-taxonomy", "nodes"]:
        api.stats_.add("taxonomy")
        tree = cat.taxonomy_tree()
        return 200, {"count": len(tree), "results": tree}
    if parts == ["listings", "active"]:
        return 200, _search(api, params)
    if parts == ["listings", "batch"]:
        return 200, _batch(api, params)
    if len(parts) in (2, 3) and parts[0] == "listings" and parts[1].isdigit():
        index = cat.index_of_listing(int(parts[1]))
        if index is None or api.faults.vanished(cat.listing_id(index)) \
                or api.changes.is_deleted(cat.listing_id(index)) or api.changes.is_ended(cat.listing_id(index)):
            raise BadRequest(404, f"Listing {parts[1]} not found.")
        if len(parts) == 3 and parts[2] == "images":
            imgs = cat.images(index)
            return 200, {"count": len(imgs), "results": imgs}
        if len(parts) == 2:
            return 200, cat.listing(index)
    if len(parts) in (2, 3) and parts[0] == "shops" and parts[1].isdigit():
        s = cat.index_of_shop(int(parts[1]))
        if s is None or api.changes.shop_deleted(int(parts[1])):
            raise BadRequest(404, f"Shop with shop_id {parts[1]} not found.")
        if len(parts) == 2:
            api.stats_.add("shop")
            api.stats_.note("shops", parts[1])
            return 200, cat.shop(s)
        if parts[2] == "reviews":
            return 200, _reviews(api, s, params)
    raise BadRequest(404, "Resource not found")


def _search(api, params: dict) -> dict:
    cat = api.catalogue
    limit = _int(params, "limit", 25, 1, 100)
    offset = _int(params, "offset", 0, 0)
    if offset > MAX_OFFSET:
        raise BadRequest(400, "Offset provided is greater than the maximum offset allowed.")
    tax = _int(params, "taxonomy_id")
    lo, hi = _cents(params, "min_price"), _cents(params, "max_price")
    sort_on = (params.get("sort_on") or ["created"])[0]
    sort_order = (params.get("sort_order") or ["desc"])[0]
    if sort_on not in ("created", "price", "updated", "score"):
        raise BadRequest(400, f"sort_on must be one of created, price, updated, score")
    if sort_order not in ("asc", "ascending", "desc", "descending", "up", "down"):
        raise BadRequest(400, "sort_order must be asc or desc")
    order = "asc" if sort_order in ("asc", "ascending", "up") else "desc"
    keywords = (params.get("keywords") or [""])[0]
    found = api.changes.still_listed(api.search_indexes((tax, lo, hi, sort_on, order, keywords)),
                                     cat.listing_id)
    api.stats_.add("search")
    api.stats_.note("search", f"{tax}|{params.get('min_price', [''])[0]}|"
                              f"{params.get('max_price', [''])[0]}|{offset}")
    answer = {"count": len(found), "results": [cat.listing(i) for i in found[offset:offset + limit]]}
    api.changes.after_search(found[:offset + limit], cat.listing_id)
    return answer


def _batch(api, params: dict) -> dict:
    cat = api.catalogue
    raw = ",".join(params.get("listing_ids") or [])
    if not raw:
        raise BadRequest(400, "listing_ids is required")
    try:
        ids = [int(x) for x in raw.split(",") if x.strip()]
    except ValueError:
        raise BadRequest(400, "listing_ids must be a list of integers") from None
    if not 1 <= len(ids) <= 100:
        raise BadRequest(400, "listing_ids must have between 1 and 100 ids")
    includes = {x.strip().lower() for x in ",".join(params.get("includes") or []).split(",") if x.strip()}
    api.stats_.add("batch")
    api.stats_.note("batch", ",".join(map(str, ids)))
    deleted = [lid for lid in ids if api.changes.is_deleted(lid)]
    if deleted:
        # a deleted listing fails the whole call (the strict reading of the spec's 404)
        raise BadRequest(404, f"Listing with listing_id {deleted[0]} not found.")
    results = []
    for lid in ids:
        index = cat.index_of_listing(lid)
        if index is None or api.faults.vanished(lid) or api.changes.is_ended(lid):
            continue
        item = cat.listing_with_associations(index)
        if "images" in includes:
            item["images"] = cat.images(index)
        if "shop" in includes:
            item["shop"] = cat.shop(cat.shop_of[index])
        results.append(item)
    return {"count": len(results), "results": results}


def _reviews(api, s: int, params: dict) -> dict:
    limit = _int(params, "limit", 25, 1, 100)
    offset = _int(params, "offset", 0, 0)
    min_created = _int(params, "min_created")
    max_created = _int(params, "max_created")
    found = [r for r in api.catalogue.reviews(s)
             if (min_created is None or r["create_timestamp"] >= min_created)
             and (max_created is None or r["create_timestamp"] <= max_created)]
    api.stats_.add("reviews")
    api.stats_.note("reviews", f"{api.catalogue.shop_id(s)}|{min_created}|{offset}")
    return {"count": len(found), "results": found[offset:offset + limit]}

