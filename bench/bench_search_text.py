"""Benchmark: the text query's encoding cost, with the full-size CLIP text towers at random
init (the same compute as the real weights, which cannot be downloaded here). The fused
search time for given vectors is in bench/bench_search.py; a text query costs both.

    .venv/bin/python bench/bench_search_text.py [--queries 20]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--queries", type=int, default=20)
    args = ap.parse_args()
    from pipeline.models.loading import ModelSet
    from pipeline.models.registry import ModelSettings
    from pipeline.search.encoders import encode_text

    models = ["clip_vitb32", "clip_vitb32_text", "clip_vitl14", "clip_vitl14_text"]
    model_set = ModelSet(ModelSettings(profile="random", device="cpu"))
    t0 = time.perf_counter()
    encode_text("warm-up query", model_set, models)
    load_s = time.perf_counter() - t0
    texts = [f"mid-century walnut sideboard with brass handles no. {i}" for i in range(args.queries)]
    per_tower = {"clip_vitb32": [], "clip_vitl14": []}
    total = []
    for text in texts:
        t0 = time.perf_counter()
        for base in per_tower:
            t1 = time.perf_counter()
            model_set.get(base).embed_texts([text])
            per_tower[base].append((time.perf_counter() - t1) * 1000)
        total.append((time.perf_counter() - t0) * 1000)
    import torch

    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"load both towers + first query: {load_s:.1f} s (once per process)")
    for base, ms in per_tower.items():
        print(f"{base} text tower: p50 {statistics.median(ms):.1f} ms, max {max(ms):.1f} ms")
    print(f"both towers (a text query's encoding): p50 {statistics.median(total):.1f} ms, "
          f"p95 {sorted(total)[int(len(total) * 0.95) - 1]:.1f} ms (n={len(total)})")


if __name__ == "__main__":
    main()
