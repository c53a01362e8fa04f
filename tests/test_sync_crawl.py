"""The sync stage against the local Etsy API over real HTTP: the DB ends up equal to the
catalogue, whatever the API throws at it."""
from __future__ import annotations

import json
import sqlite3

import pytest

from etsy_support import (KEY, assert_matches, db_state, expected_state, make_root, run_sync,
                          write_bands)
from pipeline.core.fsutil import read_json_or_none
from pipeline.sandbox.etsy_api import LocalEtsyAPI
from pipeline.stages.sync.crawl import EXIT_QUOTA


def test_full_crawl_equals_catalogue_and_recrawl_is_cheap(tmp_path):
    with LocalEtsyAPI(listings=300, api_key=KEY) as api:
        root = make_root(tmp_path / "root", api.base_url, sync={"threads": 2})
        assert run_sync(root) == 0
        state = db_state(root.db_path)
        assert_matches(state, expected_state(api.catalogue))
        # no duplicate rows: one dynamic snapshot per listing and shop
        assert state["counts"]["listings_dynamic"] == state["counts"]["listings_static"] == 300
        assert state["counts"]["shops_dynamic"] == len(state["shops"])
        assert state["counts"]["taxonomy_static"] == 49
        hb = read_json_or_none(root.heartbeat_path("sync"))
        assert hb["exit"]["code"] == 0
        assert hb["counters"]["listings"] == 300 and hb["counters"]["images_new"] == len(state["images"])
        assert hb["info"]["phase"] == "done" and hb["info"]["requests_today"] > 0
        first = api.stats()["counters"]
        # exactly one page per 100 listings and one batch per page (3 bands)
        assert first["batch"] == first["search"]
        # a second pass: known, unchanged listings need no batch call, shops are fresh
        api.reset_stats()
        assert run_sync(root) == 0
        again = api.stats()["counters"]
        assert again.get("batch", 0) == 0 and again.get("shop", 0) == 0
        assert db_state(root.db_path)["counts"] == state["counts"]


def test_leaf_beyond_the_offset_cap_is_covered_by_price_bands(tmp_path):
    with LocalEtsyAPI(listings=20, api_key=KEY, big_leaf=(977, 12600)) as api:
        root = make_root(tmp_path / "root", api.base_url, bands=(0, 1000000))
        assert run_sync(root, phases="listings") == 0
        conn = sqlite3.connect(root.db_path)
        got = {r[0] for r in conn.execute("SELECT listing_id FROM listings_static")}
        assert got == set(api.catalogue.expected())
        units = conn.execute("SELECT min_price, max_price, total_count, exhausted, split_from "
                             "FROM crawl_units ORDER BY min_price").fetchall()
        assert any(u[3] == 2 for u in units), "the oversized band must be split"
        assert all(u[2] <= 12000 for u in units if u[3] == 1)
        assert all(u[4] is not None for u in units if u[3] == 1)
        stats = api.stats()["counters"]
        assert stats.get("status_400", 0) == 0
        # the split is saved: a new pass starts from the parts, not from the one big band
        from pipeline.stages.sync import units as crawl_units

        before = conn.execute("SELECT unit_id, exhausted FROM crawl_units ORDER BY unit_id").fetchall()
        conn.execute("BEGIN IMMEDIATE")
        crawl_units.reset_for_pass(conn, 2)
        crawl_units.sync_units_with_config(conn, [(967, 0, 100000000)], 2)
        conn.execute("COMMIT")
        after = conn.execute("SELECT unit_id, exhausted FROM crawl_units ORDER BY unit_id").fetchall()
        assert [u for u, _ in after] == [u for u, _ in before]
        assert [e for _, e in after] == [2 if e == 2 else 0 for _, e in before]
        first = crawl_units.next_unit(conn, set())
        assert first.split_from is not None if hasattr(first, "split_from") else first.max_cents < 100000000
        conn.close()


