"""The sync against the local Etsy API as Etsy's OpenAPI spec describes it (real HTTP on
loopback): batch-only listing fields, the past-year review count, both spellings of the
per-second header, 404s for things deleted mid-pass, listings ending mid-crawl, and the
original's shop refresh rule."""
from __future__ import annotations

import json
import sqlite3
import time

import requests

from etsy_support import DAY, KEY, make_root, run_sync
from pipeline.core.fsutil import read_json_or_none
from pipeline.etsy.client import EtsyClient
from pipeline.sandbox.etsy_api import LocalEtsyAPI

H = {"x-api-key": KEY}


def _db(root) -> sqlite3.Connection:
    return sqlite3.connect(str(root.db_path), isolation_level=None)


def _counters(root) -> dict:
    return read_json_or_none(root.heartbeat_path("sync"))["counters"]


def _latest_views(conn) -> dict[int, int | None]:
    return dict(conn.execute(
        "SELECT d.listing_id, d.views FROM listings_dynamic d JOIN listings_static s "
        "ON s.listing_id = d.listing_id AND s.last_dynamic_ts = d.snapshot_timestamp"))


def test_views_and_production_partners_come_from_the_batch_call(tmp_path):
    with LocalEtsyAPI(listings=150, api_key=KEY) as api:
        cat = api.catalogue
        search = requests.get(api.base_url + "/listings/active", params={"limit": 100}, headers=H,
                              timeout=10).json()["results"]
        assert search and not any("views" in it or "production_partners" in it for it in search)
        ids = ",".join(str(it["listing_id"]) for it in search[:20])
        batched = requests.get(api.base_url + "/listings/batch", params={"listing_ids": ids, "includes": "Images"},
                               headers=H, timeout=10).json()["results"]
        assert all("views" in it and "production_partners" in it for it in batched)

        truth = {cat.listing_id(i): cat.associations(i) for i in range(cat.n)}
        assert any(t["production_partners"] for t in truth.values())
        root = make_root(tmp_path / "root", api.base_url)
        assert run_sync(root, phases="taxonomy,listings") == 0
        conn = _db(root)
        assert _latest_views(conn) == {lid: t["views"] for lid, t in truth.items()}
        partners = {lid: json.loads(p) for lid, p in conn.execute(
            "SELECT listing_id, production_partners FROM listings_static")}
        assert partners == {lid: t["production_partners"] for lid, t in truth.items()}

        # a re-crawl with no snapshot due skips the batch call and keeps what is stored
        assert run_sync(root) == 0  # finishes pass 1 (shops, reviews)
        api.reset_stats()
        assert run_sync(root) == 0
        assert api.stats()["counters"].get("batch", 0) == 0
        assert {lid: json.loads(p) for lid, p in conn.execute(
            "SELECT listing_id, production_partners FROM listings_static")} == partners

        # snapshots due: unchanged listings are batched so the new snapshot has its views
        conn.execute("UPDATE listings_static SET last_dynamic_ts = last_dynamic_ts - ?", (6 * DAY,))
        api.reset_stats()
        assert run_sync(root) == 0
        assert api.stats()["counters"]["batch"] > 0
        assert conn.execute("SELECT COUNT(*) FROM listings_dynamic").fetchone()[0] == 2 * cat.n
        assert _latest_views(conn) == {lid: t["views"] for lid, t in truth.items()}
        conn.close()


def _clock(cat, seconds: int) -> tuple[int, list[int]]:
    """(review_count, review times) of every shop at epoch + seconds."""
    saved = cat.clock_s
    cat.clock_s = seconds
    try:
        return {s: (cat.review_count(s), [r["create_timestamp"] for r in cat.reviews(s)])
                for s in range(cat.n_shops)}
    finally:
        cat.clock_s = saved


def _balanced_shop(cat) -> tuple[int, int]:
    """A shop active in the last 30 days and a clock step after which its past-year count is
    unchanged although a new review arrived (one left the year as one came in)."""
    now = _clock(cat, 0)
    active = {s for s in range(cat.n_shops)
              if (cat.shop_last_activity(s) or 0) >= time.time() - 25 * DAY}
    for days in range(1, 60):
        later = _clock(cat, days * DAY)
        for s in sorted(active):
            if now[s][0] == later[s][0] > 0 and len(later[s][1]) > len(now[s][1]):
                return s, days * DAY
    raise AssertionError("the catalogue has no balanced shop")


