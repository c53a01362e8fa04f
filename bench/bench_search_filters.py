"""Filtered search and the same-item calibration (issue 19).

(1) Filtered search: the five image models at --rows rows (clustered random vectors, as in
bench_search.py; one listing per image), the cross-shard IVF-PQ search indexes built, then
p50/p95 of one fused query unfiltered and with filters keeping 50%, 5% and 0.1% of the
rows, by each path of pipeline/search/rowfilter.py (FAISS IDSelectorBitmap on the indexes;
exact scoring of the passing rows) and by the default choice (search.filter_exact_rows);
recall@10 against exact filtered search, and a check that k results came back and every one
passes. Also the per-query cost of building the row mask and the listing filter, measured
on arrays of 10M rows / 2M listings.

(2) Same item: a sandbox catalogue with generated near-duplicate groups, embedded by the
root profile's models (background removal + each image model), listing pairs scored by the
--same-as rule (lowest model score of their best image pair): precision/recall per threshold
and the chosen one; and --combine mean vs fuse on multi-image queries of the same groups.

  .venv/bin/python bench/bench_search_filters.py                       # 200K rows, 40 listings
  .venv/bin/python bench/bench_search_filters.py --rows 1000000 --queries 30
  .venv/bin/python bench/bench_search_filters.py --skip-filters --listings 80 --groups 10
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_search import FIVE, build_store, queries_for  # noqa: E402
from pipeline.index import searchindex as si  # noqa: E402
from pipeline.search import rowfilter  # noqa: E402
from pipeline.search.engine import SearchEngine  # noqa: E402
from pipeline.search.settings import SearchSettings  # noqa: E402


def p50_p95(xs):
    xs = sorted(xs)
    return 1000 * statistics.median(xs), 1000 * xs[int(0.95 * (len(xs) - 1))]


def filtered_case(base: Path, rows: int, nq: int, seed: int) -> None:
    import faiss

    shutil.rmtree(base, ignore_errors=True)
    t = time.perf_counter()
    _store, centres, _ = build_store(base, FIVE, rows, capacity=max(rows, 500_000),
                                     cluster_size=20, seed=seed)
    print(f"import {rows:,} rows x 5 models: {time.perf_counter() - t:.1f} s", flush=True)
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    bs = si.BuildSettings(template="IVF{nlist},PQ{pq}x4fs", min_rows=0, nlist=0,
                          train_rows=min(rows, 200_000), durable=False)
    t = time.perf_counter()
    for m in FIVE:
        si.update(base, m, bs, force=True)
    print(f"search indexes: {time.perf_counter() - t:.1f} s", flush=True)
    faiss.omp_set_num_threads(1)
    queries = queries_for(np.random.default_rng(seed + 1), centres, nq)
    rng = np.random.default_rng(seed + 2)
    print("\n| filter keeps | path | rows passing | p50 ms | p95 ms | recall@10 | k back, all pass |")
    print("|---|---|---|---|---|---|---|")
    for frac in (1.0, 0.5, 0.05, 0.001):
        keep = None
        for label, exact_rows, widen in (("default", None, None), ("selector", 0, None),
                                         ("selector, no widening", 0, 1), ("exact rows", 10**12, None)):
            if frac == 1.0 and label != "default":
                continue
            st = SearchSettings(index_type="IVF{nlist},PQ{pq}x4fs", index_min_rows=0, nprobe=64)
            if exact_rows is not None:
                st.filter_exact_rows = exact_rows
            if widen is not None:
                st.filter_widen_max = widen
            eng = SearchEngine(base, st)
            eng.refresh()
            assert set(eng.cross) == set(FIVE), eng.cross_warnings
            uniq, _inv = rowfilter.listing_rows(eng)
            if keep is None:
                keep = rng.random(len(uniq)) < frac
            rf = None if frac == 1.0 else rowfilter.for_listings(eng, lambda ids: keep)
            if label == "default":
                path = "unfiltered" if rf is None else (
                    "exact rows" if rf.count <= st.filter_exact_rows else "selector")
            else:
                path = label
            eng.search_vectors(queries[0], 10, rows_ok=rf)  # warm
            lat, recall, ok = [], [], True
            for q in queries:
                t = time.perf_counter()
                hits = eng.search_vectors(q, 10, rows_ok=rf)
                lat.append(time.perf_counter() - t)
                got = [h.listing_id for h in hits]
                ref = [h.listing_id for h in eng.search_vectors(q, 10, rows_ok=rf, exact=True)] \
                    if len(recall) < 10 else None
                if ref is not None:
                    recall.append(len(set(got) & set(ref)) / max(len(ref), 1))
                passing = rf.count if rf is not None else rows
                allowed = set(uniq[keep].tolist()) if rf is not None else None
                ok &= len(got) == min(10, passing) and (allowed is None or set(got) <= allowed)
            a, b = p50_p95(lat)
            n_pass = rf.count if rf is not None else rows
            print(f"| {frac:.1%} | {path}{' (default)' if label == 'default' and rf else ''} | "
                  f"{n_pass:,} | {a:.2f} | {b:.2f} | {np.mean(recall):.3f} | {'yes' if ok else 'NO'} |",
                  flush=True)
            eng.close()


def mask_cost(rows: int = 10_000_000, listings: int = 2_000_000) -> None:
    """Per-query cost of a filter at 10M rows: the listing filter over the ListingTable
    arrays, the row mask (a gather), and one shard's bitmap for the FAISS selector."""
    from pipeline.search.listing_table import ListingTable
    from pipeline.search.request import Filters

    rng = np.random.default_rng(0)
    inv = np.sort(rng.integers(0, listings, rows)).astype(np.int32)
    table = ListingTable(np.arange(listings), rng.uniform(2, 20000, listings),
                         rng.choice(["active", "sold_out", None], listings), rng.integers(0, 100, listings),
                         rng.integers(0, 5000, listings), rng.uniform(0, 1e9, listings))
    f = Filters(min_price=100, max_price=900, state="active", since=2e8)
    t = time.perf_counter()
    for _ in range(5):
        ok = table.passes(f, rng.integers(0, 100, 10))
    passes_ms = (time.perf_counter() - t) / 5 * 1000
    t = time.perf_counter()
    for _ in range(5):
        mask = ok[inv]
    gather_ms = (time.perf_counter() - t) / 5 * 1000
    t = time.perf_counter()
    for _ in range(5):
        np.packbits(mask, bitorder="little")
    pack_ms = (time.perf_counter() - t) / 5 * 1000
    print(f"\nper-query filter cost at {rows:,} rows / {listings:,} listings: listing filter "
          f"{passes_ms:.1f} ms, row mask {gather_ms:.1f} ms, selector bitmap(s) {pack_ms:.1f} ms "
          f"(kept {mask.mean():.1%})", flush=True)


