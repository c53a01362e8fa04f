"""Import time of a 10,000-image batch into the index store (issue 6, Benchmark).

Builds an active shard of --rows-before rows (fsync off for the set-up only), then imports
batches with fsync on and a DB of the same size, and prints the time of each step:
hashing, the durable append (parts + manifest line, fsynced), the DB commit, and the
derived files (seven flat FAISS files and image_index.json extended in place).

  .venv/bin/python bench/bench_index.py --scratch /tmp/bench_index            # full size
  .venv/bin/python bench/bench_index.py --rows-before 40000 --scale-dims 0.25  # quick

Shard 0 gets capacity rows-before + 3 batches, so three imports land with the active shard
at >= rows-before rows; shard 1 is then created with room for 1.5 batches, so the next
import fills it and the one after straddles shards 1 and 2 (the straddle's cost does not
depend on the capacity).
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.core import db as dbm  # noqa: E402
from pipeline.index.store import IndexStore, registry_layout  # noqa: E402


def batch(rng, start: int, n: int, order, dims):
    ids = np.stack([np.arange(start, start + n, dtype=np.int64), np.ones(n, np.int64)], 1)
    vecs = {}
    for m in order:
        v = rng.standard_normal((n, dims[m]), dtype=np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        vecs[m] = v
    return ids, vecs


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scratch", default="/tmp/bench_index")
    ap.add_argument("--rows-before", type=int, default=490_000)
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--scale-dims", type=float, default=1.0, help="multiply the registry dims")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    scratch = Path(args.scratch)
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    order, dims = registry_layout()
    dims = {m: max(8, int(d * args.scale_dims)) for m, d in dims.items()}
    rng = np.random.default_rng(0)
    n, before = args.batch, args.rows_before
    print(f"dims {dims} ({sum(dims.values())} floats/row), batch {n}, active shard at {before:,}")

    # ---- set-up: an active shard of `before` rows, and a DB of the same size -------------
    t = time.perf_counter()
    setup = IndexStore(scratch / "embeddings", capacity=before + 3 * n, order=order, dims=dims,
                       durable=False)
    setup.open()
    done = 0
    ids, vecs = batch(rng, 0, n, order, dims)
    while done < before:
        take = min(n, before - done)
        setup.import_batch(done // n + 1, ids[:take] + [done, 0], {m: v[:take] for m, v in vecs.items()}, "fp")
        done += take
    conn = dbm.connect(scratch / "bench.db")
    total_images = before + 6 * n
    with dbm.transaction(conn):
        conn.executemany("INSERT INTO image_status(listing_id, image_id, state, shard, shard_row, "
                         "global_row, updated_at) VALUES (?, 1, 'embedded', 0, ?, ?, 0)",
                         ((i, i, i) for i in range(before)))
        conn.executemany("INSERT INTO image_status(listing_id, image_id, state, batch_id, updated_at) "
                         "VALUES (?, 1, 'batched', ?, 0)",
                         ((i, 1000 + (i - before) // n) for i in range(before, total_images)))
    setup_s = time.perf_counter() - t
    print(f"set-up {setup_s:.1f} s ({before:,} rows, disk {du(scratch) / 1e9:.1f} GB)")

    store = IndexStore(scratch / "embeddings", capacity=before + 3 * n, durable=True)
    store.open(conn)
    runs = []
    for k in range(6):
        if k == 3:
            store.capacity = int(1.5 * n)   # shard 1 gets room for 1.5 batches
        start = before + k * n
        ids, vecs = batch(rng, start, n, order, dims)
        res = store.import_batch(1000 + k, ids, vecs, "fp", conn)
        tm = res.timings
        durable = tm["prepare_s"] + tm["hash_s"] + tm["parts_commit_s"] + tm["db_s"]
        label = (f"active shard at {store.shards[0].rows - n:,}" if k < 3 else
                 "straddles two shards" if len(res.slices) > 1 else
                 f"shard {res.slices[0][0]} at {res.slices[0][1]:,}")
        runs.append((label, durable, tm))
        print(f"import {k + 1}: {label:<28} durable+DB {durable:.2f} s  (prepare {tm['prepare_s']:.2f}, "
              f"hash {tm['hash_s']:.2f}, parts+commit {tm['parts_commit_s']:.2f}, "
              f"DB {tm['db_s']:.2f})  derived {tm['derived_s']:.2f} s  total {tm['total_s']:.2f} s  "
              f"slices {res.slices}")
    same = [r[1] for r in runs[:3]]
    print(f"in-shard durable+DB median {statistics.median(same):.2f} s; "
          f"total median {statistics.median([r[2]['total_s'] for r in runs[:3]]):.2f} s")
    conn.close()
    if not args.keep:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


if __name__ == "__main__":
    sys.exit(main())