FAULTS = [
    ("429", {"429": (0.15, 2)}),
    ("5xx", {"5xx": (0.15, 2)}),
    ("html", {"html": (0.15, 1)}),
    ("malformed", {"malformed": (0.15, 1)}),
    ("error200", {"error200": (0.15, 1)}),
    ("bad_fields", {"bad_fields": (0.2, 1)}),
    ("drop", {"drop": (0.15, 2)}),
    ("slow", {"slow": (0.05, 1)}),
    ("all", {"429": (0.05, 1), "5xx": (0.05, 2), "malformed": (0.05, 1), "drop": (0.05, 1),
             "bad_fields": (0.05, 1), "html": (0.03, 1), "error200": (0.03, 1)}),
]


@pytest.mark.parametrize("name,faults", FAULTS, ids=[f[0] for f in FAULTS])
def test_each_fault_switch_gives_the_same_result(tmp_path, name, faults):
    with LocalEtsyAPI(listings=100, api_key=KEY, faults=faults, retry_after_s=0, slow_s=0.4,
                      fault_seed=7) as api:
        root = make_root(tmp_path / "root", api.base_url, sync={"page_size": 25, "threads": 2},
                         etsy={"timeout_s": 0.25, "max_attempts": 12})
        assert run_sync(root) == 0
        assert_matches(db_state(root.db_path), expected_state(api.catalogue))
        assert api.stats()["faults"]["injected"], "the fault switch must have fired"


def test_vanished_listings_are_skipped_whole(tmp_path):
    with LocalEtsyAPI(listings=120, api_key=KEY, faults={"vanish": 0.1}) as api:
        gone = api.vanished_ids()
        assert gone
        root = make_root(tmp_path / "root", api.base_url)
        assert run_sync(root) == 0
        state = db_state(root.db_path)
        assert_matches(state, expected_state(api.catalogue, exclude=gone))
        assert not gone & set(state["listings"])
        hb = read_json_or_none(root.heartbeat_path("sync"))
        assert hb["counters"]["vanished"] == len(gone)


def test_bad_items_that_stay_bad_are_logged_counted_and_not_stored(tmp_path):
    with LocalEtsyAPI(listings=60, api_key=KEY) as api:
        root = make_root(tmp_path / "root", api.base_url, etsy={"max_attempts": 2},
                         sync={"page_size": 20})
        api.set_fault("bad_fields", 1.0)  # every answer has one broken listing or review
        code = run_sync(root, phases="taxonomy,listings")
        assert code == 0
        state = db_state(root.db_path)
        truth = api.catalogue.expected()
        assert set(state["listings"]) < set(truth)
        # whatever was stored is complete: every stored listing has all its images
        for lid in state["listings"]:
            want = {(lid, iid) for iid, _, _ in truth[lid]["images"]}
            have = {k for k in state["images"] if k[0] == lid}
            assert have in (want, set())
            assert have == want or lid not in {k[0] for k in state["images"]}
        hb = read_json_or_none(root.heartbeat_path("sync"))
        assert hb["counters"]["invalid_items"] >= 3
        log = root.log_path("sync").read_text()
        assert "skipped a" in log and "(request " in log
        # once the API is healthy again, this pass ends and the next one completes the catalogue
        api.clear_faults()
        assert run_sync(root) == 0
        assert set(db_state(root.db_path)["listings"]) == set(state["listings"])
        assert run_sync(root) == 0
        assert_matches(db_state(root.db_path), expected_state(api.catalogue))