def calibration(listings: int, groups: int, seed: int, profile: str = "test") -> None:
    from pipeline.core.root import Root
    from pipeline.sandbox.catalogue import Catalogue
    from pipeline.search import calibrate as cal
    from pipeline.search.encoders import load_model_set, load_remover

    os.environ.setdefault("U2NET_HOME", tempfile.mkdtemp(prefix="bench-u2net-"))
    path = Path(tempfile.mkdtemp(prefix="bench-same-")) / "root"
    path.mkdir()
    root_profile = "production" if profile == "production" else "sandbox"
    (path / "imageselector.toml").write_text(
        f'[root]\nprofile = "{root_profile}"\n[models]\nprofile = "{profile}"\ndevice = "cpu"\n')
    root = Root(path).ensure()
    cat = Catalogue(listings=listings, seed=seed, similar_groups=groups, group_size=3,
                    epoch=1_700_000_000)
    ms, rm = load_model_set(root), load_remover(root)
    t = time.perf_counter()
    pictures = cal.build_catalogue_index(root, cat, ms, rm)
    print(f"\ncalibration catalogue: {listings} listings, {groups} near-duplicate groups of 3, "
          f"{len(pictures)} pictures embedded by the {profile}-profile models in "
          f"{time.perf_counter() - t:.0f} s", flush=True)
    eng = SearchEngine.for_root(root)
    eng.refresh()
    models = [m for m in eng.available if not m.endswith("_text")]
    scores = cal.listing_pair_scores(eng, models)
    truth = cal.truth_pairs(cat)
    curve = cal.same_item_curve(scores, truth)
    best = cal.choose_threshold(curve)
    print("| threshold | precision | recall | pairs predicted / true |")
    print("|---|---|---|---|")
    for r in curve:
        if round(r["threshold"] * 100) % 5 == 0 or r is best:
            print(f"| {r['threshold']:.2f}{' (chosen)' if r is best else ''} | {r['precision']:.3f} | "
                  f"{r['recall']:.3f} | {r['predicted']} / {r['true']} |")
    true_s = sorted(scores[p] for p in truth)
    false_s = sorted((s for p, s in scores.items() if p not in truth), reverse=True)
    print(f"true pairs' scores: min {true_s[0]:.4f} median {statistics.median(true_s):.4f}; "
          f"other pairs: max {false_s[0]:.4f} median {statistics.median(false_s):.4f}", flush=True)
    rep = cal.combine_eval(eng, cat, ms, rm, pictures)
    print("--combine on multi-image queries (all group members but one; is the held-out one found):")
    for how, r in rep.items():
        print(f"  {how}: {r}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--listings", type=int, default=40)
    ap.add_argument("--groups", type=int, default=5)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--models-profile", default="test",
                    help="models for the calibration: test (offline), or production (the real "
                         "weights, where they are installed): the threshold to configure")
    ap.add_argument("--dir", default=None, help="scratch folder (default: a temp folder)")
    ap.add_argument("--skip-filters", action="store_true")
    ap.add_argument("--skip-calibration", action="store_true")
    args = ap.parse_args()
    print(f"cpus {os.cpu_count()}, load {os.getloadavg()[0]:.1f}", flush=True)
    if not args.skip_filters:
        base = Path(args.dir or tempfile.mkdtemp(prefix="bench-filters-")) / "embeddings"
        try:
            filtered_case(base, args.rows, args.queries, args.seed)
        finally:
            shutil.rmtree(base, ignore_errors=True)
        mask_cost()
    if not args.skip_calibration:
        calibration(args.listings, args.groups, args.seed, args.models_profile)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
