"""Search quality: recall@k of the configured (approximate) indexes against exact search
(``imageselector search eval``)."""
from __future__ import annotations

import numpy as np

from pipeline.core.errors import UserError
from pipeline.search.encoders import image_models
from pipeline.search.engine import SearchEngine


def evaluate(engine: SearchEngine, n_queries: int = 100, k: int = 10,
             models: list[str] | None = None, seed: int = 0) -> dict:
    """recall@k of the configured indexes against exact search, per model and fused, with
    stored vectors of random indexed images as queries."""
    engine.refresh()
    total = engine.total_rows()
    if total == 0:
        raise UserError("the index store is empty: nothing to evaluate")
    names = [m for m in (models or image_models()) if m in engine.available]
    rng = np.random.default_rng(seed)
    rows = np.concatenate([np.arange(ls.rows) + ls.shard.first_global_row for ls in engine.loaded])
    picks = rng.choice(rows, size=min(n_queries, total), replace=False)
    per_model = {m: 0.0 for m in names}
    fused = 0.0
    for grow in picks.tolist():
        queries = {m: engine.stored_vector(m, grow) for m in names}
        for m in names:
            a = {r for r, _ in engine.model_search(m, queries[m], k)}
            e = {r for r, _ in engine.model_search(m, queries[m], k, exact=True)}
            per_model[m] += len(a & e) / max(len(e), 1)
        a = {h.listing_id for h in engine.search_vectors(queries, k)}
        e = {h.listing_id for h in engine.search_vectors(queries, k, exact=True)}
        fused += len(a & e) / max(len(e), 1)
    n = len(picks)
    return {"queries": n, "k": k, "per_model": {m: v / n for m, v in per_model.items()},
            "fused": fused / n,
            "types": {m: ([f"search index {engine.cross[m].kind}"] if m in engine.cross else
                          sorted({ls.kinds.get(m, "?") for ls in engine.loaded})) for m in names}}
