"""The sync stage's settings: the [sync] section (pipeline/defaults/sync.toml) and the
command line, checked once at start."""
from __future__ import annotations

from dataclasses import dataclass

PHASES = ("taxonomy", "listings", "shops", "reviews")


@dataclass
class Settings:
    """Built only by from_config: the defaults live in pipeline/defaults/sync.toml."""

    root_taxonomy_id: int
    band_config: str
    page_size: int
    page_overlap: int
    max_results: int
    listing_refresh_s: float
    shop_active_s: float
    shop_refresh_s: float
    review_active_s: float
    fetch_new_shops: bool
    batch_known_listings: bool
    snapshot_views: bool
    url_field: str
    threads: int
    phases: tuple
    min_pass_interval_s: float

    @classmethod
    def from_config(cls, cfg, args=None) -> "Settings":
        from pipeline.core.errors import UserError

        day = 86400.0
        phases = tuple(cfg.get("sync.phases"))
        threads = int(cfg.get("sync.threads"))
        if args is not None and getattr(args, "phases", None):
            phases = tuple(p.strip() for p in args.phases.split(",") if p.strip())
        if args is not None and getattr(args, "threads", None):
            threads = int(args.threads)
        bad = [p for p in phases if p not in PHASES]
        if bad or not phases:
            raise UserError(f"sync phases must be some of {', '.join(PHASES)}; got {', '.join(bad) or 'none'}")
        if threads < 1:
            raise UserError(f"sync threads must be >= 1, got {threads}")
        page = int(cfg.get("sync.page_size"))
        if not 1 <= page <= 100:
            raise UserError(f"sync.page_size must be 1..100, got {page}")
        overlap = int(cfg.get("sync.page_overlap"))
        if not 0 <= overlap <= page // 2:
            raise UserError(f"sync.page_overlap must be 0..{page // 2} (half of sync.page_size), got {overlap}")
        return cls(
            root_taxonomy_id=int(cfg.get("sync.root_taxonomy_id")),
            band_config=str(cfg.get("sync.band_config")), page_size=page, page_overlap=overlap,
            max_results=int(cfg.get("sync.max_results")),
            listing_refresh_s=float(cfg.get("sync.listing_refresh_days")) * day,
            shop_active_s=float(cfg.get("sync.shop_active_days")) * day,
            shop_refresh_s=float(cfg.get("sync.shop_refresh_days")) * day,
            review_active_s=float(cfg.get("sync.review_active_days")) * day,
            fetch_new_shops=bool(cfg.get("sync.fetch_new_shops")),
            batch_known_listings=bool(cfg.get("sync.batch_known_listings")),
            snapshot_views=bool(cfg.get("sync.snapshot_views")),
            url_field=str(cfg.get("sync.image_url_field")), threads=threads,
            phases=tuple(p for p in PHASES if p in phases),
            min_pass_interval_s=float(cfg.get("sync.min_pass_interval_h")) * 3600)
