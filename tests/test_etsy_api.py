"""The local Etsy API behaves like Etsy Open API v3 for the calls the crawler makes."""
from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import requests
from PIL import Image

from etsy_support import KEY
from pipeline.sandbox.catalogue import Catalogue
from pipeline.sandbox.etsy_api import LocalEtsyAPI
from pipeline.sandbox.etsy_faults import parse_fault
from pipeline.sandbox.taxonomy import FURNITURE_ROOT

REPO = Path(__file__).resolve().parent.parent
H = {"x-api-key": KEY}


@pytest.fixture(scope="module")
def api():
    with LocalEtsyAPI(listings=250, api_key=KEY, similar_groups=5) as server:
        yield server


def get(api, path, key=KEY, **params):
    return requests.get(api.base_url + path, params=params, headers={"x-api-key": key} if key else {},
                        timeout=10)


def test_taxonomy_is_etsys_furniture_subtree(api):
    r = get(api, "/seller-taxonomy/nodes")
    assert r.status_code == 200
    tree = r.json()["results"]

    def walk(nodes):
        for n in nodes:
            yield n
            yield from walk(n["children"])

    nodes = {n["id"]: n for n in walk(tree)}
    furniture = [n for n in walk([nodes[FURNITURE_ROOT]])]
    ids = json.loads((REPO / "data/db/furniture_taxonomy_ids.json").read_text())
    leaves = json.loads((REPO / "data/db/furniture_leaf_taxonomy_ids.json").read_text())
    assert [n["id"] for n in furniture] == ids
    assert [n["id"] for n in furniture if not n["children"]] == leaves
    for n in furniture:
        assert n["full_path_taxonomy_ids"][-1] == n["id"]
        assert set(n) >= {"id", "level", "name", "parent_id", "children", "full_path_taxonomy_ids"}
    assert len(nodes) > len(furniture)  # other roots exist, the crawler must pick 967


def test_search_shapes_paging_and_price_filter(api):
    r = get(api, "/listings/active", taxonomy_id=967, limit=100, offset=0, min_price="10.00", max_price="500.00")
    assert r.status_code == 200
    body = r.json()
    count = body["count"]
    assert 0 < count < 250
    page = body["results"]
    first = page[0]
    assert set(first["price"]) == {"amount", "divisor", "currency_code"}
    assert "images" not in first
    for item in page:
        assert 1000 <= item["price"]["amount"] <= 50000
        assert item["state"] == "active"
    created = [item["creation_timestamp"] for item in page]
    assert created == sorted(created, reverse=True)  # newest first by default
    # paging covers the set exactly once
    seen = []
    for offset in range(0, count, 25):
        seen += [i["listing_id"] for i in get(api, "/listings/active", taxonomy_id=967, limit=25,
                                               offset=offset, min_price=10, max_price=500).json()["results"]]
    assert len(seen) == len(set(seen)) == count
    # a leaf only holds its own listings
    leaf = get(api, "/listings/active", taxonomy_id=977, limit=100).json()
    assert all(i["taxonomy_id"] == 977 for i in leaf["results"])


def test_offset_cap_limit_and_bad_parameters(api):
    assert get(api, "/listings/active", offset=12000).status_code == 200
    r = get(api, "/listings/active", offset=12001)
    assert r.status_code == 400
    assert r.json() == {"error": "Offset provided is greater than the maximum offset allowed."}
    assert get(api, "/listings/active", limit=101).status_code == 400
    assert get(api, "/listings/active", limit="abc").status_code == 400
    assert get(api, "/listings/batch", listing_ids=",".join(str(i) for i in range(101))).status_code == 400
    assert get(api, "/shops/1").status_code == 404
    assert "x-etsy-request-uuid" in get(api, "/shops/1").headers


def test_shared_secret_required(api):
    keystring = KEY.split(":")[0]
    r = get(api, "/listings/active", key=keystring)
    assert r.status_code == 403
    assert r.json() == {"error": "Shared secret is required in x-api-key header."}
    assert get(api, "/listings/active", key=keystring + ":wrong").status_code == 403
    assert get(api, "/listings/active", key=None).status_code == 403


