"""Benchmark: adopting an original root (issue 10). Prints the time of each phase, the rates
that drive the dry run's estimate, the extra disk, and the projection for 1 million and for
the operator's 5.3 million images. Never run as a test.

Two generated originals (tests/original_support.py):
  A  --images images with the model dims divided by --dim-div (the DB, tars, primary tars
     and index bookkeeping at scale; vectors small), JPEGs of --jpeg-px pixels;
  B  --vec-rows rows with the real dims (5,120 floats a row): the vector rate (hash every
     row of every model; finalized shards' files then become the store's parts by hard link).

    .venv/bin/python bench/bench_adopt.py [--images 100000] [--vec-rows 20000] [--dir /tmp/bench-adopt]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from original_support import DIMS, ORDER, Spec, build_original, root_config  # noqa: E402

from pipeline.adopt import adopt  # noqa: E402
from pipeline.core.root import Root  # noqa: E402


def tree_bytes(path: Path, exclude_inodes: set | None = None) -> tuple[int, int]:
    """(bytes of files, bytes of files not sharing an inode with ``exclude_inodes``)."""
    total = own = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            st = os.lstat(os.path.join(dirpath, f))
            total += st.st_size
            if not exclude_inodes or (st.st_dev, st.st_ino) not in exclude_inodes:
                own += st.st_size
    return total, own


def inodes(path: Path) -> set:
    out = set()
    for dirpath, _, files in os.walk(path):
        for f in files:
            st = os.lstat(os.path.join(dirpath, f))
            out.add((st.st_dev, st.st_ino))
    return out


def run_case(base: Path, name: str, spec: Spec, layout=None) -> dict:
    orig = base / f"{name}-orig"
    root_path = base / f"{name}-root"
    shutil.rmtree(orig, ignore_errors=True)
    shutil.rmtree(root_path, ignore_errors=True)
    t0 = time.perf_counter()
    build_original(orig, spec)
    built = time.perf_counter() - t0
    root_config(root_path, spec, **{"adopt.batch_rows": 20000, "adopt.threads": 4,
                                    "adopt.tar_sample": 20, "index.fsync": True})
    root = Root(root_path).ensure()
    dry = adopt(root, orig, dry_run=True, layout=layout)
    t0 = time.perf_counter()
    report = adopt(root, orig, layout=layout)
    took = time.perf_counter() - t0
    assert report.ok, report.bad_inputs
    orig_bytes, _ = tree_bytes(orig)
    total, own = tree_bytes(root_path, inodes(orig))
    t0 = time.perf_counter()
    again = adopt(root, orig, layout=layout)
    second = time.perf_counter() - t0
    return {"name": name, "built_s": built, "took_s": took, "timings": report.timings,
            "dry_s": dry.finished - dry.started, "dry_estimate": dry.estimate,
            "second_s": second, "second_ok": again.ok, "orig_bytes": orig_bytes,
            "root_bytes": total, "extra_bytes": own, "report": report}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=100_000)
    ap.add_argument("--vec-rows", type=int, default=20_000)
    ap.add_argument("--dim-div", type=int, default=16)
    ap.add_argument("--jpeg-px", type=int, default=96)
    ap.add_argument("--dir", default="/tmp/bench-adopt")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    base = Path(args.dir)
    base.mkdir(parents=True, exist_ok=True)
    n = args.images
    small = {m: max(8, d // args.dim_div) for m, d in DIMS.items()}
    extra = max(10, n // 100)
    spec_a = Spec(listings=int(n / 3.2) + 10, shard_rows=max(1000, n // 4), per_tar=max(100, n // 40),
                  primary_per_tar=max(100, n // 40), embedded=n, downloaded=extra, pending=extra,
                  queued=extra, dead=extra, twins=2, dims=small, jpeg_px=args.jpeg_px,
                  jpeg_pool=64, backups=False)
    a = run_case(base, "A", spec_a, layout=(ORDER, small))
    v = args.vec_rows
    spec_b = Spec(listings=int(v / 3.2) + 10, shard_rows=max(1000, v // 2), per_tar=max(100, v // 4),
                  primary_per_tar=max(100, v // 4), embedded=v, downloaded=4, pending=4, queued=4,
                  dead=4, twins=1, jpeg_px=16, jpeg_pool=8, backups=False)
    b = run_case(base, "B", spec_b)

    row_floats_a = sum(small.values())
    tar_bytes = a["dry_estimate"]["tar_bytes"]
    db_rows = a["dry_estimate"]["db_rows"]
    ta = a["timings"]
    vec_bytes_b = v * sum(DIMS.values()) * 4
    rate_vec = vec_bytes_b / b["timings"]["shards"]
    rate_tars = tar_bytes / (ta["tars"] + ta["primary"])
    rate_db = db_rows / (ta["tables"] + ta["images"])
    shard_row_cost_a = ta["shards"] / n            # bookkeeping of a row with tiny vectors
    print(f"machine: {os.cpu_count()} cores; figures taken while other agents ran")
    for case in (a, b):
        print(f"\ncase {case['name']}: built in {case['built_s']:.1f} s; adoption {case['took_s']:.1f} s "
              f"(dry run {case['dry_s']:.1f} s, second adoption {case['second_s']:.1f} s, ok={case['second_ok']})")
        print("  phases: " + ", ".join(f"{k} {v:.2f} s" for k, v in case["timings"].items()))
        print(f"  original {case['orig_bytes'] / 1e6:.1f} MB; new root {case['root_bytes'] / 1e6:.1f} MB "
              f"of which {case['extra_bytes'] / 1e6:.1f} MB not shared with the original (extra disk)")
        print(f"  dry-run estimate: {case['dry_estimate']}")
    # extra disk beyond the vectors: finalized shards are hard links (0 bytes); the active
    # shard (if any) costs its vectors twice (copied parts + its appendable flat files)
    active_a = n % spec_a.shard_rows
    per_img_other = (a["extra_bytes"] - 2 * active_a * row_floats_a * 4) / n
    for case, spec, floats in ((a, spec_a, row_floats_a), (b, spec_b, sum(DIMS.values()))):
        vec_total = spec.embedded * floats * 4
        print(f"case {case['name']}: vectors {vec_total / 1e6:.1f} MB; files linked "
              f"{case['report'].adopted.get('files', {}).get('linked', 0)}, copied "
              f"{case['report'].adopted.get('files', {}).get('copied', 0)}; extra disk "
              f"{case['extra_bytes'] / 1e6:.1f} MB = {case['extra_bytes'] / vec_total:.3f} x the vectors")
    print(f"\nrates: vectors {rate_vec / 1e6:.1f} MB/s (hash every row; finalized shards linked, real dims, B); tars "
          f"{rate_tars / 1e6:.1f} MB/s incl. walk, sha256, sample decode, links (A); DB "
          f"{rate_db:,.0f} rows/s (A: all tables and image rows)")
    print(f"shard bookkeeping per row with tiny vectors (A): {shard_row_cost_a * 1e6:.1f} us")
    print(f"extra disk beyond the vectors, per image (A): {per_img_other:.0f} B")
    for millions in (1.0, 5.3):
        imgs = millions * 1e6
        row_bytes = sum(DIMS.values()) * 4
        vec = imgs * row_bytes
        tars = imgs * 50_000   # assumption: 50 KB per bg-removed JPEG
        rows = imgs * (db_rows / (n + 4 * extra))
        cpu = vec / rate_vec + tars / rate_tars + rows / rate_db + imgs * shard_row_cost_a
        hdd = vec / rate_vec + tars / min(rate_tars, 150e6) + rows / rate_db + imgs * shard_row_cost_a
        active = (imgs % 500_000) * row_bytes
        rest = imgs * per_img_other
        print(f"projection {millions:g}M images: {cpu / 60:.0f} min CPU-bound as here (vectors "
              f"{vec / rate_vec / 60:.0f} min, tars at 50 KB/image {tars / rate_tars / 60:.0f} min, "
              f"DB {rows / rate_db / 60:.0f} min); {hdd / 60:.0f} min with the tars read from a "
              f"150 MB/s disk")
        print(f"  extra disk: {(2 * active + rest) / 1e9:.1f} GB (the active shard copied as parts "
              f"and as its appendable flat files 2 x {active / 1e9:.1f} GB, the rest "
              f"{rest / 1e9:.1f} GB; finalized shards hard links: 0); across file systems "
              f"+{(vec - active) / 1e9:.0f} GB; with the vectors copied into .npy parts (before): "
              f"{(vec + active + rest) / 1e9:.0f} GB")
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
