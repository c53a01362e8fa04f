"""Reciprocal-rank fusion of each model's ranked list, and one result per listing (issue 7).

Each model's index (every shard of it) returns its top ``depth`` images for the query vector
of that model. The fusion is reciprocal-rank fusion:

    fused(image) = sum over the models that returned it of  weight_m / (rrf_k + rank_m)

and ``agree`` is the number of models that returned it. With ``agree_first`` (the default)
results are ordered by (agree, fused), so an image found by several models outranks one
found by a single model, as the seed asks; ``min_agree`` drops images found by fewer
models. One result per listing: the listing's best image by the same order.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.search.settings import SearchSettings


@dataclass
class ImageHit:
    global_row: int
    listing_id: int
    image_id: int
    fused: float = 0.0
    models: dict = field(default_factory=dict)   # model -> (rank, score)

    @property
    def agree(self) -> int:
        return len(self.models)



def fuse(per_model: dict[str, list[tuple[int, float]]], ids_of, settings: SearchSettings,
         exclude_listings=()) -> list[ImageHit]:
    """Image-level fusion of each model's ranked (global_row, score) list, best first."""
    hits: dict[int, ImageHit] = {}
    excluded = {int(x) for x in exclude_listings}
    for model, ranked in per_model.items():
        weight = float(settings.weights.get(model, 1.0))
        rank = 0
        for grow, score in ranked:
            lid, iid = ids_of(grow)
            if lid in excluded:
                continue
            rank += 1
            hit = hits.get(grow)
            if hit is None:
                hit = hits[grow] = ImageHit(grow, lid, iid)
            hit.models[model] = (rank, float(score))
            hit.fused += weight / (settings.rrf_k + rank)
    out = [h for h in hits.values() if h.agree >= settings.min_agree]
    out.sort(key=lambda h: _order_key(h, settings))
    return out


def _order_key(h: ImageHit, settings: SearchSettings):
    return (-h.agree if settings.agree_first else 0, -h.fused, h.global_row)


def best_per_listing(hits: list[ImageHit], k: int) -> list[ImageHit]:
    """Hits are sorted best first: the first hit of each listing is its best image."""
    seen, out = set(), []
    for h in hits:
        if h.listing_id in seen:
            continue
        seen.add(h.listing_id)
        out.append(h)
        if len(out) == k:
            break
    return out


def merge_ranked(lists: list[list[tuple[int, float]]], rrf_k: int,
                 depth: int) -> list[tuple[int, float]]:
    """One model's ranked lists for several query images as one list: ordered by the sum of
    reciprocal ranks over the lists, each row keeping its best score."""
    rrf: dict[int, float] = {}
    best: dict[int, float] = {}
    for ranked in lists:
        for rank, (grow, score) in enumerate(ranked, 1):
            rrf[grow] = rrf.get(grow, 0.0) + 1.0 / (rrf_k + rank)
            if score > best.get(grow, float("-inf")):
                best[grow] = score
    order = sorted(rrf, key=lambda g: (-rrf[g], -best[g], g))[:depth]
    return [(g, best[g]) for g in order]