def test_batch_with_images_and_shop(api):
    ids = [i["listing_id"] for i in get(api, "/listings/active", limit=10).json()["results"]]
    r = get(api, "/listings/batch", listing_ids=",".join(map(str, ids)), includes="Images,Shop")
    body = r.json()
    assert body["count"] == len(ids) == len(body["results"])
    for item in body["results"]:
        ranks = [im["rank"] for im in item["images"]]
        assert ranks == list(range(1, len(ranks) + 1))
        for im in item["images"]:
            assert im["listing_id"] == item["listing_id"]
            for size in ("url_75x75", "url_170x135", "url_570xN", "url_fullxfull"):
                assert im[size].startswith(api.root_url + "/img/")
        assert item["shop"]["shop_id"] == item["shop_id"]
    cat = api.catalogue
    truth = cat.expected()
    for item in body["results"]:
        assert truth[item["listing_id"]]["primary"] == item["images"][0]["listing_image_id"]


def test_images_jpeg_png_sizes_deterministic(api):
    cat = api.catalogue
    formats = set()
    for index in range(40):
        for im in cat.images(index):
            if im["url_570xN"].endswith(".png"):
                formats.add("png")
            else:
                formats.add("jpg")
    assert formats == {"png", "jpg"}
    im = next(im for i in range(40) for im in cat.images(i) if im["url_570xN"].endswith(".png"))
    r = requests.get(im["url_570xN"], timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"] == "image/png"
    pic = Image.open(io.BytesIO(r.content))
    assert pic.format == "PNG" and pic.width == 570
    full = Image.open(io.BytesIO(requests.get(im["url_fullxfull"], timeout=10).content))
    assert full.size == (im["full_width"], im["full_height"])
    assert Image.open(io.BytesIO(requests.get(im["url_75x75"], timeout=10).content)).size == (75, 75)
    assert Image.open(io.BytesIO(requests.get(im["url_170x135"], timeout=10).content)).size == (170, 135)
    jpg = next(im for im in cat.images(0) + cat.images(1) + cat.images(2) if im["url_570xN"].endswith(".jpg"))
    a = requests.get(jpg["url_570xN"], timeout=10).content
    assert Image.open(io.BytesIO(a)).format == "JPEG"
    # another server with the same catalogue serves the same bytes
    with LocalEtsyAPI(listings=250, api_key=KEY) as other:
        b = requests.get(jpg["url_570xN"].replace(api.root_url, other.root_url), timeout=10).content
    assert a == b
    # a URL that is not exactly the catalogue's is a 404
    assert requests.get(jpg["url_570xN"].replace(".jpg", ".png"), timeout=10).status_code == 404


def test_similar_groups_ground_truth(api):
    cat = api.catalogue
    groups = cat.similar_groups()
    assert len(groups) == 5
    for members in groups.values():
        assert len(members) == 3
        for lid, iid in members:
            assert cat.expected()[lid]["primary"] == iid
            assert cat.similar_group(lid) is not None
        bodies = {cat.render(iid, "570xN")[0] for _, iid in members}
        assert len(bodies) == 3  # same object, different pictures


def test_placeholder_and_missing_images():
    with LocalEtsyAPI(listings=60, api_key=KEY, placeholder_fraction=0.3, missing_fraction=0.3) as api:
        cat = api.catalogue
        kinds = {}
        for i in range(60):
            for im in cat.images(i):
                kinds.setdefault(cat.image_kind(im["listing_image_id"]), im)
        assert set(kinds) == {"ok", "placeholder", "missing"}
        assert requests.get(kinds["missing"]["url_570xN"], timeout=10).status_code == 404
        small = requests.get(kinds["placeholder"]["url_570xN"], timeout=10)
        assert small.status_code == 200 and len(small.content) <= 1000
        assert len(requests.get(kinds["ok"]["url_570xN"], timeout=10).content) > 1000


def test_rate_limits_and_headers():
    with LocalEtsyAPI(listings=20, api_key=KEY, qps=3, qpd=6, day_s=3600) as api:
        codes = [get(api, "/listings/active", limit=1) for _ in range(5)]
        first = codes[0]
        for h in ("x-limit-per-second", "x-remaining-this-second", "x-limit-per-day", "x-remaining-today"):
            assert h in first.headers
        assert first.headers["x-limit-per-day"] == "6"
        assert first.headers["x-remaining-today"] == "5"
        limited = [r for r in codes if r.status_code == 429]
        assert limited, "a burst above the per-second limit must be refused"
        assert limited[0].headers["retry-after"] == "1"
        api.set_limits(qps=None, qpd=6, day_s=3600)  # fresh window
        results = [get(api, "/listings/active", limit=1) for _ in range(7)]
        assert [r.status_code for r in results[:6]] == [200] * 6
        assert results[6].status_code == 429
        assert int(results[6].headers["retry-after"]) > 3000  # the day is spent
        stats = api.stats()["counters"]
        assert stats["limited_qpd"] == 1 and stats["limited_qps"] >= 1


def test_vanish_search_lists_batch_omits():
    with LocalEtsyAPI(listings=200, api_key=KEY, faults={"vanish": 0.2}) as api:
        gone = api.vanished_ids()
        assert 10 < len(gone) < 80
        ids = [i["listing_id"] for i in get(api, "/listings/active", limit=100).json()["results"]]
        assert gone & set(ids)
        batch = get(api, "/listings/batch", listing_ids=",".join(map(str, ids))).json()
        assert {i["listing_id"] for i in batch["results"]} == set(ids) - gone


@pytest.mark.parametrize("fault", ["5xx", "html", "malformed", "error200", "429"])
def test_fault_switches(fault):
    with LocalEtsyAPI(listings=20, api_key=KEY, faults={fault: 1.0}) as api:
        r = get(api, "/listings/active", limit=5)
        if fault == "5xx":
            assert r.status_code >= 500
        elif fault == "429":
            assert r.status_code == 429 and "retry-after" in r.headers
        else:
            assert r.status_code == 200
            with pytest.raises(ValueError):
                body = r.json()
                if "error" in body:
                    raise ValueError(body["error"])
        api.clear_faults()
        assert get(api, "/listings/active", limit=5).status_code == 200


def test_drop_and_bad_fields():
    with LocalEtsyAPI(listings=20, api_key=KEY, faults={"drop": 1.0}) as api:
        with pytest.raises(requests.ConnectionError):
            get(api, "/listings/active", limit=5)
    with LocalEtsyAPI(listings=20, api_key=KEY, faults={"bad_fields": 1.0}) as api:
        from pipeline.etsy.shapes import validate_listing_page

        assert validate_listing_page(get(api, "/listings/active", limit=5).json())


def test_fault_spec_parsing():
    assert parse_fault("5xx=0.1:3") == ("5xx", 0.1, 3)
    assert parse_fault("vanish=0.05") == ("vanish", 0.05, 1)
    for bad in ("nope=0.1", "5xx=2", "5xx=x", "5xx=0.1:0"):
        with pytest.raises(ValueError):
            parse_fault(bad)


def test_faulted_responses_count_a_response_once():
    from pipeline.sandbox.etsy_faults import Faults

    faults = Faults(seed=1)
    faults.next("429", 1)
    faults.next("malformed", 2)
    draws = [faults.draw() for _ in range(4)]
    assert draws == [["429", "malformed"], ["malformed"], [], []]
    state = faults.as_dict()
    assert state["injected"] == {"429": 1, "malformed": 2}
    assert state["faulted_responses"] == 2      # three faults on two responses


def test_big_leaf_is_cheap_and_exceeds_the_cap():
    cat = Catalogue(listings=30, big_leaf=(977, 12500))
    assert cat.count_in_band(977, 0, 10 ** 9) > 12000
    page = cat.search(977, None, None)
    assert len(page) == len(set(page)) > 12000
    with pytest.raises(ValueError):
        Catalogue(listings=1, big_leaf=(967, 10))  # not a leaf


def test_etsy_api_stage_serves_until_its_kill_file(tmp_path):
    import os
    import subprocess
    import sys

    from pipeline.core.fsutil import read_json_or_none
    from pipeline.core.root import Root
    from support import wait_for

    root = Root(tmp_path / "sandbox").ensure()
    env = dict(os.environ, ETSY_API_KEY=KEY)
    env.pop("IMAGESELECTOR_ROOT", None)
    proc = subprocess.Popen([sys.executable, "-m", "imageselector", "--root", str(root.path), "run",
                             "etsy-api", "--port", "0", "--listings", "30", "--fault", "vanish=0.1"],
                            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        hb = wait_for(lambda: (read_json_or_none(root.heartbeat_path("etsy-api")) or {}).get("info", {})
                      .get("base_url") and read_json_or_none(root.heartbeat_path("etsy-api")),
                      timeout=60, what="the local API's heartbeat")
        base = hb["info"]["base_url"]
        r = requests.get(base + "/listings/active", headers=H, params={"limit": 100}, timeout=10)
        assert r.status_code == 200 and r.json()["count"] == 30
        assert requests.get(base + "/listings/active", timeout=10).status_code == 403
        root.file("KILL_API").write_text("stop")
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not root.file("KILL_API").exists()
    bad = subprocess.run([sys.executable, "-m", "imageselector", "--root", str(root.path), "run",
                          "etsy-api", "--fault", "nope=1"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2 and "unknown fault" in bad.stderr
