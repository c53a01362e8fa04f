"""Search as the operator uses it (issue 19), through the CLI against an index of a sandbox
catalogue: filters (k results when k pass, none that fail), listing ids and Etsy listing
URLs, same item elsewhere on the catalogue's generated near-duplicates, --json / --csv.

The index here holds synthetic vectors laid out by the catalogue's ground truth (the primary
images of a near-duplicate group share a base vector), so the test is fast and exact; the
encoder paths (image files, URLs, text with images, a listing fetched through the Etsy API)
are in tests/test_search_sources.py."""
from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

from pipeline.models.registry import VECTOR_DIMS, VECTOR_ORDER
from pipeline.sandbox.catalogue import Catalogue
from pipeline.search.calibrate import build_catalogue_index
from tests.support import run_cli, run_cli_here

pytestmark = pytest.mark.timeout(300)
DAY = 86400
EPOCH = 1_700_000_000
SOLD = (2, 5, 11)          # catalogue indexes whose newest state is sold_out


def _unit(v):
    return (v / np.linalg.norm(v)).astype("float32")


def synthetic_vectors(cat):
    """Random unit vectors per image and model; a near-duplicate group's primary images are
    its base vector plus a little noise (cosine ~0.99), as the generated pictures are the
    same object seen from another angle."""
    def vectors_for(keys):
        out = {}
        for j, m in enumerate(VECTOR_ORDER):
            d = VECTOR_DIMS[m]
            rows = []
            for lid, iid in keys:
                group = cat.similar_group(lid)
                if group is not None and iid == cat.image_id(cat.index_of_listing(lid), 0):
                    base = np.random.default_rng([group, j, 99]).standard_normal(d)
                    noise = np.random.default_rng([lid, j]).standard_normal(d)
                    rows.append(_unit(base + 0.1 * noise))
                else:
                    rows.append(_unit(np.random.default_rng([lid, iid, j]).standard_normal(d)))
            out[m] = np.stack(rows)
        return out
    return vectors_for


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from pipeline.core.root import Root

    path = tmp_path_factory.mktemp("search19") / "root"
    path.mkdir()
    (path / "imageselector.toml").write_text('[root]\nprofile = "sandbox"\n[models]\nprofile = "test"\n')
    root = Root(path).ensure()
    cat = Catalogue(listings=60, seed=7, similar_groups=6, group_size=3, epoch=EPOCH)
    states = {cat.listing_id(i): "sold_out" for i in SOLD}
    seen = {cat.listing_id(i): EPOCH - i * DAY for i in range(cat.n)}
    build_catalogue_index(root, cat, None, None, states=states, first_seen=seen,
                          vectors_for=synthetic_vectors(cat))
    return root, cat


def search_json(capsys, root, *args):
    proc = run_cli_here(capsys, "search", *args, "--json", root=root)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def passing(cat, query_lid, pred, state="active"):
    """Listing ids (other than the query) that pass a filter, from the catalogue's truth."""
    out = set()
    for i in range(cat.n):
        lid = cat.listing_id(i)
        st = "sold_out" if i in SOLD else "active"
        if lid != query_lid and (state == "any" or st == state) and pred(i, lid):
            out.add(lid)
    return out


@pytest.mark.parametrize("args, pred", [
    ([], lambda i, lid: True),
    (["--min-price", "50", "--max-price", "900"],
     lambda i, lid: 5000 <= CAT.price[i] <= 90000),
    (["--max-price", "30"], lambda i, lid: CAT.price[i] <= 3000),
    (["--since", "2023-10-20"], lambda i, lid: EPOCH - i * DAY > 1697760000),
    (["--shop", "SHOP"], lambda i, lid: CAT.shop_id(CAT.shop_of[i]) == SHOP[0]),
    (["--taxonomy", "TAX"], lambda i, lid: TAX[0] in CAT.nodes[CAT.tax[i]].path),
    (["--exclude", "EXCL"], lambda i, lid: lid not in EXCL),
])
def test_filters_return_k_passing_results(synth, args, pred, capsys):
    root, cat = synth
    _bind(cat)
    args = [a.replace("SHOP", str(SHOP[0])).replace("TAX", str(TAX[0]))
            .replace("EXCL", ",".join(map(str, EXCL))) for a in args]
    query = cat.listing_id(0)
    want = passing(cat, query, pred)
    assert want, "the filter must leave something to find"
    for k in (3, len(want) + 5):
        got = search_json(capsys, root, "--listing", query, "-k", k, *args)
        ids = [r["listing_id"] for r in got]
        assert len(ids) == min(k, len(want)), (args, k, len(want))
        assert set(ids) <= want, set(ids) - want   # none that fail the filter
        assert len(set(ids)) == len(ids)


CAT: Catalogue | None = None
SHOP: list = [None]
TAX: list = [None]
EXCL: list = []


