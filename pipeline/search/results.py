"""Results with the DB's listing data: each hit as a dict with the listing's title, price and
shop, the listing's primary image as ``{"path", "offset", "size"}``, the fused score and each
model's rank and score (issue 7).

Where an archived image lies is the archive's business: search imports no stage, so the
caller passes an ``ImageLocator`` (the CLI and the console pass
pipeline.stages.archive.primary.primary_location)."""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

from pipeline.core.errors import UserError
from pipeline.search.fusion import ImageHit


class ImageLocator(Protocol):
    """Where a listing's primary image is archived: ``{"path", "offset", "size"}`` (offset and
    size None for a loose file), or None when unknown; may raise UserError or OSError."""

    def __call__(self, root, listing_id: int, conn=None) -> dict | None: ...


def primary_image(root, conn, listing_id: int, image_id: int | None = None,
                  locate: ImageLocator | None = None) -> dict:
    """Where the listing's primary image is: {"path", "offset", "size"} (DECISIONS.md).
    The archive lookup (``locate``, e.g. pipeline.stages.archive.primary.primary_location) first,
    else the loose bg-removed file of the primary image (or of ``image_id`` when the DB names no
    primary); nulls when none."""
    if locate is not None:
        try:
            loc = locate(root, listing_id, conn)
        except (UserError, OSError):
            loc = None
        if loc and loc.get("path") and Path(loc["path"]).exists():
            return {"path": str(loc["path"]), "offset": loc.get("offset"), "size": loc.get("size")}
    primary = None
    if conn is not None:
        row = conn.execute("SELECT image_id FROM images WHERE listing_id = ? AND is_primary = 1 "
                           "ORDER BY rank LIMIT 1", (int(listing_id),)).fetchone()
        primary = int(row[0]) if row else None
    for iid in (primary, image_id):
        if iid is None:
            continue
        path = root.bgremoved_dir / f"{int(listing_id)}_{int(iid)}.jpg"
        if path.exists():
            return {"path": str(path), "offset": None, "size": None}
    return {"path": None, "offset": None, "size": None}


def listing_info(conn, listing_id: int) -> dict:
    info = {"title": None, "price": None, "currency": None, "shop_id": None, "shop": None}
    if conn is None:
        return info
    row = conn.execute("SELECT s.title, s.shop_id, h.shop_name FROM listings_static s LEFT JOIN "
                       "shops_static h ON h.shop_id = s.shop_id WHERE s.listing_id = ?",
                       (int(listing_id),)).fetchone()
    if row:
        info["title"], info["shop_id"], info["shop"] = row
    row = conn.execute("SELECT price_amount, price_divisor, price_currency FROM listings_dynamic "
                       "WHERE listing_id = ? ORDER BY snapshot_timestamp DESC LIMIT 1",
                       (int(listing_id),)).fetchone()
    if row and row[0] is not None:
        info["price"] = round(row[0] / (row[1] or 1), 2)
        info["currency"] = row[2]
    return info


def describe_one(root, conn, listing_id: int, image_id: int, score: float,
                 locate: ImageLocator | None = None) -> dict:
    """A result's listing data: listing_id, url (on Etsy), image_id, score, title, price,
    currency, shop_id, shop, primary_image."""
    from pipeline.search.request import listing_url

    item = {"listing_id": int(listing_id), "url": listing_url(listing_id),
            "image_id": int(image_id), "score": round(float(score), 6)}
    item.update(listing_info(conn, listing_id))
    item["primary_image"] = primary_image(root, conn, listing_id, image_id, locate)
    return item


def describe(hits: list[ImageHit], root, conn, locate: ImageLocator | None = None) -> list[dict]:
    """Each hit as a dict (describe_one) with ``agree``, ``ranks`` ({model: rank}) and
    ``models`` ({model: {rank, score}})."""
    out = []
    for h in hits:
        item = describe_one(root, conn, h.listing_id, h.image_id, h.fused, locate)
        item["agree"] = h.agree
        item["ranks"] = {m: r for m, (r, _s) in h.models.items()}
        item["models"] = {m: {"rank": r, "score": round(s, 6)} for m, (r, s) in h.models.items()}
        out.append(item)
    return out


CSV_FIELDS = ("listing_id", "url", "title", "price", "currency", "shop_id", "score", "ranks",
              "primary_path", "primary_offset", "primary_size")


def csv_row(item: dict) -> list:
    """One result as a CSV row of CSV_FIELDS (ranks as model:rank;model:rank)."""
    prim = item.get("primary_image") or {}
    ranks = ";".join(f"{m}:{r}" for m, r in (item.get("ranks") or {}).items())
    return [item.get("listing_id"), item.get("url"), item.get("title"), item.get("price"),
            item.get("currency"), item.get("shop_id"), item.get("score"), ranks,
            prim.get("path"), prim.get("offset"), prim.get("size")]
