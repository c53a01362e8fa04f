"""Search filters as row selectors (issue 19): the listing filter becomes a boolean mask over
the index's global rows, and each model's search sees only those rows.

How a filtered query is searched (SearchEngine.search_vectors with ``rows``):
- few rows pass (at most ``search.filter_exact_rows``): every passing row is scored exactly
  from the stored vectors (no index; exact, and cheap because the rows are few);
- otherwise each index is searched with a FAISS ``IDSelectorBitmap`` over its rows (the
  cross-shard IVF index: global rows; a shard's index: its own rows), so the top k is cut
  among passing rows only; an IVF index probes nprobe / (fraction passing) lists (up to all
  of them), so about as many passing rows are scanned as an unfiltered search scans rows;
  the candidates are then re-scored exactly as usual.
  With a selector, min(1/fraction, ``search.filter_widen_max``) times more candidates are
  re-scored exactly: the compressed codes order the passing near-ties badly (recall at 5%
  passing was 0.33 with the plain depth), and exact scores of a few hundred more rows are cheap.
k results come back whenever k passing listings exist (the engine widens its depth when
one-per-listing eats candidates, up to the number of passing rows).

The row -> listing mapping is built once per loaded index generation (np.unique of the ids);
a filter then costs a gather over the rows (bench/bench_search_filters.py)."""
from __future__ import annotations

import numpy as np


class RowFilter:
    def __init__(self, mask: np.ndarray):
        self.mask = np.asarray(mask, dtype=bool)
        self.count = int(self.mask.sum())
        self._rows = None
        self._params: dict = {}

    def widened(self, want: int, max_factor: float) -> int:
        """How many candidates to re-score exactly when this filter selects the rows: ``want``
        times 1/fraction passing, at most ``max_factor`` times, never more than pass."""
        frac = self.count / max(len(self.mask), 1)
        factor = min(float(max_factor), 1.0 / max(frac, 1e-9))
        return int(max(want, min(self.count, np.ceil(want * max(factor, 1.0)))))

    def rows(self) -> np.ndarray:
        """The passing global rows, ascending."""
        if self._rows is None:
            self._rows = np.flatnonzero(self.mask).astype(np.int64)
        return self._rows

    def params(self, index, start: int, n: int, nprobe: int, ef_search: int):
        """FAISS search parameters selecting the passing rows among ``start .. start+n-1``
        (the index's ids 0..n-1). Cached with the bitmap they point into (which must stay
        alive as long as they are used)."""
        import faiss

        key = (id(index), start, n)
        got = self._params.get(key)
        if got is None:
            part = self.mask[start:start + n]
            if len(part) < n:
                part = np.concatenate([part, np.zeros(n - len(part), dtype=bool)])
            bitmap = np.packbits(part, bitorder="little")
            sel = faiss.IDSelectorBitmap(n, faiss.swig_ptr(bitmap))
            ivf = faiss.try_extract_index_ivf(index)
            if ivf is not None:
                # probe 1/fraction times more lists (up to all): the passing rows scanned stay
                # about as many as an unfiltered search scans, so the top k is still found
                frac = max(float(part.mean()) if n else 1.0, 1e-9)
                probe = int(min(ivf.nlist, max(nprobe, np.ceil(nprobe / frac))))
                params = faiss.SearchParametersIVF(sel=sel, nprobe=probe)
            elif "HNSW" in type(index).__name__:
                params = faiss.SearchParametersHNSW(sel=sel, efSearch=ef_search)
            else:
                params = faiss.SearchParameters(sel=sel)
            got = self._params[key] = (params, sel, bitmap)
        return got[0]


def listing_rows(engine) -> tuple[np.ndarray, np.ndarray]:
    """(sorted listing ids, per global row the index into them), cached per engine
    generation. Rows not loaded map to listing id -1."""
    cached = getattr(engine, "_listing_rows", None)
    if cached is not None and cached[0] == engine.generation:
        return cached[1], cached[2]
    total = max((ls.shard.first_global_row + ls.rows for ls in engine.loaded), default=0)
    lids = np.full(total, -1, dtype=np.int64)
    for ls in engine.loaded:
        g0 = ls.shard.first_global_row
        lids[g0:g0 + ls.rows] = ls.ids[:ls.rows, 0]
    uniq, inv = np.unique(lids, return_inverse=True)
    inv = inv.astype(np.int32 if len(uniq) < 2**31 else np.int64)
    engine._listing_rows = (engine.generation, uniq, inv)
    return uniq, inv


def for_listings(engine, listing_ok) -> RowFilter | None:
    """A RowFilter from a callable: sorted listing ids -> bool per listing. None when every
    row passes (an unfiltered search is cheaper)."""
    uniq, inv = listing_rows(engine)
    ok = np.asarray(listing_ok(uniq), dtype=bool) & (uniq >= 0)
    if ok.all():
        return None
    return RowFilter(ok[inv])


def exact_top(engine, model: str, q: np.ndarray, rows: np.ndarray, depth: int,
              chunk: int = 262_144) -> list[tuple[int, float]]:
    """The best ``depth`` of ``rows`` by exact score, in chunks (bounded memory however many
    rows pass)."""
    if len(rows) <= chunk:
        return engine._exact_ranked(model, q, rows, depth)
    best: list[tuple[int, float]] = []
    for lo in range(0, len(rows), chunk):
        best.extend(engine._exact_ranked(model, q, rows[lo:lo + chunk], depth))
    best.sort(key=lambda x: (-x[1], x[0]))
    return best[:depth]
