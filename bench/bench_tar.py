"""Tar throughput: images archived per second (write, verify, DB commit, loose files
removed), and the time to read one image by its offset.

    .venv/bin/python bench/bench_tar.py [--images 20000] [--per-tar 5000] [--kb 45]
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=20000)
    ap.add_argument("--per-tar", type=int, default=5000)
    ap.add_argument("--kb", type=int, default=45, help="average image size (bg-removed JPEG q90 ~45 KB)")
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    from pipeline.core.db import connect, transaction
    from pipeline.core.root import Root
    from pipeline.stages.archive.tarmembers import read_member_at
    from pipeline.stages.archive.tars import Archiver

    base = Path(args.dir or tempfile.mkdtemp(prefix="bench_tar_"))
    root = Root(base / "root").ensure()
    root.config_path.write_text(f"[archive]\nimages_per_tar = {args.per_tar}\n")
    root = Root(root.path).ensure()
    conn = connect(root.db_path)
    rng = random.Random(1)
    pool = [os.urandom(args.kb * 1024 + rng.randint(-5000, 5000)) for _ in range(64)]
    with transaction(conn):
        for g in range(args.images):
            lid, iid = 100000 + g // 4, g
            conn.execute("INSERT INTO image_status(listing_id, image_id, state, global_row, updated_at) "
                         "VALUES (?,?,?,?,?)", (lid, iid, "embedded", g, time.time()))
            (root.bgremoved_dir / f"{lid}_{iid}.jpg").write_bytes(pool[g % 64])
    os.sync()
    arch = Archiver(root, conn)
    t = time.time()
    names = [arch.write(p) for p in arch.next_plans()]
    dt = time.time() - t
    total = sum((root.tars_dir / n).stat().st_size for n in names)
    rows = conn.execute("SELECT tar_name, tar_offset, listing_id, image_id FROM image_status "
                        "ORDER BY RANDOM() LIMIT 2000").fetchall()
    t = time.time()
    for name, off, lid, iid in rows:
        read_member_at(root.tars_dir / name, off, f"{lid}_{iid}.jpg")
    rd = time.time() - t
    conn.close()
    print(f"tars: {len(names)} x {args.per_tar} images, {total / 1e6:.0f} MB in {dt:.1f} s")
    print(f"throughput: {args.images / dt:.0f} images/s ({total / 1e6 / dt:.0f} MB/s)")
    print(f"read by offset (header check + data): {rd / len(rows) * 1e6:.0f} us per image (page cache warm)")
    if not args.dir:
        shutil.rmtree(base)
    return 0


if __name__ == "__main__":
    sys.exit(main())