def test_a_failing_phase_fails_the_run_writes_nothing_partial_and_resumes(tmp_path):
    with LocalEtsyAPI(listings=120, api_key=KEY) as api:
        root = make_root(tmp_path / "root", api.base_url, etsy={"max_attempts": 2},
                         sync={"page_size": 50})
        api.set_fault("5xx", 1.0)
        assert run_sync(root) == 1  # the original exited 0 here
        conn = sqlite3.connect(root.db_path)
        assert conn.execute("SELECT COUNT(*) FROM listings_static").fetchone()[0] == 0
        assert conn.execute("SELECT COUNT(*) FROM image_status").fetchone()[0] == 0
        assert conn.execute("SELECT MAX(next_offset) FROM crawl_units").fetchone()[0] == 0
        outcome = conn.execute("SELECT outcome, reason FROM stage_runs ORDER BY run_id DESC").fetchone()
        assert outcome[0] == "failed" and "failed" in outcome[1]
        conn.close()
        hb = read_json_or_none(root.heartbeat_path("sync"))
        assert hb["exit"]["code"] == 1
        api.clear_faults()
        assert run_sync(root) == 0
        assert_matches(db_state(root.db_path), expected_state(api.catalogue))


def test_html_error_page_and_error_body_are_never_stored(tmp_path):
    with LocalEtsyAPI(listings=40, api_key=KEY) as api:
        root = make_root(tmp_path / "root", api.base_url, etsy={"max_attempts": 3})
        api.set_fault("html", 1.0)
        assert run_sync(root, phases="listings") == 1
        api.clear_faults()
        api.set_fault("error200", 1.0)
        assert run_sync(root, phases="listings") == 1
        conn = sqlite3.connect(root.db_path)
        assert conn.execute("SELECT COUNT(*) FROM listings_static").fetchone()[0] == 0
        conn.close()
        log = root.log_path("sync").read_text()
        assert "not JSON (text/html" in log and "error body with HTTP 200" in log


def test_quota_stop_with_once_then_resume_the_next_day(tmp_path):
    with LocalEtsyAPI(listings=150, api_key=KEY, qpd=12, day_s=2.0) as api:
        root = make_root(tmp_path / "root", api.base_url, daily_floor=2, sync={"page_size": 25})
        assert run_sync(root) == EXIT_QUOTA
        hb = read_json_or_none(root.heartbeat_path("sync"))
        assert "quota" in hb["exit"]["reason"]
        conn = sqlite3.connect(root.db_path)
        kinds = [r[0] for r in conn.execute("SELECT kind FROM alerts")]
        assert "quota_spent" in kinds
        stats = api.stats()["counters"]
        # the floor is kept, and a page is not started without the request for its batch call
        assert 8 <= stats["requests"] <= 10 and stats.get("status_429", 0) == 0
        # the next "day": the run resumes where it stopped, and only pages not yet stored
        api.set_limits(qps=None, qpd=None)
        while True:
            code = run_sync(root)
            if code == 0:
                break
            assert code == EXIT_QUOTA
        assert_matches(db_state(root.db_path), expected_state(api.catalogue))
        searches = api.stats()["search"]
        assert max(searches.values()) == 1, "a finished page was fetched again"
        conn.close()


def test_without_once_a_spent_quota_blocks_until_it_returns(tmp_path):
    with LocalEtsyAPI(listings=60, api_key=KEY, qpd=4, day_s=0.6) as api:
        root = make_root(tmp_path / "root", api.base_url, daily_floor=1,
                         etsy={"quota_recheck_s": 0.3}, sync={"page_size": 20})
        assert run_sync(root, once=False, phases="taxonomy,listings") == 0
        assert set(db_state(root.db_path)["listings"]) == set(api.catalogue.expected())
        assert max(api.stats()["search"].values()) == 1
        assert "blocked: Etsy daily quota spent" in root.log_path("sync").read_text()


def test_refused_key_fails_the_run_clearly(tmp_path):
    with LocalEtsyAPI(listings=10, api_key=KEY) as api:
        root = make_root(tmp_path / "root", api.base_url, key=KEY.split(":")[0] + ":nottheone")
        assert run_sync(root) == 1
        hb = read_json_or_none(root.heartbeat_path("sync"))
        assert "refused the key" in hb["exit"]["reason"]


