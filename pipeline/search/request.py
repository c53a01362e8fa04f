"""The search query as one object (issue 19): the CLI and the console's search pane both build
a ``SearchRequest`` and hand it to pipeline.search.query.run; neither has logic of its own.

Query kinds: a text; image files (``combine``: ``mean`` of the normalised vectors per model,
or ``fuse`` one search per image); image URLs; an Etsy listing (id or URL: its stored
vectors when indexed, else its images through the Etsy API); text with images (both towers
fused). ``same_as`` asks instead for the listings that sell the same item."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from pipeline.core.errors import UserError

COMBINE = ("mean", "fuse")
# The evaluation on a sandbox index (bench/bench_search_filters.py, bench/results/search.md):
# mean of the normalised vectors found the other images' listings at least as well as fusing
# one search per image, at one search's cost.
DEFAULT_COMBINE = "mean"
_LISTING_URL = re.compile(r"^https?://(?:www\.)?etsy\.com/(?:[a-z]{2}(?:-[a-z]{2})?/)?listing/(\d+)",
                          re.IGNORECASE)


def listing_url(listing_id: int) -> str:
    return f"https://www.etsy.com/listing/{int(listing_id)}"


def etsy_listing_id(text: str) -> int | None:
    """The listing id of an Etsy listing URL, else None."""
    m = _LISTING_URL.match(str(text).strip())
    return int(m.group(1)) if m else None


def parse_listing(text) -> int:
    """A listing id or an Etsy listing URL -> the id; a one-line error otherwise."""
    s = str(text).strip()
    if s.isdigit() and int(s) > 0:
        return int(s)
    got = etsy_listing_id(s)
    if got is None:
        raise UserError(f"listing {s!r} is neither a listing id nor an Etsy listing URL "
                        f"(https://www.etsy.com/listing/ID/...)")
    return got


def parse_since(text: str | None) -> float | None:
    """A date (YYYY-MM-DD, UTC) or ISO date-time -> epoch seconds."""
    if text is None or str(text).strip() == "":
        return None
    try:
        when = datetime.fromisoformat(str(text).strip())
    except ValueError:
        raise UserError(f"--since {text!r} is not a date (YYYY-MM-DD or an ISO date-time)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


@dataclass
class Filters:
    """Applied before the top k is cut. ``state``: the listing's newest stored state ("any":
    no state filter; a listing whose state was never stored counts as active, since the
    crawl reads only active listings)."""
    min_price: float | None = None
    max_price: float | None = None
    taxonomy: int | None = None
    shop: int | None = None
    state: str = "active"
    since: float | None = None
    exclude: frozenset = frozenset()

    def check(self) -> None:
        for name in ("min_price", "max_price"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise UserError(f"--{name.replace('_', '-')} must be 0 or more, got {v}")
        if self.min_price is not None and self.max_price is not None and self.min_price > self.max_price:
            raise UserError(f"--min-price {self.min_price} is above --max-price {self.max_price}")
        if not self.state or not str(self.state).strip():
            raise UserError("--state is empty (a state such as active, or any)")

    @property
    def needs_db(self) -> bool:
        """Anything beyond the default (active only, nothing excluded)."""
        return any(v is not None for v in (self.min_price, self.max_price, self.taxonomy,
                                           self.shop, self.since)) or self.state != "active"

    @property
    def active(self) -> bool:
        return self.needs_db or self.state != "any" or bool(self.exclude)


@dataclass
class SearchRequest:
    text: str | None = None
    images: list[Path] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)
    listing: int | None = None
    image_id: int | None = None
    same_as: int | None = None
    combine: str = DEFAULT_COMBINE
    filters: Filters = field(default_factory=Filters)
    k: int = 10
    models: list[str] | None = None

    def __post_init__(self) -> None:
        self.images = [Path(p) for p in self.images]
        # an Etsy listing URL given as --url is a listing query
        urls = []
        for u in self.urls:
            lid = etsy_listing_id(u)
            if lid is not None:
                if self.listing is not None and self.listing != lid:
                    raise UserError(f"two listings asked for: {self.listing} and {u}")
                self.listing = lid
            else:
                urls.append(u)
        self.urls = urls
        if self.listing is not None:
            self.listing = parse_listing(self.listing)
        if self.same_as is not None:
            self.same_as = parse_listing(self.same_as)

    @property
    def kind(self) -> str:
        """same_as | listing | text | image | text+image (images: files and URLs)."""
        if self.same_as is not None:
            return "same_as"
        if self.listing is not None:
            return "listing"
        if self.text is not None and self.has_images:
            return "text+image"
        return "text" if self.text is not None else "image"

    @property
    def has_images(self) -> bool:
        return bool(self.images or self.urls)

    def check(self) -> None:
        """One-line errors for a query that cannot run."""
        if self.combine not in COMBINE:
            raise UserError(f"--combine must be one of {', '.join(COMBINE)}, got {self.combine!r}")
        given = [self.text is not None or self.has_images, self.listing is not None,
                 self.same_as is not None]
        if sum(given) != 1:
            raise UserError("give exactly one of: --text and/or --image/--url, --listing, "
                            "or --same-as")
        if self.text is not None and not self.text.strip():
            raise UserError("the search text is empty")
        if self.image_id is not None and self.listing is None:
            raise UserError("--image-id goes with --listing")
        for p in self.images:
            if not p.is_file():
                raise UserError(f"image {p} does not exist or is not a file")
        for u in self.urls:
            if not re.match(r"^https?://", u, re.IGNORECASE):
                raise UserError(f"--url {u!r} is not an http(s) URL")
        self.filters.check()
