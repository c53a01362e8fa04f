"""One query, as the CLI and the console run it: the query kind (text, image file, indexed
listing) to query vectors, the engine's fused search, then the described results (issue 7)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.core.errors import UserError
from pipeline.search.encoders import (CLIP_IMAGE, encode_image, encode_text, image_models,
                                      load_model_set, load_remover)
from pipeline.search.engine import SearchEngine
from pipeline.search.results import ImageLocator, describe
from pipeline.search.settings import SearchSettings


def query_for_item(engine: SearchEngine, listing_id: int, image_id: int | None,
                   models: list[str], max_images: int = 10) -> dict[str, np.ndarray]:
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


def search(root, *, text: str | None = None, image: str | Path | None = None,
           listing: int | None = None, image_id: int | None = None, k: int = 10,
           models: list[str] | None = None, engine: SearchEngine | None = None,
           model_set=None, conn=None,
           locate: ImageLocator | None = None) -> tuple[list[dict], list[str]]:
    """One query, as the CLI runs it: (results best first, warnings). ``locate`` finds a
    listing's archived primary image (pipeline.stages.archive.primary.primary_location from the
    CLI and the console); without it only the loose bg-removed files are looked at."""
    if sum(x is not None for x in (text, image, listing)) != 1:
        raise UserError("give exactly one of --text, --image or --listing")
    engine = engine or SearchEngine.for_root(root)
    engine.check_k(k)
    engine.refresh()
    if not engine.loaded:
        raise UserError(f"the index store {engine.base} is empty: nothing to search")
    kind = "text" if text is not None else "image" if image is not None else "listing"
    if models:
        unknown = [m for m in models if m not in engine.order]
        if unknown:
            raise UserError(f"unknown model(s) {', '.join(unknown)} (indexes: {', '.join(engine.order)})")
        if kind == "text" and any(m.split("_text")[0] not in CLIP_IMAGE for m in models):
            raise UserError(f"a text query can use only the CLIP indexes: "
                            f"{', '.join(m for m in engine.order if m.startswith('clip'))}")
    names = list(models) if models else default_models(kind, engine, engine.settings)
    warnings = []
    refused = [m for m in names if m in engine.refused]
    names = [m for m in names if m not in engine.refused]
    warnings.extend(w for w in engine.warnings if any(f"model {m} " in w for m in refused)
                    or "not in the derived" in w)
    warnings.extend(w for w in engine.cross_warnings if any(w.startswith(f"model {m}:") for m in names))
    if not names:
        raise UserError("every model asked for is refused: " + "; ".join(engine.warnings))
    exclude = ()
    if kind == "listing":
        queries = query_for_item(engine, int(listing), image_id, names)
        exclude = (int(listing),)
    elif kind == "text":
        if not text or not text.strip():
            raise UserError("the search text is empty")
        queries = encode_text(text.strip(), model_set or load_model_set(root), names)
    else:
        if not Path(image).is_file():
            raise UserError(f"image {image} does not exist or is not a file")
        queries = encode_image(Path(image), model_set or load_model_set(root), load_remover(root), names)
    hits = engine.search_vectors(queries, k, exclude_listings=exclude)
    own = conn is None
    if own and root.db_path.exists():
        from pipeline.core.db import open_db

        conn = open_db(root)
    try:
        return describe(hits, root, conn, locate), warnings
    finally:
        if own and conn is not None:
            conn.close()