def test_the_key_never_reaches_logs_or_db(tmp_path):
    keystring, secret = KEY.split(":")
    with LocalEtsyAPI(listings=80, api_key=KEY, faults={"5xx": (0.2, 1), "malformed": (0.2, 1),
                                                        "drop": (0.1, 1), "bad_fields": (0.1, 1)}) as api:
        root = make_root(tmp_path / "root", api.base_url, etsy={"max_attempts": 12})
        assert run_sync(root) == 0
    blobs = [p.read_bytes() for p in list(root.logs_dir.glob("*")) + list(root.run_dir.glob("*.json"))
             + list(root.db_dir.glob("etsy_data.db*"))]
    assert blobs and any(b"WARNING" in b for b in blobs)  # there were problems to log
    for blob in blobs:
        for secret_text in (KEY, keystring, secret):
            assert secret_text.encode() not in blob


def test_band_config_changes_take_effect(tmp_path):
    with LocalEtsyAPI(listings=60, api_key=KEY) as api:
        root = make_root(tmp_path / "root", api.base_url, bands=(0, 100, 1000000))
        assert run_sync(root, phases="listings") == 0
        write_bands(root, (0, 20, 200, 1000000))
        conn = sqlite3.connect(root.db_path)
        conn.execute("DELETE FROM sync_state WHERE key = 'sync_pass'")
        conn.commit()
        assert run_sync(root, phases="listings") == 0
        bands = conn.execute("SELECT min_price, max_price FROM crawl_units WHERE split_from IS NULL "
                             "ORDER BY min_price").fetchall()
        assert bands == [(0.0, 20.0), (20.01, 200.0), (200.01, 1000000.0)]
        conn.close()
        assert set(db_state(root.db_path)["listings"]) == set(api.catalogue.expected())


def test_bad_band_config_is_one_clear_error(tmp_path):
    with LocalEtsyAPI(listings=5, api_key=KEY) as api:
        root = make_root(tmp_path / "root", api.base_url)
        (root.db_dir / "furniture_taxonomy_config.json").write_text(json.dumps(
            {"taxonomies": [{"id": 967, "price_breaks": [0, 50, 20]}]}))
        assert run_sync(root) == 2
        hb = read_json_or_none(root.heartbeat_path("sync"))
        assert "price_breaks must increase" in hb["exit"]["reason"]


def test_primary_moves_when_etsy_reorders_images(tmp_path):
    from pipeline.core.db import connect, transaction
    from pipeline.stages.sync.store import write_listings

    conn = connect(tmp_path / "db.sqlite")
    item = {"listing_id": 7, "shop_id": 3, "title": "t", "price": {"amount": 100, "divisor": 100,
                                                                    "currency_code": "USD"},
            "last_modified_timestamp": 1}

    def image(iid, rank):
        return {"listing_image_id": iid, "rank": rank, "url_570xN": f"http://x/{iid}.jpg",
                "url_fullxfull": f"http://x/{iid}f.jpg"}

    with transaction(conn):
        assert write_listings(conn, [item], {7: [image(1, 1), image(2, 2)]}, 1000.0, 5 * 86400,
                              "url_570xN") == (1, 2)
    with transaction(conn):
        assert write_listings(conn, [item], {7: [image(2, 1), image(3, 2)]}, 2000.0, 5 * 86400,
                              "url_570xN") == (1, 1)
    rows = dict(conn.execute("SELECT image_id, is_primary FROM images WHERE listing_id = 7"))
    assert rows == {1: 0, 2: 1, 3: 0}
    # within the refresh window no second dynamic snapshot; the listing was not duplicated
    assert conn.execute("SELECT COUNT(*) FROM listings_dynamic").fetchone()[0] == 1
    with transaction(conn):
        write_listings(conn, [item], {7: None}, 1000.0 + 5 * 86400, 5 * 86400, "url_570xN")
    assert conn.execute("SELECT COUNT(*) FROM listings_dynamic").fetchone()[0] == 2
    conn.close()
