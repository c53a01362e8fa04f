"""Shapes: what a usable Etsy answer looks like (ETSY_API.md, "Objects"); the validators the
client runs on each page, and ``listing_problem``/``review_problem`` for the crawler."""
from __future__ import annotations


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _page(data) -> list:
    if not isinstance(data, dict) or not _is_int(data.get("count")) or not isinstance(data.get("results"), list):
        raise ValueError("expected {count: int, results: [...]}")
    return data["results"]


def listing_problem(item) -> str | None:
    """Why a ShopListing (with its images, if any) cannot be stored, or None."""
    if not isinstance(item, dict):
        return "listing is not an object"
    lid = item.get("listing_id")
    if not _is_int(lid):
        return f"listing_id missing or not an integer ({lid!r})"
    for name in ("shop_id",):
        if not _is_int(item.get(name)):
            return f"listing {lid}: {name} missing or not an integer"
    if not isinstance(item.get("title"), str):
        return f"listing {lid}: title missing or not text"
    price = item.get("price")
    if not isinstance(price, dict) or not _is_int(price.get("amount")) or not _is_int(price.get("divisor")) \
            or not isinstance(price.get("currency_code"), str):
        return f"listing {lid}: price is not {{amount, divisor, currency_code}}"
    for name in ("taxonomy_id", "quantity", "num_favorers", "views", "creation_timestamp",
                 "last_modified_timestamp", "ending_timestamp"):
        value = item.get(name)
        if value is not None and not _is_int(value):
            return f"listing {lid}: {name} is not an integer ({value!r})"
    for name in ("tags", "materials", "style"):
        value = item.get(name)
        if value is not None and (not isinstance(value, list) or not all(isinstance(x, str) for x in value)):
            return f"listing {lid}: {name} is not a list of text"
    partners = item.get("production_partners")
    if partners is not None and (not isinstance(partners, list) or not all(isinstance(x, dict) for x in partners)):
        return f"listing {lid}: production_partners is not a list of objects"
    for name in ("item_length", "item_width", "item_height", "item_weight"):
        value = item.get(name)
        if value is not None and not _is_num(value):
            return f"listing {lid}: {name} is not a number"
    images = item.get("images")
    if images is not None:
        if not isinstance(images, list):
            return f"listing {lid}: images is not a list"
        for image in images:
            problem = image_problem(image, lid)
            if problem:
                return problem
    return None


def image_problem(image, listing_id) -> str | None:
    if not isinstance(image, dict):
        return f"listing {listing_id}: image is not an object"
    iid = image.get("listing_image_id")
    if not _is_int(iid):
        return f"listing {listing_id}: listing_image_id missing or not an integer"
    if not _is_int(image.get("rank")):
        return f"listing {listing_id} image {iid}: rank missing or not an integer"
    for name in ("url_570xN", "url_fullxfull"):
        value = image.get(name)
        if not isinstance(value, str) or not value.startswith(("http://", "https://")):
            return f"listing {listing_id} image {iid}: {name} is not a URL"
    for name in ("full_width", "full_height", "created_timestamp"):
        value = image.get(name)
        if value is not None and not _is_int(value):
            return f"listing {listing_id} image {iid}: {name} is not an integer"
    return None


def validate_listing_page(data) -> list[str]:
    return [p for p in (listing_problem(item) for item in _page(data)) if p]


def review_problem(item) -> str | None:
    if not isinstance(item, dict):
        return "review is not an object"
    for name in ("shop_id", "listing_id", "create_timestamp"):
        if not _is_int(item.get(name)):
            return f"review: {name} missing or not an integer ({item.get(name)!r})"
    rating = item.get("rating")
    if rating is not None and not _is_int(rating):
        return f"review of listing {item.get('listing_id')}: rating is not an integer"
    return None


def validate_review_page(data) -> list[str]:
    return [p for p in (review_problem(item) for item in _page(data)) if p]


def validate_shop(data) -> list[str]:
    if not isinstance(data, dict) or not _is_int(data.get("shop_id")):
        raise ValueError("expected a Shop with an integer shop_id")
    problems = []
    for name in ("review_count", "listing_active_count", "num_favorers", "transaction_sold_count"):
        value = data.get(name)
        if value is not None and not _is_int(value):
            problems.append(f"shop {data['shop_id']}: {name} is not an integer")
    if data.get("review_average") is not None and not _is_num(data.get("review_average")):
        problems.append(f"shop {data['shop_id']}: review_average is not a number")
    if problems:
        raise ValueError("; ".join(problems))
    return []


def validate_taxonomy(data) -> list[str]:
    nodes = _page(data)

    def check(node) -> None:
        if not isinstance(node, dict) or not _is_int(node.get("id")) or not isinstance(node.get("name"), str):
            raise ValueError("taxonomy node without an integer id and a name")
        for child in node.get("children") or []:
            check(child)

    for node in nodes:
        check(node)
    return []
