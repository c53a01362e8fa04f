"""The same item elsewhere (issue 19, ``search --same-as``): the other listings with an image
that every image model scores at or above its calibrated threshold against one of the
listing's images, grouped by shop with each listing's price.

Candidates: each model's best ``same_item_depth`` rows for the listing's stored vectors,
pooled over the models; every model then scores the whole pool exactly (so a row one model's
index missed is still judged by it), and a row is the same item when all models agree."""
from __future__ import annotations

import numpy as np

from pipeline.core.errors import UserError
from pipeline.search.settings import SearchSettings


def thresholds(settings: SearchSettings, models: list[str]) -> dict[str, float]:
    return {m: float(settings.same_item_scores.get(m, settings.same_item_min_score)) for m in models}


def same_item_rows(engine, listing_id: int, models: list[str],
                   rows_ok=None) -> list[tuple[int, int, int, dict]]:
    """[(listing_id, image_id, global_row, {model: score})] of the other listings' best
    agreeing image each, best (highest lowest-model score) first."""
    engine.refresh()
    own = engine.rows_of_listing(int(listing_id))
    if not own:
        raise UserError(f"listing {listing_id} is not in the index (--same-as compares its "
                        f"stored vectors)")
    settings = engine.settings
    limits = thresholds(settings, models)
    queries = {m: np.stack([engine.stored_vector(m, r) for r in own]) for m in models}
    ranked = engine.ranked(queries, settings.same_item_depth, rows_ok=rows_ok)
    pool = np.unique(np.array([r for lst in ranked.values() for r, _ in lst], dtype=np.int64))
    pool = pool[~np.isin(pool, own)]
    if len(pool) == 0:
        return []
    scores = {}
    for m in models:
        exact = dict(engine._exact_ranked(m, queries[m], pool, len(pool)))
        scores[m] = np.array([exact.get(int(r), -np.inf) for r in pool])
    agree = np.all([scores[m] >= limits[m] for m in models], axis=0)
    ids = engine.ids_many(pool[agree])
    best: dict[int, tuple] = {}
    for i in np.flatnonzero(agree):
        grow = int(pool[i])
        lid, iid = ids[grow]
        if lid == int(listing_id):
            continue
        per = {m: float(scores[m][i]) for m in models}
        low = min(per.values())
        if lid not in best or low > min(best[lid][3].values()):
            best[lid] = (lid, iid, grow, per)
    return sorted(best.values(), key=lambda x: (-min(x[3].values()), x[0]))


def group_by_shop(items: list[dict]) -> list[dict]:
    """Described same-item listings as shop groups, the shop with the best match first;
    each group lists its listings best first with their prices."""
    groups: dict = {}
    for it in items:
        key = it.get("shop_id")
        g = groups.setdefault(key, {"shop_id": key, "shop": it.get("shop"), "listings": []})
        g["listings"].append(it)
    return sorted(groups.values(), key=lambda g: (-g["listings"][0]["score"],
                                                   g["listings"][0]["listing_id"]))
