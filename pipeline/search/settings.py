"""Search settings: the ``[search]`` config section as a dataclass (issues 7 and 19), the one
class that reads it (the engine, the search helper and the console's helper client)."""
from __future__ import annotations

from dataclasses import dataclass

from pipeline.core.config import config_values, toml_defaults


@dataclass
@toml_defaults("search")
class SearchSettings:
    weights: dict
    rrf_k: int
    depth: int
    agree_first: bool
    min_agree: int
    text_indexes: bool
    nprobe: int
    ef_search: int
    rerank: int
    omp_threads: int
    max_k: int
    lock_wait_s: float
    threads: int
    index_type: str
    index_min_rows: int
    index_nlist: int
    index_train_rows: int
    index_max_lag: int
    share_candidates: bool
    filter_exact_rows: int
    filter_widen_max: float
    same_item_min_score: float
    same_item_scores: dict
    same_item_depth: int
    helper_idle_s: float
    helper_text_cache: int

    @classmethod
    def from_config(cls, config) -> "SearchSettings":
        return cls(**config_values(cls, config))
