"""Helpers for the Etsy client and sync tests: a root wired to a local Etsy API, the DB's
content without timestamps, the catalogue's ground truth in the same shape, and a local
API in a forked process (so crawl children can be forked from a parent with no threads)."""
from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import time
import urllib.request
from pathlib import Path

from pipeline.core.fsutil import atomic_write_bytes
from pipeline.core.root import Root

KEY = "testkeystring1:testsharedsecret2"
DAY = 86400
FAST_RETRIES = {"retry_base_s": 0.01, "retry_max_s": 0.05, "max_attempts": 8,
                "timeout_s": 5.0, "connect_timeout_s": 2.0}


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value))


def make_root(path: Path, base_url: str, bands=(0, 50, 300, 1000000), qps: float = 1000.0,
              etsy: dict | None = None, sync: dict | None = None, daily_floor: int = 50,
              key: str = KEY, taxonomy_id: int = 967) -> Root:
    """A root whose sync talks to ``base_url`` with ``key`` (kept in a 0600 file)."""
    root = Root(path).ensure()
    key_file = root.path / "etsy.key"
    atomic_write_bytes(key_file, key.encode(), mode=0o600)
    etsy_cfg = {"base_url": base_url, "key_file": str(key_file), **FAST_RETRIES, **(etsy or {})}
    sync_cfg = {"threads": 1, **(sync or {})}
    text = ["[db]", 'synchronous = "NORMAL"', "", "[etsy]"]
    text += [f"{k} = {_toml(v)}" for k, v in etsy_cfg.items()]
    text += ["", "[sync]"] + [f"{k} = {_toml(v)}" for k, v in sync_cfg.items()]
    (root.path / "imageselector.toml").write_text("\n".join(text) + "\n")
    (root.db_dir / "qps_config.json").write_text(json.dumps(
        {"qps": qps, "daily_floor": daily_floor, "slowdown_fraction": 0.95}))
    write_bands(root, bands, taxonomy_id)
    return Root(path).ensure()


def write_bands(root: Root, bands, taxonomy_id: int = 967) -> None:
    (root.db_dir / "furniture_taxonomy_config.json").write_text(json.dumps(
        {"taxonomies": [{"id": taxonomy_id, "name": "Furniture", "price_breaks": list(bands)}]}))


def run_sync(root: Root, once: bool = True, phases: str | None = None, threads: int | None = None) -> int:
    from pipeline.core.stage_runtime import run_stage

    args = argparse.Namespace(once=once, phases=phases, threads=threads)
    return run_stage(root, "sync", once=once, args=args)


# ---------------------------------------------------------------------------
# What the DB holds, and what it should hold
# ---------------------------------------------------------------------------
def db_state(db_path) -> dict:
    conn = sqlite3.connect(str(db_path))
    try:
        price = dict(conn.execute(
            "SELECT listing_id, price_amount FROM listings_dynamic d WHERE snapshot_timestamp = "
            "(SELECT MAX(snapshot_timestamp) FROM listings_dynamic e WHERE e.listing_id = d.listing_id)"))
        listings = {lid: {"shop_id": shop, "taxonomy_id": tax, "title": title, "price_amount": price.get(lid)}
                    for lid, shop, tax, title in conn.execute(
                        "SELECT listing_id, shop_id, taxonomy_id, title FROM listings_static")}
        images = {(lid, iid): (rank, prim, url) for lid, iid, rank, prim, url in conn.execute(
            "SELECT listing_id, image_id, rank, is_primary, url FROM images")}
        status = {(lid, iid): st for lid, iid, st in conn.execute(
            "SELECT listing_id, image_id, state FROM image_status")}
        shops = {sid: count for sid, count in conn.execute(
            "SELECT shop_id, curr_review_count FROM shops_static WHERE last_dynamic_ts IS NOT NULL")}
        reviews = set(conn.execute("SELECT shop_id, listing_id, create_timestamp, rating FROM reviews"))
        counts = {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                  for t in ("listings_static", "listings_dynamic", "images", "image_status",
                            "shops_static", "shops_dynamic", "reviews", "taxonomy_static")}
        return {"listings": listings, "images": images, "status": status, "shops": shops,
                "reviews": reviews, "counts": counts}
    finally:
        conn.close()


def expected_state(cat, exclude=frozenset(), now: float | None = None, review_days: float = 30) -> dict:
    now = time.time() if now is None else now
    exp = cat.expected(exclude)
    listings = {lid: {k: v[k] for k in ("shop_id", "taxonomy_id", "title", "price_amount")}
                for lid, v in exp.items()}
    images = {}
    for lid, v in exp.items():
        for iid, rank, url in v["images"]:
            images[(lid, iid)] = (rank, int(iid == v["primary"]), url)
    shop_ids = {v["shop_id"] for v in exp.values()}
    shops = {sid: cat.review_count(cat.index_of_shop(sid)) for sid in shop_ids}
    reviews = set()
    for sid in shop_ids:
        s = cat.index_of_shop(sid)
        last = cat.shop_last_activity(s, exclude)
        if last is not None and last >= now - review_days * DAY:
            reviews |= {(r["shop_id"], r["listing_id"], r["create_timestamp"], r["rating"])
                        for r in cat.reviews(s)}
    return {"listings": listings, "images": images, "status": {k: "discovered" for k in images},
            "shops": shops, "reviews": reviews}


def assert_matches(state: dict, expected: dict) -> None:
    for name in ("listings", "images", "status", "shops", "reviews"):
        got, want = state[name], expected[name]
        if got != want:
            keys_got = set(got) if not isinstance(got, set) else got
            keys_want = set(want) if not isinstance(want, set) else want
            missing = list(keys_want - keys_got)[:3]
            extra = list(keys_got - keys_want)[:3]
            differ = [k for k in keys_got & keys_want if not isinstance(got, set) and got[k] != want[k]][:3]
            raise AssertionError(f"{name}: {len(keys_want - keys_got)} missing {missing}, "
                                 f"{len(keys_got - keys_want)} extra {extra}, differ {differ} "
                                 f"{[(got[k], want[k]) for k in differ]}")


# ---------------------------------------------------------------------------
# A local API in its own (forked) process, driven over its admin calls
# ---------------------------------------------------------------------------
class ServerProcess:
    """Fork a child that serves a LocalEtsyAPI; ``kwargs`` go to LocalEtsyAPI."""

    def __init__(self, **kwargs):
        kwargs.setdefault("api_key", KEY)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            code = 0
            try:
                os.close(r)
                from pipeline.sandbox.etsy_api import LocalEtsyAPI

                api = LocalEtsyAPI(**kwargs).start()
                os.write(w, str(api.port).encode())
                os.close(w)
                while True:
                    time.sleep(3600)
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        os.close(w)
        self.pid = pid
        port = os.read(r, 32)
        os.close(r)
        if not port:
            raise RuntimeError("local Etsy API child failed to start")
        self.port = int(port)
        self.root_url = f"http://127.0.0.1:{self.port}"
        self.base_url = self.root_url + "/v3/application"

    def admin(self, name: str, body: dict | None = None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.root_url}/_sandbox/{name}", data=data,
                                     method="GET" if data is None else "POST")
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def stats(self) -> dict:
        return self.admin("stats")

    def stop(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(self.pid, 0)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
