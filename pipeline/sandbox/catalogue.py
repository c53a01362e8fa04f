"""A deterministic synthetic furniture catalogue for the local Etsy API: its listings, shops,
reviews and images (metadata; the pictures themselves are drawn by pictures.py).

Everything follows from ``(seed, listings, epoch)``: the same arguments give the same
listings, shops, reviews and image bytes. The per-listing essentials (taxonomy, price,
timestamps, shop, image count) are small arrays built up front, so a catalogue of
100,000 listings costs a fraction of a second; the full JSON objects and the pictures are
made only when asked for.

The taxonomy is Etsy's real furniture subtree (taxonomy.py).

The catalogue has a clock (``now()``: the epoch, moved on by ``advance_clock``): a shop's
reviews are those created by then, and ``review_count`` counts those of the past year only,
as Etsy's ``Shop.review_count`` does.

Ground truth for tests: ``expected()`` (every listing with its images, primary, shop),
``shop()``, ``reviews()``, ``similar_groups()`` (listings whose primary images show the
same object from a slightly different angle, on a different background), ``image_kind()``
(ok, placeholder or missing).
"""
from __future__ import annotations

import bisect
import math
import time
from functools import lru_cache

from pipeline.sandbox.pictures import placeholder_jpeg, render_picture
from pipeline.sandbox.seeded import stable_hash01, stable_rng
from pipeline.sandbox.taxonomy import FURNITURE_ROOT, TAXONOMY, Node

LISTING_ID_BASE = 1_500_000_000
IMAGE_ID_BASE = 4_000_000_000
IMAGES_PER_LISTING_MAX = 16          # image ids are IMAGE_ID_BASE + index * 16 + k
SHOP_ID_BASE = 20_000_000
USER_ID_BASE = 600_000_000
DAY = 86400

_ADJECTIVES = ["Vintage", "Modern", "Rustic", "Handmade", "Mid-Century", "Scandinavian",
               "Industrial", "Farmhouse", "Minimalist", "Boho", "Classic", "Reclaimed"]
_MATERIALS = ["oak", "walnut", "pine", "teak", "maple", "metal", "rattan", "bamboo",
              "velvet", "linen", "leather", "marble", "glass", "cherry wood"]
_STYLES = ["Mid-century", "Farmhouse", "Industrial", "Boho", "Minimalist", "Traditional"]
_COUNTRIES = ["US", "US", "US", "GB", "DE", "FR", "CA", "PL", "IT", "IN", "TR", "UA"]
_WHEN = ["made_to_order", "2020_2026", "2010_2019", "1990s", "1970s", "1960s"]
_WHO = ["i_did", "someone_else", "collective"]
_WORDS = ("great lovely sturdy beautiful solid smooth fast shipping quality perfect exactly "
          "described seller recommend happy color finish wood size fits room").split()


def _away_from(offset: float, marks: tuple[float, ...], gap: float) -> float:
    """Keep a time offset clear of the sync's refresh-window edges, so tests never sit
    on a boundary whatever second they run at."""
    for mark in marks:
        if abs(offset - mark) < gap:
            offset = mark + gap if offset >= mark else mark - gap
    return offset


