"""The cross-shard search index (pipeline/index/searchindex.py) and parallel search."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from pipeline.index import searchindex as si
from pipeline.index import IndexStore
from pipeline.search.engine import SearchEngine
from pipeline.search.evaluate import evaluate
from pipeline.search.settings import SearchSettings
from tests.index_support import FP, Collection, open_db

pytestmark = pytest.mark.timeout(120)
ORDER = ["clip_vitb32", "dinov2_base", "dinov2_large"]
DIMS = {"clip_vitb32": 32, "dinov2_base": 48, "dinov2_large": 64}
BUILD = si.BuildSettings(template="IVF{nlist},PQ{pq}x4fs", min_rows=100, train_rows=1000,
                         durable=False, lock_wait_s=5)


def _unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype("float32")


def _clustered(seed: int, n: int, first_listing: int = 1, clusters: int = 30):
    """Easy data: tight clusters (the same cluster for an image in every model); two images
    per listing."""
    rng = np.random.default_rng(seed)
    which = rng.integers(0, clusters, n)
    vecs = {}
    for m in ORDER:
        centres = _unit(np.random.default_rng(100 + len(m)).standard_normal((clusters, DIMS[m])))
        vecs[m] = _unit(centres[which] + 0.15 * rng.standard_normal((n, DIMS[m])) / np.sqrt(DIMS[m]))
    ids = np.stack([np.arange(n) // 2 + first_listing, np.arange(n) % 2 + 1], 1).astype(np.int64)
    return ids, vecs


def _store(base, seed=1, n=450):
    store = IndexStore(base, capacity=300, order=ORDER, dims=DIMS, durable=False)
    store.open()
    ids, vecs = _clustered(seed, n)
    store.import_batch(1, ids[:250], {m: v[:250] for m, v in vecs.items()}, FP)
    store.import_batch(2, ids[250:], {m: v[250:] for m, v in vecs.items()}, FP)
    assert len(store.shards) == 2   # the search index spans both
    return store, ids, vecs


def _engine(base, **kw) -> SearchEngine:
    kw.setdefault("index_min_rows", 100)
    kw.setdefault("depth", 10)
    return SearchEngine(base, SearchSettings(**kw))


def _key(hits):
    return [(h.listing_id, h.image_id, h.global_row, round(h.fused, 9),
             {m: (r, round(s, 5)) for m, (r, s) in sorted(h.models.items())}) for h in hits]


def _query(vecs, row, seed=9, noise=0.1):
    rng = np.random.default_rng(seed)
    return {m: _unit(v[row] + noise * rng.standard_normal(v.shape[1]) / np.sqrt(v.shape[1]))
            for m, v in vecs.items()}


def test_parallel_search_equals_serial(tmp_root):
    conn = open_db(tmp_root)
    store = IndexStore.for_root(tmp_root, capacity=200)
    store.open(conn)
    coll = Collection(tmp_root, conn, store)
    conn.close()
    q = coll.query()
    names = [m for m in q if not m.endswith("_text")]
    serial = SearchEngine(tmp_root.embeddings_dir, SearchSettings(threads=1))
    parallel = SearchEngine(tmp_root.embeddings_dir, SearchSettings(threads=4))
    for k in (3, 10):
        a = serial.search_vectors({m: q[m] for m in names}, k)
        b = parallel.search_vectors({m: q[m] for m in names}, k)
        assert _key(a) == _key(b) and len(a) == k
    assert parallel._pool is not None and serial._pool is None   # really threaded
    parallel.close()


def test_search_index_matches_exact_and_spans_shards(tmp_root):
    base = tmp_root.embeddings_dir
    _store(base)
    report = [si.update(base, m, BUILD) for m in ORDER]
    assert [r["action"] for r in report] == ["built"] * 3
    assert all(r["rows"] == 450 and r["type"].endswith("x4fs") for r in report)
    assert si.read_state(base, "dinov2_large")["covered"][1][:2] == [1, 150]
    # every row a candidate: the exact re-scoring must reproduce exact search bit for bit
    full = _engine(base, rerank=450)
    full.refresh()
    assert set(full.cross) == set(ORDER) and full.cross_warnings == []
    _ids, vecs = _clustered(1, 450)
    for row in (3, 260, 449):                     # queries near rows of both shards
        q = _query(vecs, row)
        assert _key(full.search_vectors(q, 5)) == _key(full.search_vectors(q, 5, exact=True))
        # a listing query (two vectors per model) too
        q2 = _query(vecs, row ^ 1, seed=row)
        two = {m: np.stack([q[m], q2[m]]) for m in ORDER}
        assert _key(full.search_vectors(two, 5)) == _key(full.search_vectors(two, 5, exact=True))
    # default settings (candidates from the compressed codes) still agree on the top results
    engine = _engine(base, nprobe=4, rerank=50)
    for row in (5, 260):
        q = _query(vecs, row)
        got = [h.global_row for h in engine.search_vectors(q, 3)]
        assert got == [h.global_row for h in engine.search_vectors(q, 3, exact=True)]
        assert row in got
    rep = evaluate(engine, n_queries=10, k=5, models=ORDER)
    assert rep["types"]["clip_vitb32"][0].startswith("search index IVF")
    assert rep["fused"] >= 0.8


def test_new_import_is_searchable_at_once_then_persisted(tmp_root):
    base = tmp_root.embeddings_dir
    store, _ids, vecs = _store(base)
    for m in ORDER:
        si.update(base, m, BUILD)
    engine = _engine(base, rerank=50)
    q = _query(vecs, 10, noise=0.3)
    before = engine.search_vectors(q, 3)
    assert engine.cross["dinov2_base"].rows == 450
    # a new image identical to the query, imported after the index was written
    new_ids = np.array([[9999, 1]], dtype=np.int64)
    store.import_batch(3, new_ids, {m: q[m].reshape(1, -1) for m in ORDER}, FP)
    after = engine.search_vectors(q, 3)
    assert before[0].listing_id != 9999 and after[0].listing_id == 9999
    assert engine.cross["dinov2_base"].rows == 451      # extended in memory...
    assert si.read_state(base, "dinov2_base")["rows"] == 450   # ...not on disk
    assert si.update(base, "dinov2_base", BUILD)["action"] == "extended"
    assert si.update(base, "dinov2_base", BUILD)["action"] == "current"
    assert si.read_state(base, "dinov2_base")["rows"] == 451
    assert len(list(si.search_dir(base, "dinov2_base").glob("index_*.faiss"))) == 1
    gen = engine.generation
    assert engine.search_vectors(q, 3)[0].listing_id == 9999   # reloads the new file
    assert engine.generation == gen + 1 and engine.cross["dinov2_base"].rows == 451
    # too far behind: searched shard by shard (still right), with a warning
    lagging = _engine(base, rerank=50, index_max_lag=0)
    store.import_batch(4, np.array([[9998, 1]]), {m: vecs[m][:1] for m in ORDER}, FP)
    hits = lagging.search_vectors(q, 3)
    assert hits[0].listing_id == 9999 and "dinov2_base" not in lagging.cross
    assert any("rows behind" in w for w in lagging.cross_warnings)


def test_stale_index_is_ignored_then_rebuilt(tmp_root):
    base = tmp_root.embeddings_dir
    _store(base, seed=1)
    for m in ORDER:
        si.update(base, m, BUILD)
    saved = {m: si.search_dir(base, m) for m in ORDER}
    keep = tmp_root.path / "kept"
    for m, d in saved.items():
        shutil.copytree(d, keep / d.name)
    # the store rebuilt from other data; the old search indexes put back
    shutil.rmtree(base)
    _store(base, seed=2)
    for m, d in saved.items():
        shutil.copytree(keep / d.name, d)
    engine = _engine(base, rerank=450)
    _ids, vecs = _clustered(2, 450)
    q = _query(vecs, 100)
    assert _key(engine.search_vectors(q, 5)) == _key(engine.search_vectors(q, 5, exact=True))
    assert engine.cross == {}
    assert any("ignored" in w and "re-created" in w for w in engine.cross_warnings)
    assert si.update(base, "clip_vitb32", BUILD)["action"] == "built"


def test_small_collections_stay_exact(tmp_root):
    base = tmp_root.embeddings_dir
    _store(base)
    small = si.BuildSettings(template=BUILD.template, min_rows=1000, durable=False)
    assert si.update(base, "clip_vitb32", small)["action"] == "too small"
    assert si.read_state(base, "clip_vitb32") is None
    for m in ORDER:
        si.update(base, m, BUILD)
    engine = SearchEngine(base, SearchSettings(index_min_rows=1000))   # the default path
    engine.refresh()
    assert engine.cross == {} and engine.cross_warnings == []
    off = SearchEngine(base, SearchSettings(index_min_rows=0, index_type=""))
    off.refresh()
    assert off.cross == {}


def test_index_type_template_and_nlist():
    assert si.index_type("IVF{nlist},PQ{pq}x4fs", 768, 1_000_000) == "IVF4096,PQ192x4fs"
    assert si.index_type("IVF{nlist},PQ{pq}x4fs", 1024, 10_000_000) == "IVF16384,PQ256x4fs"
    assert si.index_type("IVF{nlist},SQ8", 512, 200_000, nlist=1000) == "IVF1000,SQ8"
    assert si.auto_nlist(450) == 11
    with pytest.raises(si.UserError, match="not a valid template"):
        si.index_type("IVF{lists}", 8, 100)
