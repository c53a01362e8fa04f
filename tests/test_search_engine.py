"""Ensemble search on a synthetic collection whose ground truth is known."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.core.errors import UserError
from pipeline.index import IndexStore
from pipeline.search.encoders import encode_text
from pipeline.search.engine import SearchEngine
from pipeline.search.evaluate import evaluate
from pipeline.search.query import search
from pipeline.search.settings import SearchSettings
from tests.index_support import DIMS, FP, ORDER, Collection, add_images, open_db
from tests.support import run_cli, run_cli_here

pytestmark = pytest.mark.timeout(120)
IMAGE_MODELS = ["clip_vitb32", "clip_vitl14", "dinov2_base", "dinov2_large", "dinov3_base"]


@pytest.fixture
def coll(tmp_root):
    conn = open_db(tmp_root)
    store = IndexStore.for_root(tmp_root, capacity=200)   # two shards: a query spans both
    store.open(conn)
    c = Collection(tmp_root, conn, store)
    c.root, c.conn, c.store = tmp_root, conn, store
    assert len(store.shards) == 2
    yield c
    conn.close()


def _engine(coll, **kw) -> SearchEngine:
    settings = SearchSettings(**kw)
    return SearchEngine(coll.root.embeddings_dir, settings)


def test_near_duplicates_first_one_result_per_listing(coll):
    engine = _engine(coll)
    hits = engine.search_vectors({m: coll.query([m])[m] for m in IMAGE_MODELS}, k=10)
    lids = [h.listing_id for h in hits]
    assert set(lids[:3]) == set(Collection.OBJECT_LISTINGS)
    assert len(lids) == len(set(lids)) == 10
    # the matching image is the near-duplicate (image 2), found by every model near the top
    for h in hits[:3]:
        assert h.image_id == 2 and h.agree == 5
        assert all(rank <= 4 for rank, _ in h.models.values())  # 301 may sit among them in clip_vitb32
    # the closer copy (listing 101, least noise) is first
    assert lids[0] == 101


def test_agreement_outranks_a_single_model(coll):
    # depth 5: in a collection this small, deeper lists put random images in several models
    engine = _engine(coll, depth=5)
    q = coll.query()
    hits = engine.search_vectors({m: q[m] for m in IMAGE_MODELS}, k=5)
    lids = [h.listing_id for h in hits]
    agree = next(h for h in hits if h.listing_id == Collection.ALL_AGREE)
    assert agree.agree == 5
    one = next(h for h in hits if h.listing_id == Collection.ONE_MODEL)
    assert one.agree == 1 and one.models["clip_vitb32"][0] <= 4   # a near-duplicate in one model
    assert lids.index(Collection.ALL_AGREE) < lids.index(Collection.ONE_MODEL)  # ...but alone
    # min_agree: the original's "at least N models agree" filter
    strict = _engine(coll, depth=5, min_agree=3)
    assert Collection.ONE_MODEL not in [h.listing_id for h in strict.search_vectors(
        {m: q[m] for m in IMAGE_MODELS}, k=5)]
    # weights: only clip_vitb32 counts -> the one-model match passes the all-model one
    weighted = _engine(coll, depth=5, agree_first=False,
                       weights={m: (1.0 if m == "clip_vitb32" else 0.0) for m in IMAGE_MODELS})
    wl = [h.listing_id for h in weighted.search_vectors({m: q[m] for m in IMAGE_MODELS}, k=5)]
    assert wl.index(Collection.ONE_MODEL) < wl.index(Collection.ALL_AGREE)


def test_results_carry_listing_data_and_primary_image(coll):
    results, warnings = search(coll.root, listing=101, k=5, conn=coll.conn)
    assert warnings == []
    assert 101 not in [r["listing_id"] for r in results]          # the query item excluded
    top = results[0]
    assert top["listing_id"] in (102, 103) and top["image_id"] == 2
    assert top["title"] == f"oak chair {top['listing_id']}"
    assert top["price"] == pytest.approx((12_500 + top["listing_id"]) / 100)
    assert top["currency"] == "USD" and top["shop"] == "woodshop"
    # the primary image (image 1), not the matching image 2
    assert top["primary_image"] == {"path": str(coll.root.bgremoved_dir / f"{top['listing_id']}_1.jpg"),
                                    "offset": None, "size": None}
    assert set(top["models"]) == set(IMAGE_MODELS)
    assert all(set(v) == {"rank", "score"} for v in top["models"].values())


def test_cli_json_equals_python_api(coll):
    coll.conn.close()
    api, _ = search(coll.root, listing=102, k=7, models=["clip_vitb32", "dinov2_large"])
    proc = run_cli("search", "--listing", 102, "-k", 7, "--models", "clip_vitb32,dinov2_large",
                   "--json", root=coll.root)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == json.loads(json.dumps(api))
    table = run_cli("search", "--listing", 102, "-k", 3, root=coll.root)
    assert table.returncode == 0 and "primary image:" in table.stdout
    coll.conn = open_db(coll.root)


def test_text_query_uses_clip_image_indexes(coll):
    class FakeClip:
        def __init__(self, v):
            self.v = v

        def embed_texts(self, texts):
            return np.stack([self.v for _ in texts])

    class FakeModels:
        def get(self, name):
            return FakeClip(coll.vectors[name][coll.ids.tolist().index([1005, 2])])

    results, _ = search(coll.root, text="a chair", k=3, model_set=FakeModels(), conn=coll.conn)
    assert results[0]["listing_id"] == 1005 and results[0]["image_id"] == 2
    assert set(results[0]["models"]) == {"clip_vitb32", "clip_vitl14"}
    q = encode_text("x", FakeModels(), ["clip_vitb32", "clip_vitb32_text"])
    assert set(q) == {"clip_vitb32", "clip_vitb32_text"}


def test_new_import_is_seen_without_restart(coll):
    engine = _engine(coll)
    q = coll.query()
    before = engine.search_vectors({m: q[m] for m in IMAGE_MODELS}, k=3)
    gen = engine.generation
    ids = np.array([[555, 1]], dtype=np.int64)
    vecs = {m: (q[m] if m in q else coll.vectors[m][:1]).reshape(1, -1) for m in ORDER}
    add_images(coll.conn, 2, ids)
    coll.store.import_batch(2, ids, vecs, FP, coll.conn)
    after = engine.search_vectors({m: q[m] for m in IMAGE_MODELS}, k=3)
    assert after[0].listing_id == 555 and before[0].listing_id != 555
    assert engine.generation == gen + 1
    engine.search_vectors({m: q[m] for m in IMAGE_MODELS}, k=3)
    assert engine.generation == gen + 1          # nothing changed: nothing reloaded


def test_missing_or_misaligned_model_is_refused_with_warning(coll):
    from pipeline.index import flatfile

    shard = coll.store.shards[1]
    shard.faiss_path("dinov2_base").unlink()
    flatfile.truncate_to(shard.faiss_path("dinov3_base"), DIMS["dinov3_base"], 3)
    results, warnings = search(coll.root, listing=101, k=5, conn=coll.conn)
    assert any("model dinov2_base refused" in w for w in warnings)
    assert any("model dinov3_base refused" in w and "holds 3 rows" in w for w in warnings)
    assert set(results[0]["models"]) == {"clip_vitb32", "clip_vitl14", "dinov2_large"}
    proc = run_cli("search", "--listing", 101, "--json", root=coll.root)
    assert proc.returncode == 0 and "dinov2_base refused" in proc.stderr


@pytest.mark.parametrize("args, message", [
    (["--text", "   "], "the search text is empty"),
    (["--listing", "424242"], "listing 424242 is not in the index"),
    (["--listing", "101", "-k", "0"], "k must be between 1 and"),
    (["--image", "/nonexistent/x.jpg"], "does not exist"),
    (["--listing", "101", "--models", "nope"], "unknown model(s) nope"),
    ([], "give exactly one of"),
])
def test_bad_input_is_one_line(coll, args, message, capsys, monkeypatch):
    monkeypatch.setenv("IMAGESELECTOR_MODELS_PROFILE", "test")
    proc = run_cli_here(capsys, "search", *args, root=coll.root)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_eval_exact_is_perfect_and_approximate_is_measured(tmp_root):
    order, dims = ["clip_vitb32", "dinov2_base"], {"clip_vitb32": 32, "dinov2_base": 32}
    store = IndexStore(tmp_root.embeddings_dir, capacity=300, order=order, dims=dims,
                       index_types={"dinov2_base": "IVF8,PQ8"}, train_rows=300)
    store.open()
    rng = np.random.default_rng(3)
    n = 450
    ids = np.stack([np.arange(n) // 2 + 1, np.arange(n) % 2 + 1], 1)
    vecs = {m: rng.standard_normal((n, 32)).astype("float32") for m in order}
    for m in order:
        vecs[m] /= np.linalg.norm(vecs[m], axis=1, keepdims=True)
    store.import_batch(1, ids, vecs, FP)
    engine = SearchEngine(tmp_root.embeddings_dir, SearchSettings(nprobe=1, depth=10))
    report = evaluate(engine, n_queries=20, k=10, models=order)
    assert report["per_model"]["clip_vitb32"] == 1.0          # flat is exact
    assert report["per_model"]["dinov2_base"] < 0.9           # PQ8 + 1 probe is not
    assert report["types"]["dinov2_base"] == ["Flat", "IVF8,PQ8"]
    # re-ranking the approximate candidates with the stored vectors recovers exactness
    rerank = SearchEngine(tmp_root.embeddings_dir, SearchSettings(nprobe=8, depth=10, rerank=150))
    assert evaluate(rerank, n_queries=20, k=10, models=order)["per_model"]["dinov2_base"] == 1.0
    with pytest.raises(UserError, match="k must be between"):
        engine.check_k(5000)
