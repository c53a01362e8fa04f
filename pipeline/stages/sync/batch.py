"""The batch call (getListingsByListingIds, ``ShopListingWithAssociations``): the images of a
page's listings, and the fields Etsy's search results do not carry (``views``,
``production_partners``).

A 404 means a listing asked for was deleted between the search and the batch call: the ids
are asked for again in halves, so the listings that still exist are read and the deleted
ones are reported gone, instead of failing the whole crawl unit.
"""
from __future__ import annotations

from pipeline.etsy.errors import AuthError, ClientError

# Fields only the batch call answers; a listing not batched keeps what is stored.
BATCH_ONLY = ("views", "production_partners")


def fetch(client, ids: list[int], includes: str = "Images") -> tuple[list[dict], list[int]]:
    """(results, ids answered 404)."""
    if not ids:
        return [], []
    try:
        return client.listings_batch(ids, includes=includes)["results"], []
    except ClientError as exc:
        if exc.status != 404 or isinstance(exc, AuthError):
            raise
    if len(ids) == 1:
        return [], list(ids)
    mid = len(ids) // 2
    first, gone_first = fetch(client, ids[:mid], includes)
    second, gone_second = fetch(client, ids[mid:], includes)
    return first + second, gone_first + gone_second


def merge_associations(item: dict, batched: dict | None, stored: dict | None) -> None:
    """Put the batch-only fields on a search result: from its batch answer, else (a listing
    not batched) the stored ``production_partners`` and no ``views``."""
    if batched is not None:
        for name in BATCH_ONLY:
            item[name] = batched.get(name)
    else:
        item["views"] = None
        item["production_partners"] = (stored or {}).get("production_partners")
