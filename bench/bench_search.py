"""Ensemble search benchmark (issue 7): synthetic clustered vectors through the real index
store and search engine.

Vectors: unit centres, one per ``cluster_size`` rows, and members = centre + noise of the
same norm (member-centre cosine ~0.7, member-member ~0.5): loose clusters full of near-ties,
so approximate indexes are really tested. Queries are fresh members of random clusters.

  (a) one 768-d model at --rows-a rows (shards of 500,000)
  (b) the five image models (512, 768, 768, 1024, 768) at --rows-b rows (one full shard)

For each index configuration (exact flat, IVF+SQ8, IVF+PQ with exact re-ranking from the
memory-mapped parts) it prints build time, bytes per vector of the index files, p50/p95 of
one fused query (vectors given: no encoding) and recall@10 against exact search measured in
the same run, then projects memory and p50 to 10 million images in shards of 500,000.

  .venv/bin/python bench/bench_search.py                  # full: ~10 min on 2 busy cores
  .venv/bin/python bench/bench_search.py --rows-a 100000 --rows-b 20000 --queries 20
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.indexstore.store import IndexStore  # noqa: E402
from pipeline.search import SearchEngine, SearchSettings  # noqa: E402

FIVE = {"clip_vitb32": 512, "clip_vitl14": 768, "dinov2_base": 768, "dinov2_large": 1024,
        "dinov3_base": 768}


def clustered(rng, centres: np.ndarray, n: int, noise: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    which = rng.integers(0, len(centres), n)
    d = centres.shape[1]
    x = centres[which] + rng.standard_normal((n, d), dtype=np.float32) * (noise / np.sqrt(d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), which


def build_store(base: Path, models: dict[str, int], rows: int, capacity: int, cluster_size: int,
                seed: int, batch: int = 50_000):
    """Import `rows` clustered rows (fsync off: a scratch build); returns the centres."""
    rng = np.random.default_rng(seed)
    centres = {}
    for m, d in models.items():
        c = rng.standard_normal((max(1, rows // cluster_size), d), dtype=np.float32)
        centres[m] = c / np.linalg.norm(c, axis=1, keepdims=True)
    store = IndexStore(base, capacity=capacity, order=list(models), dims=models, durable=False)
    store.open()
    t = time.perf_counter()
    for b, lo in enumerate(range(0, rows, batch)):
        n = min(batch, rows - lo)
        ids = np.stack([np.arange(lo, lo + n, dtype=np.int64) + 1, np.ones(n, np.int64)], 1)
        # the same cluster for one image across models, like real near-duplicates
        which = rng.integers(0, len(next(iter(centres.values()))), n)
        vecs = {}
        for m, d in models.items():
            x = centres[m][which] + rng.standard_normal((n, d), dtype=np.float32) / np.sqrt(d)
            vecs[m] = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
        store.import_batch(b + 1, ids, vecs, "bench")
    return store, centres, time.perf_counter() - t


def queries_for(rng, centres: dict[str, np.ndarray], n: int) -> list[dict[str, np.ndarray]]:
    out = []
    k = len(next(iter(centres.values())))
    for _ in range(n):
        c = int(rng.integers(0, k))
        q = {}
        for m, cc in centres.items():
            x = cc[c] + rng.standard_normal(cc.shape[1], dtype=np.float32) / np.sqrt(cc.shape[1])
            q[m] = (x / np.linalg.norm(x)).astype(np.float32)
        out.append(q)
    return out


def index_bytes(store: IndexStore, model: str) -> int:
    return sum(s.faiss_path(model).stat().st_size for s in store.shards)


def measure(base: Path, settings: SearchSettings, queries, k: int = 10):
    engine = SearchEngine(base, settings)
    t = time.perf_counter()
    engine.refresh()
    load_s = time.perf_counter() - t
    engine.search_vectors(queries[0], k)  # warm
    lat, recall = [], []
    for q in queries:
        t = time.perf_counter()
        hits = engine.search_vectors(q, k)
        lat.append(time.perf_counter() - t)
        exact = engine.search_vectors(q, k, exact=True)
        a, e = {h.listing_id for h in hits}, {h.listing_id for h in exact}
        recall.append(len(a & e) / len(e))
    lat.sort()
    return {"load_s": load_s, "p50_ms": 1000 * statistics.median(lat),
            "p95_ms": 1000 * lat[int(0.95 * (len(lat) - 1))], "recall": float(np.mean(recall)),
            "engine": engine}


def run_case(name: str, base: Path, models: dict[str, int], rows: int, capacity: int,
             configs: list[tuple[str, str, dict]], nq: int, cluster_size: int, seed: int):
    print(f"\n== ({name}) {len(models)} model(s) {list(models.values())} at {rows:,} rows, "
          f"shards of {capacity:,}, clusters of ~{cluster_size}")
    shutil.rmtree(base, ignore_errors=True)
    store, centres, import_s = build_store(base, models, rows, capacity, cluster_size, seed)
    print(f"import (parts + flat files): {import_s:.1f} s")
    queries = queries_for(np.random.default_rng(seed + 1), centres, nq)
    results = []
    for label, kind_of, extra in configs:
        t = time.perf_counter()
        kind = kind_of(768)
        if kind != "Flat":
            import faiss

            faiss.omp_set_num_threads(os.cpu_count() or 1)   # build on every core
            IndexStore(base, index_types={m: kind_of(d) for m, d in models.items()},
                       train_rows=extra.pop("train", 40_000), durable=False).rebuild(force=True)
        build_s = time.perf_counter() - t
        per_vec = sum(index_bytes(store, m) for m in models) / rows
        settings = SearchSettings(depth=100, omp_threads=1, **extra)
        r = measure(base, settings, queries)
        r.update(label=label, kind=kind, build_s=build_s, bytes_per_image=per_vec,
                 per_model={m: index_bytes(store, m) / rows for m in models})
        results.append(r)
        print(f"{label:<34} build {build_s:6.1f} s  {per_vec:8.0f} B/image in index files  "
              f"p50 {r['p50_ms']:7.2f} ms  p95 {r['p95_ms']:7.2f} ms  recall@10 {r['recall']:.3f}")
    return store, results


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scratch", default="/tmp/bench_search")
    ap.add_argument("--rows-a", type=int, default=1_000_000)
    ap.add_argument("--rows-b", type=int, default=200_000)
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--cluster-size", type=int, default=50)
    ap.add_argument("--nlist", type=int, default=1024)
    ap.add_argument("--rerank", type=int, default=200)
    ap.add_argument("--nprobe", type=int, default=32)
    ap.add_argument("--skip-a", action="store_true")
    ap.add_argument("--skip-b", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    scratch = Path(args.scratch)
    nl, npr = args.nlist, args.nprobe

    def configs(_dims=None):
        # 4-bit fast-scan PQ, 4 dims per code: d/8 bytes per vector (96 B at 768-d); its
        # 16-centroid sub-quantizers train in seconds where 8-bit ones took minutes here
        return [("exact flat (baseline)", lambda d: "Flat", {}),
                (f"IVF{nl},SQ8 nprobe {npr}", lambda d: f"IVF{nl},SQ8", {"nprobe": npr}),
                (f"IVF{nl},PQ(d/4)x4fs np{npr} rerank {args.rerank}",
                 lambda d: f"IVF{nl},PQ{d // 4}x4fs", {"nprobe": npr, "rerank": args.rerank})]

    out = {}
    if not args.skip_a:
        _, out["a"] = run_case("a", scratch / "a", {"dinov2_base": 768}, args.rows_a,
                               min(500_000, args.rows_a), configs(768), args.queries,
                               args.cluster_size, 1)
        shutil.rmtree(scratch / "a", ignore_errors=True)
    if not args.skip_b:
        _, out["b"] = run_case("b", scratch / "b", FIVE, args.rows_b, args.rows_b, configs(768),
                               args.queries, args.cluster_size, 2)
        shutil.rmtree(scratch / "b", ignore_errors=True)
    print(f"\npeak RSS of this process: {rss_mb():,.0f} MB")
    project(out, args)
    return 0


def project(out: dict, args) -> None:
    """10 million images in shards of 500,000, five image models."""
    print("\n== projection: 10,000,000 images, 20 shards of 500,000, five image models")
    if "a" in out:
        shards_a = max(1, args.rows_a // 500_000)
        rows_per_shard = args.rows_a / shards_a
        for r in out["a"]:
            # time of one (shard, 768-d model) search; a flat scan is linear in its rows, an
            # IVF search probes a fixed number of lists. The five models' dims sum to 5 x 768.
            per_shard = r["p50_ms"] / shards_a
            if r["kind"] == "Flat":
                per_shard *= 500_000 / rows_per_shard
            p50_10m = per_shard * 20 * 5
            mem = r["bytes_per_image"] * 5 * 10_000_000 / 1e9
            print(f"{r['label']:<34} memory {mem:6.1f} GB (index files, five models)  "
                  f"p50 ~{p50_10m:7.1f} ms single-thread")
    print("(flat: memory-mapped, so the 'memory' is page cache the OS must hold to stay fast;"
          " IVF-PQ + rerank: codes in RAM, rerank reads `rerank` vectors per model from the parts)")


if __name__ == "__main__":
    sys.exit(main())
