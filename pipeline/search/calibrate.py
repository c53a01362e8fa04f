"""Calibration and evaluation on a sandbox catalogue (issue 19): an index of the catalogue's
pictures embedded by the root's models (background removal, then each model, as the worker
does), the same-item threshold's precision/recall on the catalogue's generated
near-duplicates (``Catalogue.similar_groups``), and the image-combination comparison
(mean vs fuse) that chose the default ``--combine``.

Used by tests/test_search_query.py and bench/bench_search_filters.py."""
from __future__ import annotations

import io
import time

import numpy as np


def build_catalogue_index(root, cat, model_set, remover, states: dict | None = None,
                          first_seen: dict | None = None, size: str = "170x135",
                          listings=None, vectors_for=None) -> dict:
    """Write the catalogue's listings (with taxonomy, shops, prices, states) into the root's
    DB and its pictures' vectors into the root's index store: all listings, or those in
    ``listings``. ``vectors_for(keys) -> {model: vectors}`` replaces embedding (tests with
    synthetic vectors). Returns {(listing, image): picture} of the embedded pictures."""
    from pipeline.core import db as dbm
    from pipeline.index.store import IndexStore

    conn = dbm.open_db(root)
    now = time.time()
    states, first_seen = states or {}, first_seen or {}
    expected = cat.expected()
    if listings is not None:
        expected = {lid: e for lid, e in expected.items() if lid in set(listings)}
    pictures, keys = {}, []
    with dbm.transaction(conn):
        for tid, node in cat.nodes.items():
            conn.execute("INSERT OR IGNORE INTO taxonomy_static(taxonomy_id, parent_id, name, "
                         "level, full_path_ids, is_leaf, fetched_at) VALUES (?,?,?,?,?,?,?)",
                         (tid, node.parent, node.name, node.level, str(list(node.path)),
                          int(not cat.children[tid]), now))
        for lid, e in expected.items():
            conn.execute("INSERT OR IGNORE INTO shops_static(shop_id, snapshot_timestamp, shop_name) "
                         "VALUES (?, ?, ?)", (e["shop_id"], now, f"shop{e['shop_id']}"))
            conn.execute("INSERT INTO listings_static(listing_id, snapshot_timestamp, shop_id, title, "
                         "taxonomy_id, first_seen) VALUES (?,?,?,?,?,?)",
                         (lid, now, e["shop_id"], e["title"], e["taxonomy_id"],
                          first_seen.get(lid, now)))
            conn.execute("INSERT INTO listings_dynamic(listing_id, snapshot_timestamp, state, "
                         "price_amount, price_divisor, price_currency) VALUES (?,?,?,?,100,'USD')",
                         (lid, now, states.get(lid, "active"), e["price_amount"]))
            for iid, rank, _url in e["images"]:
                conn.execute("INSERT INTO images(listing_id, image_id, rank, is_primary) VALUES "
                             "(?,?,?,?)", (lid, iid, rank, int(rank == 1)))
                keys.append((lid, iid))
        dbm.add_discovered_images(conn, keys)
        dbm.set_image_state(conn, keys, dbm.DOWNLOADED)
        dbm.set_image_state(conn, keys, dbm.BATCHED, batch_id=1)
        conn.execute("INSERT INTO batches(batch_id, worker, state, n_images, created_at) "
                     "VALUES (1, 'local', 'returned', ?, ?)", (len(keys), now))
    if vectors_for is not None:
        vectors, fingerprint = vectors_for(keys), "synthetic"
    else:
        vectors, pictures = _embed(cat, keys, expected, model_set, remover, size)
        fingerprint = model_set.fingerprint()
    store = IndexStore.for_root(root)
    store.open(conn)
    store.import_batch(1, np.array(keys, dtype=np.int64), vectors, fingerprint, conn)
    conn.close()
    return pictures