class Catalogue:
    """The synthetic catalogue. ``listings``: ordinary listings over the furniture leaves;
    ``big_leaf=(taxonomy_id, count)`` adds ``count`` cheap listings (one image, a few
    shops) to one leaf, to exceed Etsy's 12,000 offset cap; ``similar_groups`` groups of
    ``group_size`` listings share the object in their primary image."""

    def __init__(self, listings: int = 200, seed: int = 0, epoch: int | None = None,
                 big_leaf: tuple[int, int] | None = None, similar_groups: int | None = None,
                 group_size: int = 3, shops: int | None = None,
                 placeholder_fraction: float = 0.0, missing_fraction: float = 0.0,
                 image_base: str = "http://127.0.0.1/img"):
        if listings < 0:
            raise ValueError("listings must be >= 0")
        self.seed = seed
        self.n_base = listings
        # Whole hours, so two catalogues built within the same hour agree.
        self.epoch = int(epoch if epoch is not None else time.time() // 3600 * 3600)
        self.clock_s = 0
        self.image_base = image_base.rstrip("/")
        self.placeholder_fraction = placeholder_fraction
        self.missing_fraction = missing_fraction
        self.nodes: dict[int, Node] = {}
        self.children: dict[int, list[int]] = {}
        for tid, parent, name, shape in TAXONOMY:
            level = 0 if parent is None else self.nodes[parent].level + 1
            path = (tid,) if parent is None else self.nodes[parent].path + (tid,)
            self.nodes[tid] = Node(tid, parent, name, shape, level, path)
            self.children.setdefault(tid, [])
            if parent is not None:
                self.children[parent].append(tid)
        self.furniture_ids = [n.id for n in self.nodes.values() if FURNITURE_ROOT in n.path]
        self.leaves = [t for t in self.furniture_ids if not self.children[t]]
        self.n_shops = shops if shops is not None else max(3, listings // 6)
        self._build_core(big_leaf)
        n_groups = similar_groups if similar_groups is not None else listings // 40
        self._build_groups(n_groups, group_size)
        self._build_indexes()

    # ---- the per-listing essentials ------------------------------------------------
    def _build_core(self, big_leaf) -> None:
        rng = stable_rng("core", self.seed)
        weights = [1.0 + (i % 5) for i in range(len(self.leaves))]
        cum = []
        total = 0.0
        for w in weights:
            total += w
            cum.append(total)
        tax, price, created, modified, shop, nimg = [], [], [], [], [], []
        for _ in range(self.n_base):
            tax.append(self.leaves[bisect.bisect_left(cum, rng.random() * total)])
            # log-uniform $2 .. $20,000: furniture prices span four decades
            price.append(int(round(math.exp(rng.uniform(math.log(2.0), math.log(20000.0))) * 100)))
            c_off = rng.uniform(2 * DAY, 3 * 365 * DAY)
            m_off = _away_from(min(rng.expovariate(1 / (15 * DAY)), c_off - DAY),
                               (5 * DAY, 7 * DAY, 30 * DAY), 2 * 3600)
            created.append(int(self.epoch - c_off))
            modified.append(max(int(self.epoch - max(m_off, 60)), created[-1]))
            shop.append(rng.randrange(self.n_shops))
            nimg.append(rng.choice((1, 1, 2, 2, 3, 3, 4, 5)))
        self.big_leaf = None
        if big_leaf:
            leaf, count = int(big_leaf[0]), int(big_leaf[1])
            if leaf not in self.leaves:
                raise ValueError(f"big_leaf {leaf} is not a furniture leaf")
            self.big_leaf = (leaf, count)
            big_shops = max(1, min(5, self.n_shops))
            for j in range(count):
                tax.append(leaf)
                price.append(int(round(math.exp(rng.uniform(math.log(5.0), math.log(5000.0))) * 100)))
                created.append(int(self.epoch - rng.uniform(2 * DAY, 365 * DAY)))
                modified.append(int(self.epoch - _away_from(rng.uniform(60, 60 * DAY),
                                                            (5 * DAY, 7 * DAY, 30 * DAY), 7200)))
                modified[-1] = max(modified[-1], created[-1])
                shop.append(j % big_shops)
                nimg.append(1)
        self.tax, self.price, self.created = tax, price, created
        self.modified, self.shop_of, self.nimg = modified, shop, nimg
        self.n = len(tax)

    def _build_groups(self, n_groups: int, size: int) -> None:
        self.group_of: dict[int, int] = {}
        members = min(self.n_base, n_groups * size)
        if members < 2:
            return
        picked = stable_rng("groups", self.seed).sample(range(self.n_base), members)
        for k, index in enumerate(picked):
            self.group_of[index] = k // size

    def _build_indexes(self) -> None:
        # Per node (every ancestor of a listing's leaf): listing indexes sorted by price,
        # so a (taxonomy, price band) query is two bisects.
        by_node: dict[int, list[int]] = {t: [] for t in self.nodes}
        for i, t in enumerate(self.tax):
            for node in self.nodes[t].path:
                by_node[node].append(i)
        self._by_node = {}
        for t, idx in by_node.items():
            idx.sort(key=lambda i: self.price[i])
            self._by_node[t] = (idx, [self.price[i] for i in idx])
        self.shop_listings: dict[int, list[int]] = {}
        for i, s in enumerate(self.shop_of):
            self.shop_listings.setdefault(s, []).append(i)

    # ---- ids ---------------------------------------------------------------------------
    @staticmethod
    def listing_id(index: int) -> int:
        return LISTING_ID_BASE + index

    def index_of_listing(self, listing_id: int) -> int | None:
        i = int(listing_id) - LISTING_ID_BASE
        return i if 0 <= i < self.n else None

    @staticmethod
    def shop_id(s: int) -> int:
        return SHOP_ID_BASE + s

    def index_of_shop(self, shop_id: int) -> int | None:
        s = int(shop_id) - SHOP_ID_BASE
        return s if 0 <= s < self.n_shops else None

    @staticmethod
    def image_id(index: int, k: int) -> int:
        return IMAGE_ID_BASE + index * IMAGES_PER_LISTING_MAX + k

    def locate_image(self, image_id: int) -> tuple[int, int] | None:
        rel = int(image_id) - IMAGE_ID_BASE
        if rel < 0:
            return None
        index, k = divmod(rel, IMAGES_PER_LISTING_MAX)
        if index >= self.n or k >= self.nimg[index]:
            return None
        return index, k

    # ---- search --------------------------------------------------------------------------
    def subtree_has(self, taxonomy_id: int) -> bool:
        return taxonomy_id in self._by_node

    def search(self, taxonomy_id: int | None, min_cents: int | None, max_cents: int | None,
               sort_on: str = "created", sort_order: str = "desc") -> list[int]:
        """Listing indexes in the taxonomy's subtree (None: all furniture) with
        min <= price <= max, in the requested order (newest first by default)."""
        node = FURNITURE_ROOT if taxonomy_id is None else taxonomy_id
        if node not in self._by_node:
            return []
        idx, prices = self._by_node[node]
        lo = 0 if min_cents is None else bisect.bisect_left(prices, min_cents)
        hi = len(prices) if max_cents is None else bisect.bisect_right(prices, max_cents)
        found = idx[lo:hi]
        if sort_on == "price":
            key = lambda i: (self.price[i], i)  # noqa: E731
        elif sort_on == "updated":
            key = lambda i: (self.modified[i], i)  # noqa: E731
        else:
            key = lambda i: (self.created[i], i)  # noqa: E731
        return sorted(found, key=key, reverse=(sort_order != "asc"))

    def count_in_band(self, taxonomy_id: int, min_cents: int, max_cents: int) -> int:
        idx, prices = self._by_node.get(taxonomy_id, ([], []))
        return bisect.bisect_right(prices, max_cents) - bisect.bisect_left(prices, min_cents)

    # ---- objects ---------------------------------------------------------------------------
    def taxonomy_tree(self) -> list[dict]:
        def node_json(tid: int) -> dict:
            n = self.nodes[tid]
            return {"id": n.id, "level": n.level, "name": n.name, "parent_id": n.parent,
                    "children": [node_json(c) for c in self.children[tid]],
                    "full_path_taxonomy_ids": list(n.path)}

        return [node_json(t) for t, n in self.nodes.items() if n.parent is None]

    def listing(self, index: int) -> dict:
        """The ShopListing as findAllListingsActive returns it (no images; no ``views`` and
        no ``production_partners``: the spec's ShopListing has neither)."""
        return dict(_listing_cached(self, index))

    def listing_with_associations(self, index: int) -> dict:
        """The ShopListingWithAssociations of getListingsByListingIds: the ShopListing with
        ``views`` and ``production_partners`` (images and shop are added by the caller)."""
        return {**_listing_cached(self, index), **self.associations(index)}

    def associations(self, index: int) -> dict:
        rng = stable_rng("assoc", self.seed, index)
        partners = []
        if rng.random() < 0.25:
            for k in range(rng.choice((1, 1, 2))):
                pid = 9_000_000 + rng.randrange(200)
                partners.append({"production_partner_id": pid, "partner_name": f"Workshop {pid % 1000}",
                                 "location": rng.choice(("Portland, OR", "Leeds, UK", "Lyon, FR"))})
        return {"views": rng.randrange(0, 5000), "production_partners": partners}

    def images(self, index: int) -> list[dict]:
        return [self.image(index, k) for k in range(self.nimg[index])]

    def image(self, index: int, k: int) -> dict:
        iid = self.image_id(index, k)
        rng = stable_rng("img", self.seed, iid)
        width = rng.randrange(900, 1601, 10)
        height = int(width * rng.choice((0.75, 0.8, 1.0, 1.25)))
        ext = "png" if rng.random() < 0.15 else "jpg"
        key = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(4))
        hex6 = f"{rng.randrange(16 ** 6):06x}"
        shop_id = self.shop_id(self.shop_of[index])

        def url(size: str) -> str:
            return f"{self.image_base}/{shop_id}/r/il/{hex6}/{iid}/il_{size}.{iid}_{key}.{ext}"

        return {
            "listing_id": self.listing_id(index), "listing_image_id": iid,
            "hex_code": f"{rng.randrange(16 ** 6):06X}", "red": rng.randrange(256),
            "green": rng.randrange(256), "blue": rng.randrange(256), "hue": rng.randrange(360),
            "saturation": rng.randrange(100), "brightness": rng.randrange(100),
            "is_black_and_white": False, "creation_tsz": self.created[index] + k,
            "created_timestamp": self.created[index] + k, "rank": k + 1,
            "url_75x75": url("75x75"), "url_170x135": url("170x135"),
            "url_570xN": url("570xN"), "url_fullxfull": url("fullxfull"),
            "full_height": height, "full_width": width,
            "alt_text": f"{self.nodes[self.tax[index]].name} photo {k + 1}",
        }

    def image_format(self, image_id: int) -> str:
        return "png" if stable_rng("img", self.seed, image_id).random() < 0.15 else "jpeg"

    def image_kind(self, image_id: int) -> str:
        """ok, placeholder (Etsy's tiny stand-in, <= 1,000 bytes) or missing (404)."""
        x = stable_hash01("kind", self.seed, image_id)
        if x < self.missing_fraction:
            return "missing"
        if x < self.missing_fraction + self.placeholder_fraction:
            return "placeholder"
        return "ok"

    def shop(self, s: int) -> dict:
        rng = stable_rng("shop", self.seed, s)
        mine = self.shop_listings.get(s, [])
        reviews = self.review_count(s)
        country = rng.choice(_COUNTRIES)
        created = self.epoch - int(rng.uniform(400 * DAY, 4000 * DAY))
        return {
            "shop_id": self.shop_id(s), "shop_name": f"Shop{s:05d}{rng.choice(_MATERIALS).title().replace(' ', '')}",
            "user_id": USER_ID_BASE + s, "create_date": created, "created_timestamp": created,
            "title": f"{rng.choice(_ADJECTIVES)} furniture from workshop {s}",
            "announcement": None, "currency_code": "USD", "is_vacation": False,
            "vacation_message": None, "sale_message": None, "digital_sale_message": None,
            "update_date": self.epoch - int(rng.uniform(0, 30 * DAY)),
            "updated_timestamp": self.epoch - int(rng.uniform(0, 30 * DAY)),
            "listing_active_count": len(mine), "digital_listing_count": 0,
            "login_name": f"maker{s}", "accepts_custom_requests": rng.random() < 0.5,
            "url": f"https://www.etsy.com/shop/Shop{s:05d}",
            "num_favorers": rng.randrange(5000), "languages": ["en-US"],
            "icon_url_fullxfull": None, "is_using_structured_policies": True,
            "has_onboarded_structured_policies": True, "is_direct_checkout_onboarded": True,
            "is_etsy_payments_onboarded": True, "is_opted_in_to_buyer_promise": True,
            "is_calculated_eligible": True, "is_shop_us_based": country == "US",
            "transaction_sold_count": rng.randrange(10000), "shipping_from_country_iso": country,
            "shop_location_country_iso": country, "review_count": reviews,
            "review_average": round(rng.uniform(3.5, 5.0), 4) if reviews else None,
        }

    def now(self) -> int:
        return self.epoch + self.clock_s

    def advance_clock(self, seconds: float) -> None:
        """Time passes for reviews: newer ones appear, old ones leave the past year."""
        self.clock_s += int(seconds)

    def review_count(self, s: int) -> int:
        """Shop.review_count: the reviews of the past year (365 days) only."""
        now = self.now()
        return sum(1 for r in _reviews_cached(self, s) if now - 365 * DAY < r["create_timestamp"] <= now)

    def reviews(self, s: int) -> list[dict]:
        """The shop's TransactionReviews created by now, newest first (creation times are
        distinct); older than a year included."""
        now = self.now()
        return [dict(r) for r in _reviews_cached(self, s) if r["create_timestamp"] <= now]

    # ---- ground truth for tests -----------------------------------------------------------
    def shop_last_activity(self, s: int, exclude: set[int] = frozenset()) -> int | None:
        times = [self.modified[i] for i in self.shop_listings.get(s, [])
                 if self.listing_id(i) not in exclude]
        return max(times) if times else None

    def expected(self, exclude: set[int] = frozenset()) -> dict[int, dict]:
        """listing_id -> {shop_id, taxonomy_id, price_amount, title, images: [(image_id,
        rank, url_570xN)], primary: image_id} for every listing (minus ``exclude``)."""
        out = {}
        for i in range(self.n):
            lid = self.listing_id(i)
            if lid in exclude:
                continue
            imgs = self.images(i)
            out[lid] = {"shop_id": self.shop_id(self.shop_of[i]), "taxonomy_id": self.tax[i],
                        "price_amount": self.price[i], "title": _listing_cached(self, i)["title"],
                        "images": [(im["listing_image_id"], im["rank"], im["url_570xN"]) for im in imgs],
                        "primary": imgs[0]["listing_image_id"]}
        return out

    def similar_group(self, listing_id: int) -> int | None:
        i = self.index_of_listing(listing_id)
        return None if i is None else self.group_of.get(i)

    def similar_groups(self) -> dict[int, list[tuple[int, int]]]:
        """group -> [(listing_id, primary image_id)]: the same object seen differently."""
        groups: dict[int, list[tuple[int, int]]] = {}
        for i, g in sorted(self.group_of.items()):
            groups.setdefault(g, []).append((self.listing_id(i), self.image_id(i, 0)))
        return groups

    # ---- pictures ------------------------------------------------------------------------
    def render(self, image_id: int, size: str) -> tuple[bytes, str] | None:
        """The picture at one of Etsy's sizes: (bytes, content type), or None (404)."""
        where = self.locate_image(image_id)
        if where is None or size not in ("75x75", "170x135", "570xN", "fullxfull"):
            return None
        kind = self.image_kind(image_id)
        if kind == "missing":
            return None
        if kind == "placeholder":
            return placeholder_jpeg(), "image/jpeg"
        index, k = where
        meta = self.image(index, k)
        fmt = "png" if meta["url_570xN"].endswith(".png") else "jpeg"
        data = render_picture(self.seed, image_id, self._scene(index, k), size,
                              meta["full_width"], meta["full_height"], fmt)
        return data, f"image/{fmt}"

    def _scene(self, index: int, k: int) -> tuple:
        """What the picture shows: (object seed, shape, view seed). A listing in a similar
        group shows the group's object in its primary image, seen from its own angle."""
        shape = self.nodes[self.tax[index]].shape or "table"
        group = self.group_of.get(index)
        if k == 0 and group is not None:
            first = min(i for i, g in self.group_of.items() if g == group)
            return (f"group{group}", self.nodes[self.tax[first]].shape or "table",
                    f"view{index}")
        return (f"obj{index}.{k}", shape, f"view{index}.{k}")


@lru_cache(maxsize=4096)
def _listing_cached(cat: Catalogue, index: int) -> dict:
    rng = stable_rng("listing", cat.seed, index)
    node = cat.nodes[cat.tax[index]]
    noun = node.name.rstrip("s") if not node.name.endswith("ss") else node.name
    material = rng.choice(_MATERIALS)
    title = f"{rng.choice(_ADJECTIVES)} {material} {noun} no. {index}"
    lid = cat.listing_id(index)
    s = cat.shop_of[index]
    created = cat.created[index]
    modified = cat.modified[index]
    slug = "-".join(title.lower().replace(".", "").replace("'", "").split())[:60]
    return {
        "listing_id": lid, "user_id": USER_ID_BASE + s, "shop_id": cat.shop_id(s),
        "title": title,
        "description": f"{title}. Made of {material}. Ships in {rng.randrange(1, 6)} weeks.",
        "state": "active", "creation_timestamp": created, "created_timestamp": created,
        "ending_timestamp": created + 120 * DAY * (1 + (cat.epoch - created) // (120 * DAY)),
        "original_creation_timestamp": created, "last_modified_timestamp": modified,
        "updated_timestamp": modified, "state_timestamp": modified,
        "quantity": rng.randrange(1, 20), "shop_section_id": None, "featured_rank": -1,
        "url": f"https://www.etsy.com/listing/{lid}/{slug}",
        "num_favorers": rng.randrange(0, 500), "non_taxable": False, "is_taxable": True,
        "is_customizable": rng.random() < 0.3, "is_personalizable": rng.random() < 0.2,
        "personalization_is_required": False, "personalization_char_count_max": None,
        "personalization_instructions": None, "listing_type": "physical",
        "tags": sorted({rng.choice(_MATERIALS), noun.lower(), rng.choice(_STYLES).lower()}),
        "materials": sorted({material, rng.choice(_MATERIALS)}),
        "shipping_profile_id": 100 + s, "return_policy_id": None,
        "processing_min": 1, "processing_max": rng.randrange(2, 30),
        "who_made": rng.choice(_WHO), "when_made": rng.choice(_WHEN), "is_supply": False,
        "item_weight": round(rng.uniform(1, 80), 1), "item_weight_unit": "kg",
        "item_length": round(rng.uniform(20, 220), 1), "item_width": round(rng.uniform(20, 120), 1),
        "item_height": round(rng.uniform(20, 200), 1), "item_dimensions_unit": "cm",
        "is_private": False, "style": [rng.choice(_STYLES)], "file_data": "",
        "has_variations": False, "should_auto_renew": rng.random() < 0.7, "language": "en-US",
        "price": {"amount": cat.price[index], "divisor": 100, "currency_code": "USD"},
        "taxonomy_id": cat.tax[index], "skus": [],
    }


@lru_cache(maxsize=1024)
def _reviews_cached(cat: Catalogue, s: int) -> tuple:
    """Every review the shop will ever have: some after the epoch (they appear as the clock
    moves on), some older than a year (outside review_count)."""
    mine = cat.shop_listings.get(s, [])
    n = stable_rng("nrev", cat.seed, s).choice((0, 0, 1, 2, 3, 5, 8, 12, 20)) if mine else 0
    rng = stable_rng("reviews", cat.seed, s)
    out = []
    t = cat.epoch + 30 * DAY - rng.randrange(3600, 50 * DAY)
    for j in range(n):
        i = rng.choice(mine)
        rating = rng.choice((5, 5, 5, 4, 4, 3, 1))
        out.append({
            "shop_id": cat.shop_id(s), "listing_id": cat.listing_id(i),
            "transaction_id": 3_000_000_000 + s * 100 + j, "buyer_user_id": 700_000_000 + rng.randrange(10 ** 6),
            "rating": rating, "review": " ".join(rng.choice(_WORDS) for _ in range(rng.randrange(3, 12))),
            "language": "en", "image_url_fullxfull": None,
            "create_timestamp": t, "created_timestamp": t,
            "update_timestamp": t, "updated_timestamp": t,
        })
        t -= rng.randrange(3600, 40 * DAY)
    return tuple(out)
