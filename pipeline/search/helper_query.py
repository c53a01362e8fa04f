"""The search request as text: the console pane's typed query line to a SearchRequest, and a
SearchRequest to and from the JSON the search helper reads (pipeline/search/helper.py).

The typed line (shell-style quoting for paths with spaces):
    oak chair                       words: a text query
    /photos/a.jpg /photos/b.jpg     image files (an existing file, or a name ending in an
                                    image suffix); together with words: text and images
    https://example.com/chair.jpg   an image URL (an Etsy listing URL: that listing)
    listing:123 | listing:URL       more like a listing
    same:123                        the same item in other shops
    price:20-80  price:20-  price:-80   shop:123  taxonomy:45  state:any  since:2024-01-01
    combine:fuse                    several images: fuse one search per image (default mean)
    unseen                          leave out listings the pane has already shown"""
from __future__ import annotations

import shlex
from dataclasses import asdict
from pathlib import Path

from pipeline.core.errors import UserError
from pipeline.search.request import Filters, SearchRequest, parse_listing, parse_since

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
FILTER_WORDS = ("price", "shop", "taxonomy", "state", "since")
HELP = ("words · image paths · URLs · listing:ID · same:ID · price:20-80 shop:ID taxonomy:ID "
        "state:any since:YYYY-MM-DD combine:fuse unseen")


def _number(text: str, what: str) -> float | None:
    if text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"{what}: {text!r} is not a number") from None
    return value


def _whole(text: str, what: str) -> int:
    if not text.isdigit():
        raise UserError(f"{what}:{text} is not a number ({what}:123)")
    return int(text)


def _price(value: str, filters: Filters) -> None:
    low, sep, high = value.partition("-")
    if not sep:           # price:80 is a most; a range needs the dash
        raise UserError(f"price:{value} is not a range (price:20-80, price:20-, price:-80)")
    filters.min_price = _number(low.strip(), "price")
    filters.max_price = _number(high.strip(), "price")


def parse_query_text(line: str, k: int, shown: set[int] | None = None) -> SearchRequest:
    """The pane's query line as a SearchRequest (checked: a one-line UserError otherwise).
    ``shown``: the listings already shown, left out when the line says ``unseen``."""
    try:
        tokens = shlex.split(line)
    except ValueError as exc:
        raise UserError(f"the query has an unclosed quote ({exc})") from None
    words, images, urls = [], [], []
    listing = same_as = None
    combine = "mean"
    filters = Filters()
    for token in tokens:
        key, sep, value = token.partition(":")
        low = key.lower()
        if sep and low in ("http", "https"):
            urls.append(token)
        elif sep and low == "listing":
            listing = parse_listing(value)
        elif sep and low == "same":
            same_as = parse_listing(value)
        elif sep and low == "price":
            _price(value, filters)
        elif sep and low in ("shop", "taxonomy"):
            setattr(filters, low, _whole(value, low))
        elif sep and low == "state":
            filters.state = value.strip()
        elif sep and low == "since":
            filters.since = parse_since(value)
        elif sep and low == "combine":
            combine = value.strip()
        elif token.lower() == "unseen":
            filters.exclude = frozenset(int(x) for x in (shown or ()))
        elif _looks_like_image(token):
            images.append(Path(token).expanduser())
        else:
            words.append(token)
    text = " ".join(words) if words else None
    if text is None and not images and not urls and listing is None and same_as is None:
        raise UserError("nothing to search for: type words, an image path, a URL, listing:ID "
                        "or same:ID")
    req = SearchRequest(text=text, images=images, urls=urls, listing=listing, same_as=same_as,
                        combine=combine, filters=filters, k=k)
    req.check()
    return req


def _looks_like_image(token: str) -> bool:
    path = Path(token).expanduser()
    return path.suffix.lower() in IMAGE_SUFFIXES or ("/" in token and path.is_file())


def request_to_json(req: SearchRequest) -> dict:
    out = asdict(req)
    out["images"] = [str(p) for p in req.images]
    out["filters"]["exclude"] = sorted(int(x) for x in req.filters.exclude)
    return out


def request_from_json(data: dict) -> SearchRequest:
    data = dict(data)
    filters = dict(data.pop("filters", None) or {})
    filters["exclude"] = frozenset(int(x) for x in filters.get("exclude") or ())
    return SearchRequest(filters=Filters(**filters), **data)