def _embed(cat, keys, expected, model_set, remover, size):
    from PIL import Image

    from pipeline.models.registry import VECTOR_ORDER
    from pipeline.search.encoders import encode_picture

    pictures = {}
    order = list(VECTOR_ORDER)
    image_models = [m for m in order if not m.endswith("_text")]
    vecs = {m: [] for m in order}
    for lid, iid in keys:
        data, _ctype = cat.render(iid, size)
        with Image.open(io.BytesIO(data)) as im:
            pic = im.convert("RGB")
        pictures[(lid, iid)] = pic
        got = encode_picture(pic, model_set, remover, image_models)
        for m in image_models:
            vecs[m].append(got[m])
    titles = [expected[lid]["title"] for lid, _ in keys]
    for m in order:
        if m.endswith("_text"):
            vecs[m] = model_set.get(m.removesuffix("_text")).embed_texts(titles)
    return {m: np.asarray(np.stack(v), dtype="float32") for m, v in vecs.items()}, pictures


def truth_pairs(cat) -> set[frozenset]:
    """Listing pairs whose primary images show the same object."""
    out = set()
    for members in cat.similar_groups().values():
        lids = [lid for lid, _iid in members]
        out.update(frozenset((a, b)) for i, a in enumerate(lids) for b in lids[i + 1:])
    return out


def listing_pair_scores(engine, models: list[str]) -> dict[frozenset, float]:
    """Per pair of listings, the best over their image pairs of the lowest model score (the
    rule of --same-as: every model at or above the threshold)."""
    engine.refresh()
    rows = np.concatenate([np.arange(ls.rows) + ls.shard.first_global_row for ls in engine.loaded])
    low = None
    for m in models:
        v = engine.vectors(m, rows)
        s = v @ v.T
        low = s if low is None else np.minimum(low, s)
    ids = engine.ids_many(rows)
    lids = np.array([ids[int(r)][0] for r in rows])
    out: dict[frozenset, float] = {}
    for i in range(len(rows)):
        for j in range(i + 1, len(rows)):
            if lids[i] == lids[j]:
                continue
            key = frozenset((int(lids[i]), int(lids[j])))
            if low[i, j] > out.get(key, -2.0):
                out[key] = float(low[i, j])
    return out


def same_item_curve(scores: dict[frozenset, float], truth: set[frozenset],
                    thresholds=None) -> list[dict]:
    """Precision and recall of 'score >= t' against the true pairs, per threshold."""
    thresholds = np.round(np.arange(0.50, 1.0001, 0.01), 2) if thresholds is None else thresholds
    out = []
    for t in thresholds:
        predicted = {p for p, s in scores.items() if s >= t}
        tp = len(predicted & truth)
        precision = tp / len(predicted) if predicted else 1.0
        recall = tp / len(truth) if truth else 1.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out.append({"threshold": float(t), "precision": precision, "recall": recall, "f1": f1,
                    "predicted": len(predicted), "true": len(truth)})
    return out


def choose_threshold(curve: list[dict]) -> dict:
    """The threshold with the best F1; among equals, the highest (fewer false matches)."""
    return max(curve, key=lambda r: (round(r["f1"], 9), r["threshold"]))


def combine_eval(engine, cat, model_set, remover, pictures: dict, k: int = 10) -> dict:
    """mean vs fuse for multi-image queries: for each near-duplicate group, query with the
    primary pictures of all members but one (as an operator gives several photos of one
    piece) and score whether the held-out member is found in the top k (recall) and its
    rank (MRR)."""
    from pipeline.search.encoders import combine_images, encode_picture

    models = [m for m in engine.available if not m.endswith("_text")]
    report = {}
    for how in ("mean", "fuse"):
        found, rr, n = 0, 0.0, 0
        for members in cat.similar_groups().values():
            if len(members) < 3:
                continue
            for hold in range(len(members)):
                query = [m for i, m in enumerate(members) if i != hold]
                per = [encode_picture(pictures[key], model_set, remover, models) for key in query]
                q = combine_images(per, how)
                hits = engine.search_vectors(q, k, exclude_listings=[lid for lid, _ in query],
                                             combine="fuse")
                got = [h.listing_id for h in hits]
                n += 1
                if members[hold][0] in got:
                    found += 1
                    rr += 1.0 / (got.index(members[hold][0]) + 1)
        report[how] = {"queries": n, f"recall@{k}": found / max(n, 1), "mrr": rr / max(n, 1)}
    return report
