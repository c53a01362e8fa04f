"""A sandbox index for the re-embed tests: 20 images in two all-image tars, indexed in three
shards (8 rows each) with synthetic "old" vectors (tests/index_support.py), so a re-embed
with the test-profile model visibly changes the model's column."""
from __future__ import annotations

import numpy as np

from pipeline.core.db import connect
from pipeline.core.root import Root
from pipeline.index import open_store
from pipeline.models.registry import ModelSettings
from tests.index_support import FP, add_batch, open_db, vectors_for
from tests.models_support import TEST_ROOT_TOML, furniture_jpeg

MODEL = "dinov2_base"
BATCHES = [(1, 5), (2, 5), (3, 5), (4, 5)]     # 20 rows; 8 a shard -> 3 shards, 6 slices


def build_root(path, batches=BATCHES, shard_rows: int = 8, per_tar: int = 10,
               image_of=None) -> Root:
    """The root (bench/bench_ray.py --reembed builds a bigger one with Etsy-sized images)."""
    from pipeline.stages.archive.tarindex import loose_path
    from pipeline.stages.archive.tars import Archiver

    image_of = image_of or (lambda lid, iid: furniture_jpeg(lid * 10 + iid))
    path.mkdir(parents=True)
    (path / "imageselector.toml").write_text(
        TEST_ROOT_TOML + f"\n[index]\nshard_rows = {shard_rows}\n\n[archive]\n"
                         f"images_per_tar = {per_tar}\n")
    root = Root(path).ensure()
    conn = open_db(root)
    store = open_store(root, conn)
    for batch_id, n in batches:
        ids = add_batch(conn, batch_id, n, first_listing=1000 + 100 * batch_id, images_per_listing=2)
        store.import_batch(batch_id, ids, vectors_for(ids), FP, conn)
        for k, (lid, iid) in enumerate(ids.tolist()):
            loose_path(root, lid, iid).write_bytes(image_of(lid, iid))
    arch = Archiver(root, conn)
    arch.recover()
    written = [arch.write(p) for p in arch.next_plans() if not p.waiting]
    total = sum(n for _, n in batches)
    assert len(written) == total // per_tar
    assert conn.execute("SELECT COUNT(*) FROM image_status WHERE state = 'tarred'"
                        ).fetchone()[0] == total // per_tar * per_tar
    conn.close()
    return root


def column_embedder(model: str = MODEL):
    from pipeline.reembed.compute import ColumnEmbedder

    return ColumnEmbedder(ModelSettings(profile="test", device="cpu", precision="fp32",
                                        unload_between_models="never", hf_cache_dir="",
                                        hf_token_file="", torch_threads=0), model, 4)


def expected_vectors(root, embedder) -> dict[tuple[int, int], np.ndarray]:
    """The model's vector of each indexed image, computed here from its tarred bytes."""
    from pipeline.stages.archive.tarindex import read_image

    conn = connect(root.db_path)
    keys = [(a, b) for a, b in conn.execute("SELECT listing_id, image_id FROM image_status")]
    data = [read_image(root, conn, a, b) for a, b in keys]
    conn.close()
    texts = [""] * len(keys) if embedder.models.get(embedder.model).spec.text else None
    vecs = embedder.embed(data, texts, [f"{a}_{b}" for a, b in keys])[embedder.model]
    return dict(zip(keys, vecs))


def assert_column(root, conn, expected, model: str = MODEL) -> None:
    """Every row of every shard holds its own image's vector of ``model``."""
    store = open_store(root, conn)
    for sh in store.shards:
        ids = sh.ids()
        rows = np.concatenate([np.asarray(p) for _, p in sh.vector_parts(model)])
        want = np.stack([expected[(int(a), int(b))] for a, b in ids])
        np.testing.assert_allclose(rows, want, atol=1e-5)
