"""One query, as the CLI and the console run it (issues 7 and 19): a SearchRequest
(pipeline/search/request.py) to query vectors, the filters to a row selector, the engine's
fused search, then the described results. ``run`` is the one entry point; ``search`` keeps
the keyword form of issue 7."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.core.errors import UserError
from pipeline.search.encoders import (CLIP_IMAGE, combine_images, encode_picture, encode_text,
                                      image_models, load_model_set, load_remover, open_picture)
from pipeline.search.engine import SearchEngine
from pipeline.search.request import Filters, SearchRequest
from pipeline.search.results import ImageLocator, describe, describe_one
from pipeline.search.settings import SearchSettings

# A listing's images looked at, stored or fetched.
MAX_LISTING_IMAGES = 10


@dataclass
class SearchOutcome:
    kind: str
    results: list = field(default_factory=list)     # best first (listing dicts)
    groups: list = field(default_factory=list)      # same_as: shop groups
    warnings: list = field(default_factory=list)
    notes: list = field(default_factory=list)       # what the results mean (thresholds...)
    table: object = None                            # the ListingTable used (pass it back)


def query_for_item(engine: SearchEngine, listing_id: int, image_id: int | None,
                   models: list[str], max_images: int = MAX_LISTING_IMAGES) -> dict[str, np.ndarray]:
    """The stored vectors of an indexed image, or of every indexed image of the listing
    (up to ``max_images``; each model then keeps an image's best score over them): no
    re-embedding."""
    engine.refresh()
    rows = engine.rows_of_listing(listing_id, image_id)[:max_images]
    if not rows:
        what = f"image {listing_id}_{image_id}" if image_id is not None else f"listing {listing_id}"
        raise UserError(f"{what} is not in the index")
    return {m: np.stack([engine.stored_vector(m, r) for r in rows]) for m in models}


def default_models(kind: str, engine: SearchEngine, settings: SearchSettings) -> list[str]:
    if kind == "text":
        names = list(CLIP_IMAGE) + ([f"{m}_text" for m in CLIP_IMAGE] if settings.text_indexes else [])
    else:
        names = image_models()
    return [m for m in names if m in engine.order] or names


def _models(req: SearchRequest, engine: SearchEngine) -> tuple[list[str], list[str]]:
    kind = "text" if req.kind == "text" else "image"
    if req.models:
        unknown = [m for m in req.models if m not in engine.order]
        if unknown:
            raise UserError(f"unknown model(s) {', '.join(unknown)} (indexes: {', '.join(engine.order)})")
        if kind == "text" and any(m.split("_text")[0] not in CLIP_IMAGE for m in req.models):
            raise UserError(f"a text query can use only the CLIP indexes: "
                            f"{', '.join(m for m in engine.order if m.startswith('clip'))}")
    names = list(req.models) if req.models else default_models(kind, engine, engine.settings)
    if req.kind == "same_as":
        names = [m for m in names if not m.endswith("_text")]
    refused = [m for m in names if m in engine.refused]
    names = [m for m in names if m not in engine.refused]
    warnings = [w for w in engine.warnings if any(f"model {m} " in w for m in refused)
                or "not in the derived" in w]
    warnings += [w for w in engine.cross_warnings if any(w.startswith(f"model {m}:") for m in names)]
    if not names:
        raise UserError("every model asked for is refused: " + "; ".join(engine.warnings))
    return names, warnings


def row_filter(engine: SearchEngine, filters: Filters, conn, table=None):
    """(RowFilter or None, the ListingTable used). Without a DB only the exclude set can
    apply; asking for another filter then is an error."""
    from pipeline.search import rowfilter
    from pipeline.search.listing_table import ListingTable, taxonomy_subtree

    if not filters.active:
        return None, table
    if conn is None:
        if filters.needs_db:
            raise UserError("the filters need the DB, and this root has none")
        passes, table = None, None
    else:
        if table is None or not table.fresh(conn):
            table = ListingTable.load(conn)
        subtree = taxonomy_subtree(conn, filters.taxonomy) if filters.taxonomy is not None else None
        passes = table.passes(filters, subtree)
    excluded = np.array(sorted(int(x) for x in filters.exclude), dtype=np.int64)

    def ok(listing_ids: np.ndarray) -> np.ndarray:
        if passes is None:
            keep = np.ones(len(listing_ids), dtype=bool)
        else:
            pos, found = table.position(listing_ids)
            keep = found & passes[pos] if len(passes) else np.zeros(len(listing_ids), bool)
            if not filters.needs_db:   # the default (active only) keeps listings the DB lacks
                keep |= ~found
        return keep & ~np.isin(listing_ids, excluded)

    return rowfilter.for_listings(engine, ok), table


def _picture_queries(root, req: SearchRequest, names: list[str], model_set, remover,
                     session=None) -> dict[str, np.ndarray]:
    from pipeline.search.sources import UrlLimits, fetch_picture

    pictures = [open_picture(p) for p in req.images]
    if req.urls:
        limits = UrlLimits.from_config(root.config)
        pictures += [fetch_picture(u, limits, session) for u in req.urls]
    return _encode_pictures(pictures, names, model_set or load_model_set(root),
                            remover or load_remover(root), req.combine)


def _encode_pictures(pictures, names, model_set, remover, combine) -> dict[str, np.ndarray]:
    per = [encode_picture(p, model_set, remover, names) for p in pictures]
    return combine_images(per, combine)


def _listing_queries(root, req: SearchRequest, engine, names, model_set, remover,
                     etsy_client=None, session=None) -> tuple[dict, str, list]:
    """(queries, engine combine, warnings): stored vectors when indexed, else the listing's
    images through the Etsy API, fetched and embedded."""
    if engine.rows_of_listing(req.listing, req.image_id):
        return query_for_item(engine, req.listing, req.image_id, names), "max", []
    if req.image_id is not None:
        raise UserError(f"image {req.listing}_{req.image_id} is not in the index")
    from pipeline.search.sources import UrlLimits, fetch_picture, listing_image_urls

    urls = listing_image_urls(root, req.listing, MAX_LISTING_IMAGES, etsy_client)
    limits = UrlLimits.from_config(root.config)
    pictures = [fetch_picture(u, limits, session) for u in urls]
    queries = _encode_pictures(pictures, names, model_set or load_model_set(root),
                               remover or load_remover(root), req.combine)
    return queries, "fuse", [f"listing {req.listing} is not indexed: searched with its "
                             f"{len(pictures)} image(s) from the Etsy API"]


def run(root, req: SearchRequest, *, engine: SearchEngine | None = None, model_set=None,
        remover=None, conn=None, locate: ImageLocator | None = None, table=None,
        etsy_client=None, session=None) -> SearchOutcome:
    """Run one request. ``locate`` finds a listing's archived primary image
    (pipeline.stages.archive.primary.primary_location from the CLI and the console); ``table``
    a ListingTable from an earlier outcome (reused while the DB is unchanged)."""
    req.check()
    if req.kind != "same_as":
        # This query may embed (text, pictures, a listing not in the index): torch and the
        # model libraries before the engine imports faiss (the other order has crashed the
        # process on macOS; tests/test_models_production.py checks it).
        from pipeline.models.loading import import_model_libraries

        import_model_libraries()
    engine = engine or SearchEngine.for_root(root)
    engine.check_k(req.k)
    engine.refresh()
    if not engine.loaded:
        raise UserError(f"the index store {engine.base} is empty: nothing to search")
    names, warnings = _models(req, engine)
    own = conn is None
    if own and root.db_path.exists():
        from pipeline.core.db import open_db

        conn = open_db(root)
    try:
        rows_ok, table = row_filter(engine, req.filters, conn, table)
        out = SearchOutcome(req.kind, warnings=warnings, table=table)
        if req.kind == "same_as":
            _same_as(root, req, engine, names, rows_ok, conn, locate, out)
            return out
        exclude, combine = set(), "fuse"
        if req.kind == "listing":
            queries, combine, more = _listing_queries(root, req, engine, names, model_set,
                                                      remover, etsy_client, session)
            out.warnings += more
            exclude.add(int(req.listing))
        else:
            queries = {}
            if req.has_images:
                queries = _picture_queries(root, req, names, model_set, remover, session)
            if req.text is not None:
                model_set = model_set or load_model_set(root)
                text_names = [m for m in names if m.removesuffix("_text") in CLIP_IMAGE]
                for m, v in encode_text(req.text.strip(), model_set, text_names).items():
                    v = np.atleast_2d(np.asarray(v, dtype="float32"))
                    # text with images: the text tower's vector is one more list to fuse
                    queries[m] = np.concatenate([queries[m], v]) if m in queries else v
        hits = engine.search_vectors(queries, req.k, exclude_listings=exclude, rows_ok=rows_ok,
                                     combine=combine)
        out.results = describe(hits, root, conn, locate)
        return out
    finally:
        if own and conn is not None:
            conn.close()


def _same_as(root, req, engine, names, rows_ok, conn, locate, out: SearchOutcome) -> None:
    from pipeline.search.same_item import group_by_shop, same_item_rows, thresholds

    found = same_item_rows(engine, req.same_as, names, rows_ok)[:req.k]
    items = []
    for lid, iid, _grow, per in found:
        item = describe_one(root, conn, lid, iid, min(per.values()), locate)
        item["scores"] = {m: round(v, 6) for m, v in per.items()}
        items.append(item)
    out.results = items
    out.groups = group_by_shop(items)
    limits = thresholds(engine.settings, names)
    out.notes.append("same item: every model at or above " +
                        ", ".join(f"{m} {v:g}" for m, v in limits.items()))


def search(root, *, text: str | None = None, image: str | Path | None = None,
           listing: int | None = None, image_id: int | None = None, k: int = 10,
           models: list[str] | None = None, engine: SearchEngine | None = None,
           model_set=None, conn=None,
           locate: ImageLocator | None = None) -> tuple[list[dict], list[str]]:
    """One query by keywords (issue 7's form): (results best first, warnings)."""
    if sum(x is not None for x in (text, image, listing)) != 1:
        raise UserError("give exactly one of --text, --image or --listing")
    req = SearchRequest(text=text, images=[image] if image is not None else [],
                        listing=listing, image_id=image_id, k=k, models=models)
    got = run(root, req, engine=engine, model_set=model_set, conn=conn, locate=locate)
    return got.results, got.warnings
