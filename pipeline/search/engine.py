"""The search engine: the loaded shards, the cross-shard search indexes, per-model search and
the fused search over query vectors (issue 7).

Indexes are loaded once (flat files memory-mapped) and re-checked before every query by
the shards' manifest and derived-state signatures, so a new import is picked up without a
restart. A model whose index is missing or does not line up with the shard's ids is
refused with a warning and the others are searched.

Large collections (``search.index_min_rows`` rows and more, ``search.index_type`` set):
each model is searched in its cross-shard search index (pipeline/index/searchindex.py: one IVF-PQ
fast-scan index over all shards, ids = global rows) for its best ``max(rerank, depth)``
candidates; with ``share_candidates`` the candidates of all models are pooled, and every
model scores the whole pool exactly from the stored float32 vectors (memory-mapped parts).
Each model's list is then its exact top among the pool, a superset of its own candidates,
so pooling can only bring it closer to exact search; it pays off because the models agree
on near-duplicates, so an image one model's index missed is usually found by another.
Smaller collections are searched exactly (or in the per-shard types of ``index.types``).
Models (and, without a search index, their shards) are searched in parallel threads, one
OpenMP thread each (faiss and numpy release the GIL).

The core (``SearchEngine.search_vectors``) takes query vectors; the fusion is in
pipeline/search/fusion.py, the query encoders in pipeline/search/encoders.py and the
one-query entry point in pipeline/search/query.py.
"""
from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.core.errors import UserError
from pipeline.search.fusion import ImageHit, best_per_listing, fuse, merge_ranked
from pipeline.search.settings import SearchSettings

log = logging.getLogger("imageselector.search")


@dataclass
class _LoadedShard:
    shard: object
    rows: int
    ids: np.ndarray
    indexes: dict
    kinds: dict
    signature: tuple
    parts: dict = field(default_factory=dict)   # model -> memory-mapped parts (opened once)

    def vector_parts(self, model: str):
        got = self.parts.get(model)
        if got is None:
            got = self.parts[model] = self.shard.vector_parts(model)
        return got


@dataclass
class _Cross:
    """A model's cross-shard search index in memory, covering global rows 0..rows-1."""
    index: object
    rows: int
    covered: list
    state_sig: object
    kind: str