def test_review_count_is_past_year_and_balanced_new_reviews_are_not_missed(tmp_path):
    with LocalEtsyAPI(listings=400, api_key=KEY) as api:
        cat = api.catalogue
        counts = {s: (cat.review_count(s), len(cat.reviews(s))) for s in range(cat.n_shops)}
        assert all(c <= n for c, n in counts.values())
        assert any(c < n for c, n in counts.values()), "some reviews must be older than a year"
        shop = requests.get(f"{api.base_url}/shops/{cat.shop_id(0)}", headers=H, timeout=10).json()
        assert shop["review_count"] == counts[0][0]

        s, step = _balanced_shop(cat)
        sid = cat.shop_id(s)
        root = make_root(tmp_path / "root", api.base_url)
        assert run_sync(root) == 0
        conn = _db(root)
        stored = {r[0] for r in conn.execute("SELECT create_timestamp FROM reviews WHERE shop_id = ?", (sid,))}
        assert stored == set(_clock(cat, 0)[s][1])
        newest = max(stored)
        zero_checked = {r[0] for r in conn.execute(
            "SELECT shop_id FROM shops_static WHERE curr_review_count = 0 AND reviews_checked_at IS NOT NULL")}
        assert zero_checked

        cat.advance_clock(step)
        # the shop's snapshot is refreshed: its count is the same as at the last review fetch
        conn.execute("UPDATE shops_static SET last_dynamic_ts = last_dynamic_ts - ? WHERE shop_id = ?",
                     (6 * DAY, sid))
        api.reset_stats()
        assert run_sync(root) == 0
        curr, prev = conn.execute("SELECT curr_review_count, prev_review_count FROM shops_static "
                                  "WHERE shop_id = ?", (sid,)).fetchone()
        assert curr == prev, "the count did not move: 'fetch when the count changed' would skip it"
        stored = {r[0] for r in conn.execute("SELECT create_timestamp FROM reviews WHERE shop_id = ?", (sid,))}
        assert stored == set(_clock(cat, step)[s][1]) and max(stored) > newest
        asked = api.stats()["reviews"]
        assert f"{sid}|{newest}|0" in asked  # from the newest stored review
        # a shop with no review in the past year, at its last check too, is not asked again
        assert not {k.split("|")[0] for k in asked} & {str(z) for z in zero_checked
                                                        if _clock(cat, step)[z - cat.shop_id(0)][0] == 0}
        conn.close()


def test_per_second_header_is_read_in_both_spellings():
    for name in ("x-remaining-this-second", "x-remaining-this-secon"):
        with LocalEtsyAPI(listings=10, api_key=KEY, qps=40, second_header=name) as api:
            client = EtsyClient(api.base_url, KEY, qps=1000)
            resp = requests.get(api.base_url + "/listings/active", headers=H, timeout=10)
            assert name in resp.headers and (name == "x-remaining-this-secon") == (
                "x-remaining-this-second" not in resp.headers)
            client.find_active(None, None, None, 0, 5)
            left = client.quota.remaining_this_second
            assert left is not None and 0 <= left < 40, name
            client.close()


def test_listing_deleted_before_its_batch_call_is_gone_and_the_unit_goes_on(tmp_path):
    with LocalEtsyAPI(listings=160, api_key=KEY) as api:
        cat = api.catalogue
        deleted = {cat.listing_id(i) for i in (3, 50, 51, 120)}
        api.delete_listings(deleted)  # search still lists them; the batch call answers 404
        root = make_root(tmp_path / "root", api.base_url, bands=(0, 1000000))
        assert run_sync(root, phases="taxonomy,listings") == 0
        conn = _db(root)
        got = {r[0] for r in conn.execute("SELECT listing_id FROM listings_static")}
        assert got == set(cat.expected()) - deleted
        assert conn.execute("SELECT COUNT(*) FROM crawl_units WHERE exhausted != 1").fetchone()[0] == 0
        counters = _counters(root)
        assert counters["gone"] == len(deleted) and not counters.get("failed_items")
        assert api.stats()["counters"]["status_404"] > 0
        conn.close()