def _bind(cat) -> None:
    """The filter values that leave a real choice in this catalogue: its biggest shop, a
    non-leaf taxonomy node with listings below it, the 8 best results of an unfiltered query."""
    global CAT
    CAT = cat
    counts = {}
    for i in range(cat.n):
        counts[cat.shop_id(cat.shop_of[i])] = counts.get(cat.shop_id(cat.shop_of[i]), 0) + 1
    SHOP[0] = max(counts, key=counts.get)
    parents = {}
    for i in range(cat.n):
        for node in cat.nodes[cat.tax[i]].path[1:-1]:
            parents[node] = parents.get(node, 0) + 1
    TAX[0] = max(parents, key=parents.get)
    if not EXCL:
        EXCL.extend(cat.listing_id(i) for i in (1, 3, 4, 6, 7, 8, 9, 10))


def test_state_filter_default_active_and_any(synth, capsys):
    root, cat = synth
    query = cat.listing_id(0)
    sold = {cat.listing_id(i) for i in SOLD}
    every = search_json(capsys, root, "--listing", query, "-k", cat.n, "--state", "any")
    assert sold <= {r["listing_id"] for r in every} and len(every) == cat.n - 1
    active = search_json(capsys, root, "--listing", query, "-k", cat.n)
    assert not sold & {r["listing_id"] for r in active} and len(active) == cat.n - 1 - len(sold)
    only_sold = search_json(capsys, root, "--listing", query, "-k", 10, "--state", "sold_out")
    assert {r["listing_id"] for r in only_sold} == sold


def test_listing_by_etsy_url_and_json_fields(synth, capsys):
    root, cat = synth
    lid = cat.listing_id(4)
    url = f"https://www.etsy.com/listing/{lid}/some-title-slug"
    by_id = search_json(capsys, root, "--listing", lid, "-k", 5)
    assert search_json(capsys, root, "--url", url, "-k", 5) == by_id
    assert search_json(capsys, root, "--listing", url, "-k", 5) == by_id
    truth = cat.expected()
    for r in by_id:
        assert {"listing_id", "url", "title", "price", "shop_id", "score", "ranks",
                "primary_image"} <= set(r)
        e = truth[r["listing_id"]]
        assert r["url"] == f"https://www.etsy.com/listing/{r['listing_id']}"
        assert r["title"] == e["title"] and r["shop_id"] == e["shop_id"]
        assert r["price"] == pytest.approx(e["price_amount"] / 100)
        assert set(r["ranks"]) == set(r["models"]) and all(v >= 1 for v in r["ranks"].values())
        assert set(r["primary_image"]) == {"path", "offset", "size"}


def test_csv_output(synth, capsys):
    root, cat = synth
    lid = cat.listing_id(4)
    proc = run_cli("search", "--listing", lid, "-k", 4, "--csv", root=root)
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    want = search_json(capsys, root, "--listing", lid, "-k", 4)
    assert [int(r["listing_id"]) for r in rows] == [r["listing_id"] for r in want]
    assert rows[0]["url"] == want[0]["url"] and rows[0]["title"] == want[0]["title"]
    assert rows[0]["ranks"].count(":") == len(want[0]["ranks"])


def test_same_item_groups_are_the_generated_near_duplicates(synth, capsys):
    root, cat = synth
    truth = cat.expected()
    groups = cat.similar_groups()
    assert len(groups) == 6
    for members in groups.values():
        lid = members[0][0]
        got = search_json(capsys, root, "--same-as", lid, "--state", "any")
        found = {x["listing_id"] for g in got["groups"] for x in g["listings"]}
        assert found == {m for m, _ in members} - {lid}
        for g in got["groups"]:
            for x in g["listings"]:
                assert x["shop_id"] == g["shop_id"] == truth[x["listing_id"]]["shop_id"]
                assert x["price"] == pytest.approx(truth[x["listing_id"]]["price_amount"] / 100)
                assert min(x["scores"].values()) >= 0.9
    lonely = next(cat.listing_id(i) for i in range(cat.n) if cat.similar_group(cat.listing_id(i)) is None)
    assert search_json(capsys, root, "--same-as", lonely)["groups"] == []
    text = run_cli("search", "--same-as", lonely, root=root)
    assert text.returncode == 0 and "no other listing sells" in text.stdout


@pytest.mark.parametrize("args, message", [
    (["--listing", "not-a-listing"], "neither a listing id nor an Etsy listing URL"),
    (["--listing", "1500000001", "--min-price", "9", "--max-price", "3"], "is above --max-price"),
    (["--listing", "1500000001", "--since", "last tuesday"], "is not a date"),
    (["--listing", "1500000001", "--taxonomy", "424242"], "not a node of the stored taxonomy"),
    (["--listing", "1500000001", "--json", "--csv"], "not both"),
    (["--same-as", "42"], "listing 42 is not in the index"),
    (["--listing", "1500000001", "--text", "chair"], "give exactly one of"),
])
def test_bad_queries_get_one_line(synth, args, message):
    root, _cat = synth
    proc = run_cli("search", *args, root=root)
    assert proc.returncode == 2, proc.stdout
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
