"""Text queries through the real encoder path (test-profile CLIP towers, no download)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.index import IndexStore
from tests.index_support import DIMS, FP, ORDER, add_images, add_listing_rows, open_db
from tests.support import run_cli

pytestmark = pytest.mark.timeout(180)
TITLES = ["oak dining chair", "glass coffee table", "velvet sofa", "brass floor lamp",
          "walnut bookshelf", "rattan armchair", "marble side table", "pine bunk bed"]


def test_text_query_returns_clip_nearest_neighbours(tmp_root):
    from pipeline.models.loading import ModelSet
    from pipeline.models.registry import ModelSettings

    (tmp_root.path / "imageselector.toml").write_text(
        '[root]\nprofile = "sandbox"\n[models]\nprofile = "test"\n')
    models = ModelSet(ModelSettings(profile="test"), names=("clip_vitb32", "clip_vitl14"))
    text_vecs = {m: models.get(m).embed_texts(TITLES) for m in ("clip_vitb32", "clip_vitl14")}
    conn = open_db(tmp_root)
    rng = np.random.default_rng(5)
    ids = np.array([(500 + i, 1) for i in range(len(TITLES))], dtype=np.int64)
    vecs = {}
    for m in ORDER:
        base = m.removesuffix("_text")
        if base in text_vecs:   # the image index holds the text vector of the title
            vecs[m] = text_vecs[base].astype("float32")
        else:
            v = rng.standard_normal((len(TITLES), DIMS[m])).astype("float32")
            vecs[m] = v / np.linalg.norm(v, axis=1, keepdims=True)
    for i, t in enumerate(TITLES):
        add_listing_rows(conn, tmp_root, 500 + i, 1, t, 1000, "shop")
    add_images(conn, 1, ids)
    store = IndexStore.for_root(tmp_root)
    store.open(conn)
    store.import_batch(1, ids, vecs, FP, conn)
    conn.close()
    for i in (0, 5):
        proc = run_cli("search", "--text", TITLES[i], "-k", 3, "--json", root=tmp_root)
        assert proc.returncode == 0, proc.stderr
        results = json.loads(proc.stdout)
        assert results[0]["listing_id"] == 500 + i and results[0]["title"] == TITLES[i]
        assert set(results[0]["models"]) == {"clip_vitb32", "clip_vitl14"}
        assert results[0]["models"]["clip_vitb32"]["score"] == pytest.approx(1.0, abs=1e-4)