def test_shop_deleted_mid_pass_is_marked_gone_and_the_reviews_go_on(tmp_path):
    with LocalEtsyAPI(listings=300, api_key=KEY) as api:
        cat = api.catalogue
        root = make_root(tmp_path / "root", api.base_url)
        assert run_sync(root, phases="taxonomy,listings,shops") == 0
        conn = _db(root)
        due = [r[0] for r in conn.execute(
            "SELECT shop_id FROM shops_static WHERE curr_review_count > 0 AND last_activity_ts >= ? "
            "ORDER BY shop_id", (time.time() - 30 * DAY,))]
        assert len(due) >= 3
        gone = due[1]
        api.delete_shops([gone])
        before = conn.execute("SELECT last_dynamic_ts FROM shops_static WHERE shop_id = ?", (gone,)).fetchone()[0]
        assert run_sync(root, phases="reviews") == 0
        last_dynamic, checked = conn.execute("SELECT last_dynamic_ts, reviews_checked_at FROM shops_static "
                                             "WHERE shop_id = ?", (gone,)).fetchone()
        assert last_dynamic > before and checked is not None
        for sid in due:
            n = conn.execute("SELECT COUNT(*) FROM reviews WHERE shop_id = ?", (sid,)).fetchone()[0]
            assert n == (0 if sid == gone else len(cat.reviews(cat.index_of_shop(sid)))), sid
        counters = _counters(root)
        assert counters["shops_gone"] == 1 and not counters.get("failed_items")
        conn.close()


def _missed(tmp_path, name: str, overlap: int, end_per_search: int) -> tuple[int, int, dict]:
    with LocalEtsyAPI(listings=900, api_key=KEY, end_per_search=end_per_search) as api:
        root = make_root(tmp_path / name, api.base_url, bands=(0, 1000000),
                         sync={"page_size": 50, "page_overlap": overlap})
        assert run_sync(root, phases="taxonomy,listings") == 0
        ended = api.ended_ids()
        conn = _db(root)
        got = {r[0] for r in conn.execute("SELECT listing_id FROM listings_static")}
        conn.close()
        active = set(api.catalogue.expected()) - ended
        return len(active - got), len(ended), _counters(root)


def test_listings_ending_mid_crawl_skip_nothing_with_overlapping_pages(tmp_path):
    missed, ended, _ = _missed(tmp_path, "plain", overlap=0, end_per_search=3)
    assert ended > 0 and missed > 0, "without overlap the shift skips listings (the hole this closes)"
    missed, ended, _ = _missed(tmp_path, "overlap", overlap=5, end_per_search=3)
    assert ended > 0 and missed == 0
    # more ending between two pages than the overlap covers: the crawl looks back
    missed, ended, counters = _missed(tmp_path, "lookback", overlap=2, end_per_search=6)
    assert missed == 0 and counters.get("paging_lookbacks", 0) > 0


def test_shop_refresh_rule_active_in_7_days_snapshot_older_than_5(tmp_path):
    with LocalEtsyAPI(listings=300, shops=200, api_key=KEY) as api:
        cat = api.catalogue
        root = make_root(tmp_path / "root", api.base_url)
        assert run_sync(root) == 0
        conn = _db(root)
        shops = [r[0] for r in conn.execute("SELECT shop_id FROM shops_static ORDER BY shop_id")]
        now = time.time()
        # half the shops' snapshots are 6 days old (stale), the other half 4 days (fresh)
        stale = set(shops[::2])
        for sid in shops:
            conn.execute("UPDATE shops_static SET last_dynamic_ts = ? WHERE shop_id = ?",
                         (now - (6 if sid in stale else 4) * DAY, sid))
        api.reset_stats()
        assert run_sync(root) == 0
        asked = {int(k) for k in api.stats()["shops"]}
        active = {sid for sid in shops
                  if cat.shop_last_activity(cat.index_of_shop(sid)) >= now - 7 * DAY}
        assert asked == stale & active
        assert stale - active and active - stale  # both sides of each condition were present
        conn.close()