class SearchEngine:
    def __init__(self, base: Path, settings: SearchSettings | None = None):
        self.base = Path(base)
        self.settings = settings or SearchSettings()
        self.loaded: list[_LoadedShard] = []
        self.refused: dict[str, str] = {}
        self.warnings: list[str] = []
        self.generation = 0
        self._starts = np.zeros(0, dtype=np.int64)
        self.cross: dict[str, _Cross] = {}
        self.cross_warnings: list[str] = []
        self._cross_sigs: dict = {}
        self._pool = None
        self._pool_lock = threading.Lock()
        if self.settings.omp_threads > 0:
            import faiss

            faiss.omp_set_num_threads(self.settings.omp_threads)

    @classmethod
    def for_root(cls, root, **overrides) -> "SearchEngine":
        settings = SearchSettings.from_config(root.config)
        for key, value in overrides.items():
            setattr(settings, key, value)
        return cls(root.embeddings_dir, settings)

    # ---- loading ------------------------------------------------------------------
    def refresh(self) -> bool:
        """Load new or changed shards (cheap when nothing changed: a few stat calls)."""
        from pipeline.index.shard import Shard, list_shard_numbers
        from pipeline.index.store import IndexStore

        numbers = list_shard_numbers(self.base)
        sigs = [Shard(self.base, n).signature() for n in numbers]
        if [ls.shard.number for ls in self.loaded] == numbers and \
                [ls.signature for ls in self.loaded] == sigs:
            if self._cross_signatures() != self._cross_sigs:
                self._load_cross()
                self.generation += 1
                return True
            return False
        lock = IndexStore(self.base, lock_timeout_s=self.settings.lock_wait_s)
        try:
            with lock.locked(exclusive=False):
                old = {ls.shard.number: ls for ls in self.loaded}
                loaded = []
                for n in numbers:
                    shard = Shard(self.base, n)
                    sig = shard.signature()
                    prev = old.get(n)
                    loaded.append(prev if prev is not None and prev.signature == sig
                                  else self._load_shard(shard.load(repair=False), sig))
        except UserError as exc:
            if not self.loaded:
                raise
            self.warnings.append(f"kept the indexes already loaded: {exc}")
            return False
        self.loaded = loaded
        self._starts = np.array([ls.shard.first_global_row for ls in loaded], dtype=np.int64)
        self._check_models()
        self._load_cross()
        self.generation += 1
        return True

    # ---- the cross-shard search indexes -------------------------------------------
    def _cross_signatures(self) -> dict:
        from pipeline.index.searchindex import state_signature

        if not self._cross_wanted():
            return {}
        return {m: state_signature(self.base, m) for m in self.order}

    def _cross_wanted(self) -> bool:
        return bool(self.settings.index_type) and self.total_rows() >= self.settings.index_min_rows

    def _load_cross(self) -> None:
        """Per model: keep the index in memory if its file did not change, else read it;
        add the rows imported since it was written (at most ``index_max_lag``). A model
        without a usable one is searched shard by shard, with a warning."""
        from pipeline.index import searchindex as si

        self.cross_warnings = []
        sigs = self._cross_signatures()
        if not sigs:
            self.cross, self._cross_sigs = {}, {}
            return
        shards = [ls.shard for ls in self.loaded]
        total = si.prefix_rows(shards, rows_of=lambda sh: self._loaded_rows(sh))
        cross = {}
        for m in self.available:
            dim = self.loaded[-1].shard.dims[m]
            prev = self.cross.get(m)
            try:
                if prev is not None and prev.state_sig == sigs[m] and \
                        si.check_covered(prev.covered, shards) is None:
                    got = prev
                else:
                    loaded = si.load(self.base, m, shards, dim)
                    if loaded is None:
                        self.cross_warnings.append(
                            f"model {m}: no cross-shard search index yet (searching shard by "
                            f"shard; build it with pipeline.index.searchindex.update_for_root)")
                        continue
                    index, state = loaded
                    got = _Cross(index, int(state["rows"]), state.get("covered", []), sigs[m],
                                 state.get("type", "?"))
                    self._tune(index)
                if got.rows > total:
                    raise si.Stale(f"covers {got.rows} rows, the loaded shards {total}")
                lag = total - got.rows
                if lag > self.settings.index_max_lag:
                    self.cross_warnings.append(
                        f"model {m}: the cross-shard search index is {lag} rows behind (more "
                        f"than search.index_max_lag); searching shard by shard until it is updated")
                    continue
                if lag:
                    si.add_rows(got.index, shards, m, got.rows, total,
                                parts_of=lambda sh, model: self._loaded_of(sh).vector_parts(model))
                    got = _Cross(got.index, total, si.covered(shards, total), got.state_sig,
                                 got.kind)
                cross[m] = got
            except si.Stale as exc:
                self.cross_warnings.append(f"model {m}: cross-shard search index ignored ({exc}); "
                                           f"searching shard by shard until it is rebuilt")
        self.cross, self._cross_sigs = cross, sigs
        for w in self.cross_warnings:
            log.warning("%s", w)

    def _loaded_rows(self, shard) -> int:
        return self._loaded_of(shard).rows

    def _loaded_of(self, shard) -> _LoadedShard:
        return next(ls for ls in self.loaded if ls.shard is shard)

    def _load_shard(self, shard, signature) -> _LoadedShard:
        import faiss

        from pipeline.index import derived

        state = shard.derived_state()
        rows = int(state.get("rows") or 0)
        files = state.get("files", {})
        indexes, kinds = {}, {}
        for m in shard.order:
            path = shard.faiss_path(m)
            rec = files.get(m) or {}
            if not path.exists() or rec.get("rows") != rows:
                continue
            try:
                index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP)
            except RuntimeError:
                try:
                    index = faiss.read_index(str(path))
                except RuntimeError:
                    continue
            kinds[m] = rec.get("type", derived.FLAT)
            self._tune(index)
            indexes[m] = index
        ids = shard.ids()[:rows] if rows else np.zeros((0, 2), dtype=np.int64)
        return _LoadedShard(shard, rows, ids, indexes, kinds, signature)

    def _tune(self, index) -> None:
        import faiss

        ps = faiss.ParameterSpace()
        for name, value in (("nprobe", self.settings.nprobe), ("efSearch", self.settings.ef_search)):
            try:
                ps.set_index_parameter(index, name, value)
            except RuntimeError:
                pass

    def _check_models(self) -> None:
        """A model is searched only if every shard has its index, lined up with the ids."""
        self.refused, self.warnings = {}, []
        if not self.loaded:
            return
        order = self.loaded[-1].shard.order
        for m in order:
            for ls in self.loaded:
                name = ls.shard.path.name
                index = ls.indexes.get(m)
                dim = ls.shard.dims[m]
                if index is None:
                    self.refused[m] = f"{name}/{m}.faiss is missing or behind its parts"
                elif index.ntotal != ls.rows or index.d != dim or len(ls.ids) != ls.rows:
                    self.refused[m] = (f"{name}/{m}.faiss holds {index.ntotal} rows of dim "
                                       f"{index.d}, the shard {ls.rows} rows of dim {dim}")
                if m in self.refused:
                    break
        for m, why in self.refused.items():
            self.warnings.append(f"model {m} refused: {why} (run: imageselector index verify)")
        if any(ls.rows < ls.shard.rows for ls in self.loaded):
            self.warnings.append("some imported rows are not in the derived indexes yet "
                                 "(run: imageselector index rebuild --missing-only)")

    @property
    def order(self) -> list[str]:
        return self.loaded[-1].shard.order if self.loaded else []

    @property
    def available(self) -> list[str]:
        return [m for m in self.order if m not in self.refused]

    def total_rows(self) -> int:
        return sum(ls.rows for ls in self.loaded)

    # ---- rows <-> ids ---------------------------------------------------------------
    def _shard_of(self, grow: int) -> _LoadedShard:
        return self.loaded[int(np.searchsorted(self._starts, grow, side="right")) - 1]

    def ids_of(self, grow: int) -> tuple[int, int]:
        ls = self._shard_of(grow)
        lid, iid = ls.ids[grow - ls.shard.first_global_row]
        return int(lid), int(iid)

    def ids_many(self, grows) -> dict[int, tuple[int, int]]:
        """global row -> (listing_id, image_id) for many rows at once."""
        rows = np.unique(np.asarray(grows, dtype=np.int64))
        out: dict[int, tuple[int, int]] = {}
        which = np.searchsorted(self._starts, rows, side="right") - 1
        for w in np.unique(which):
            sel = rows[which == w]
            ls = self.loaded[w]
            pairs = ls.ids[sel - ls.shard.first_global_row].tolist()
            out.update(zip(sel.tolist(), map(tuple, pairs)))
        return out

    def rows_of_listing(self, listing_id: int, image_id: int | None = None) -> list[int]:
        out = []
        for ls in self.loaded:
            mask = ls.ids[:, 0] == int(listing_id)
            if image_id is not None:
                mask &= ls.ids[:, 1] == int(image_id)
            out.extend((np.nonzero(mask)[0] + ls.shard.first_global_row).tolist())
        return out

    def stored_vector(self, model: str, grow: int) -> np.ndarray:
        return self.vectors(model, np.array([grow], dtype=np.int64))[0]

    def vectors(self, model: str, grows: np.ndarray) -> np.ndarray:
        """Stored float32 vectors of global rows (any order), from the memory-mapped parts."""
        from pipeline.index.indextypes import gather

        grows = np.asarray(grows, dtype=np.int64)
        dim = self.loaded[-1].shard.dims[model] if self.loaded else 0
        out = np.empty((len(grows), dim), dtype="float32")
        which = np.searchsorted(self._starts, grows, side="right") - 1
        for w in np.unique(which):
            sel = np.nonzero(which == w)[0]
            ls = self.loaded[w]
            out[sel] = gather(ls.vector_parts(model), grows[sel] - ls.shard.first_global_row, dim)
        return out

    # ---- threads ------------------------------------------------------------------
    def _map(self, fn, items: list):
        """``fn`` over ``items`` in the engine's threads (one OpenMP thread each)."""
        n = self.settings.threads or min(len(items), os.cpu_count() or 1)
        if n <= 1 or len(items) <= 1:
            return [fn(x) for x in items]
        with self._pool_lock:
            if self._pool is None or self._pool._max_workers < n:
                from concurrent.futures import ThreadPoolExecutor

                if self._pool is not None:
                    self._pool.shutdown(wait=False)
                self._pool = ThreadPoolExecutor(n, thread_name_prefix="search",
                                                initializer=_one_omp_thread)
            pool = self._pool
        return list(pool.map(fn, items))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None

    # ---- cross-shard search index: candidates, then exact scores -------------------
    def _cross_candidates(self, model: str, q: np.ndarray, want: int, rows_ok=None) -> np.ndarray:
        cross = self.cross[model]
        params = None
        if rows_ok is not None:
            params = rows_ok.params(cross.index, 0, cross.rows, self.settings.nprobe,
                                    self.settings.ef_search)
            want = rows_ok.widened(want, self.settings.filter_widen_max)
        _scores, rows = cross.index.search(q, min(want, cross.rows), params=params)
        return np.unique(rows[rows >= 0])

    def _exact_ranked(self, model: str, q: np.ndarray, rows: np.ndarray,
                      depth: int) -> list[tuple[int, float]]:
        """The best ``depth`` of ``rows`` by exact score (best over the query vectors)."""
        if len(rows) == 0:
            return []
        # einsum, not BLAS: a multi-threaded GEMV per model thread oversubscribes the cores
        scores = np.einsum("id,qd->iq", self.vectors(model, rows), q).max(axis=1)
        top = np.lexsort((rows, -scores))[:depth]
        return [(int(rows[i]), float(scores[i])) for i in top]

    # ---- one model ----------------------------------------------------------------
    def model_search(self, model: str, query: np.ndarray, depth: int,
                     exact: bool = False, rows_ok=None) -> list[tuple[int, float]]:
        """(global_row, score) of the best ``depth`` images of one model over every shard
        (only the rows ``rows_ok``, a pipeline.search.rowfilter.RowFilter, selects)."""
        from pipeline.index import derived
        from pipeline.index.indextypes import gather

        q = np.ascontiguousarray(np.atleast_2d(np.asarray(query, dtype="float32")))
        if not exact and model in self.cross:
            want = max(self.settings.rerank, depth)
            return self._exact_ranked(model, q, self._cross_candidates(model, q, want, rows_ok), depth)
        if q.shape[0] > 1:  # several query vectors (a listing's images): best score per image
            merged: dict[int, float] = {}
            for one in q:
                for grow, score in self.model_search(model, one, depth, exact, rows_ok):
                    if score > merged.get(grow, -np.inf):
                        merged[grow] = score
            ranked = sorted(merged.items(), key=lambda x: (-x[1], x[0]))
            return ranked[:depth]
        all_rows, all_scores, approx = [], [], []
        for ls in self.loaded:
            if ls.rows == 0:
                continue
            index = ls.indexes[model]
            flat = ls.kinds.get(model) == derived.FLAT
            g0 = ls.shard.first_global_row
            if exact and not flat:
                rows, scores = self._brute_force(ls, model, q[0], depth)
            else:
                want = max(self.settings.rerank, depth) if not flat and self.settings.rerank > 0 else depth
                params = None if rows_ok is None else rows_ok.params(
                    index, g0, ls.rows, self.settings.nprobe, self.settings.ef_search)
                if rows_ok is not None and not flat:
                    want = rows_ok.widened(want, self.settings.filter_widen_max)
                s, r = index.search(q, min(want, ls.rows), params=params)
                keep = r[0] >= 0
                rows, scores = r[0][keep], s[0][keep]
                if not flat and self.settings.rerank > 0:
                    approx.append(len(all_rows))
            all_rows.append(rows.astype(np.int64) + g0)
            all_scores.append(scores)
        if not all_rows:
            return []
        if approx:
            all_scores = self._rerank(model, q[0], all_rows, all_scores, approx)
        rows = np.concatenate(all_rows)
        scores = np.concatenate(all_scores)
        top = np.lexsort((rows, -scores))[:depth]
        top = top[np.isfinite(scores[top])]
        return [(int(rows[i]), float(scores[i])) for i in top]

    def _rerank(self, model, q, all_rows, all_scores, approx):
        """Exact scores, from the stored vectors (memory-mapped parts), for the best
        ``rerank`` approximate candidates over all shards together; the other approximate
        candidates drop out. Reads stay at ``rerank`` vectors per model per query however
        many shards there are."""
        from pipeline.index.indextypes import gather

        cand_rows = np.concatenate([all_rows[i] for i in approx])
        cand_scores = np.concatenate([all_scores[i] for i in approx])
        best = set(cand_rows[np.argsort(-cand_scores)[:self.settings.rerank]].tolist())
        out = list(all_scores)
        for i in approx:
            rows = all_rows[i]
            keep = np.array([r in best for r in rows.tolist()], dtype=bool)
            scores = np.full(len(rows), -np.inf, dtype=np.float32)
            if keep.any():
                ls = self._shard_of(int(rows[0]))
                local = rows[keep] - ls.shard.first_global_row
                vecs = gather(ls.vector_parts(model), local, ls.shard.dims[model])
                scores[keep] = vecs @ q
            out[i] = scores
        # candidates that were not re-scored must not be returned
        return [np.where(np.isfinite(s), s, -np.inf) for s in out]

    def _brute_force(self, ls: _LoadedShard, model: str, q: np.ndarray, depth: int):
        rows, scores = [], []
        for start, part in ls.vector_parts(model):
            end = min(part.shape[0], ls.rows - start)
            if end <= 0:
                continue
            s = np.asarray(part[:end]) @ q
            take = np.argsort(-s)[:depth]
            rows.append(take + start)
            scores.append(s[take])
        rows, scores = np.concatenate(rows), np.concatenate(scores)
        top = np.argsort(-scores)[:depth]
        return rows[top], scores[top]

    # ---- fused ----------------------------------------------------------------------
    def check_k(self, k: int) -> None:
        if not 1 <= int(k) <= self.settings.max_k:
            raise UserError(f"k must be between 1 and {self.settings.max_k}, got {k}")

    def search_vectors(self, queries: dict[str, np.ndarray], k: int = 10,
                       exclude_listings=(), exact: bool = False, rows_ok=None,
                       combine: str = "max") -> list[ImageHit]:
        """Listing-level results (best image each), best first, for per-index query vectors.
        Models refused or absent are skipped (see ``warnings``). ``rows_ok`` (a
        pipeline.search.rowfilter.RowFilter) limits the rows searched, before the top k is
        cut. Several query vectors for a model: ``max`` keeps each image's best score over
        them; ``fuse`` searches each and fuses the lists (reciprocal ranks)."""
        self.check_k(k)
        self.refresh()
        use = {m: q for m, q in queries.items() if m in self.available}
        if not use:
            raise UserError("no usable index for this query (models asked: "
                            f"{', '.join(queries) or '-'}; " +
                            ("; ".join(self.warnings) or "the index store is empty") + ")")
        depth = max(self.settings.depth, k)
        extra = 0
        limit = self.total_rows() if rows_ok is None else rows_ok.count
        if limit == 0:
            return []
        while True:  # widen when excluded listings or one-per-listing ate the candidates
            per_model = self.ranked(use, depth + extra, exact, rows_ok, combine)
            ids = self.ids_many([r for ranked in per_model.values() for r, _ in ranked])
            hits = best_per_listing(fuse(per_model, ids.__getitem__, self.settings,
                                         exclude_listings), k)
            if len(hits) >= k or depth + extra >= limit:
                return hits
            extra = max(extra * 2, depth)

    def ranked(self, use: dict, depth: int, exact: bool = False, rows_ok=None,
               combine: str = "max") -> dict:
        """Each model's ranked (global_row, score) list for its query vector(s)."""
        from pipeline.search.rowfilter import exact_top

        queries = {m: np.ascontiguousarray(np.atleast_2d(np.asarray(q, dtype="float32")))
                   for m, q in use.items()}
        if combine == "fuse" and any(q.shape[0] > 1 for q in queries.values()):
            n = max(q.shape[0] for q in queries.values())
            lists = [self.ranked({m: q[i] for m, q in queries.items() if i < q.shape[0]},
                                 depth, exact, rows_ok) for i in range(n)]
            return {m: merge_ranked([one[m] for one in lists if m in one], self.settings.rrf_k,
                                    depth) for m in queries}
        if rows_ok is not None and (exact or rows_ok.count <= self.settings.filter_exact_rows):
            allowed = rows_ok.rows()
            return dict(zip(queries, self._map(
                lambda m: exact_top(self, m, queries[m], allowed, depth), list(queries))))
        return self._per_model(queries, depth, exact, rows_ok)


    def _per_model(self, use: dict, depth: int, exact: bool, rows_ok=None) -> dict:
        """Each model's ranked (global_row, score) list, the models in parallel."""
        queries = {m: np.ascontiguousarray(np.atleast_2d(np.asarray(q, dtype="float32")))
                   for m, q in use.items()}
        cross = [] if exact else [m for m in queries if m in self.cross]
        rest = [m for m in queries if m not in cross]
        out = dict(zip(rest, self._map(lambda m: self.model_search(m, queries[m], depth, exact,
                                                                   rows_ok), rest)))
        if cross:
            want = max(self.settings.rerank, depth)
            cands = self._map(lambda m: self._cross_candidates(m, queries[m], want, rows_ok), cross)
            if self.settings.share_candidates and len(cross) > 1:
                pool = np.unique(np.concatenate(cands))
                cands = [pool] * len(cross)
            pools = dict(zip(cross, cands))
            out.update(zip(cross, self._map(
                lambda m: self._exact_ranked(m, queries[m], pools[m], depth), cross)))
        return {m: out[m] for m in queries}


def _one_omp_thread() -> None:
    import faiss

    faiss.omp_set_num_threads(1)
