"""`imageselector init price-breaks` and `init taxonomy`: the original's band algorithm,
against the local Etsy API, written atomically where the sync reads it."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from etsy_support import KEY, make_root
from pipeline.core.errors import UserError
from pipeline.stages.sync.pricebreaks import compute_breaks
from pipeline.sandbox.catalogue import Catalogue
from pipeline.sandbox.etsy_api import LocalEtsyAPI
from pipeline.stages.sync.units import load_band_config
from support import run_cli

REPO = Path(__file__).resolve().parent.parent


def _bands(breaks):
    return [(lo if i == 0 else lo + 1, hi) for i, (lo, hi) in enumerate(zip(breaks, breaks[1:]))]


def test_bands_hold_just_under_the_target():
    cat = Catalogue(listings=2000, seed=3)
    calls = []

    def count(lo, hi):
        calls.append((lo, hi))
        return cat.count_in_band(967, lo, hi)

    breaks = compute_breaks(count, 150, 100_000_000)
    bands = _bands(breaks)
    assert breaks[0] == 0 and breaks[-1] == 100_000_000
    assert sum(cat.count_in_band(967, lo, hi) for lo, hi in bands) == 2000  # no gap, no overlap
    for lo, hi in bands[:-1]:
        assert cat.count_in_band(967, lo, hi) < 150
        # the step before the last 1% shrink still held the target
        assert cat.count_in_band(967, lo, math.ceil(hi / 0.99) + 1) >= 150
    assert len(bands) >= 2000 // 150


def test_bad_target_is_refused():
    with pytest.raises(UserError):
        compute_breaks(lambda lo, hi: 0, 0, 100)


def test_cli_writes_the_band_config_the_sync_reads(tmp_path):
    with LocalEtsyAPI(listings=900, api_key=KEY) as api:
        root = make_root(tmp_path / "root", api.base_url)
        path = root.db_dir / "furniture_taxonomy_config.json"
        before = path.read_text()
        dry = run_cli("init", "price-breaks", "--target", "200", "--dry-run", root=root)
        assert dry.returncode == 0, dry.stderr
        assert path.read_text() == before
        done = run_cli("init", "price-breaks", "--target", "200", root=root)
        assert done.returncode == 0, done.stderr
        data = json.loads(path.read_text())
        entry = [e for e in data["taxonomies"] if e["id"] == 967]
        assert len(entry) == 1 and entry[0]["price_breaks"][0] == 0
        assert entry[0]["price_breaks"][-1] == 1000000
        bands = load_band_config(path)
        cat = api.catalogue
        counts = [cat.count_in_band(967, lo, hi) for _, lo, hi in bands]
        assert sum(counts) == 900 and all(c < 200 for c in counts)
        assert api.stats()["counters"]["search"] > len(bands)  # one count per step


def test_cli_refuses_bad_input_in_one_line(tmp_path):
    with LocalEtsyAPI(listings=10, api_key=KEY) as api:
        root = make_root(tmp_path / "root", api.base_url)
        bad = run_cli("init", "price-breaks", "--target", "0", root=root)
        assert bad.returncode == 2
        assert bad.stderr.strip().count("\n") == 0 and "target" in bad.stderr
        api.set_fault("5xx", 1.0)
        broken = run_cli("init", "price-breaks", "--target", "5", root=root)
        assert broken.returncode == 2 and "was not changed" in broken.stderr
        assert KEY.split(":")[1] not in broken.stderr + broken.stdout


def test_init_taxonomy_writes_the_committed_ids(tmp_path):
    with LocalEtsyAPI(listings=10, api_key=KEY) as api:
        root = make_root(tmp_path / "root", api.base_url)
        for name in ("furniture_taxonomy_ids.json", "furniture_leaf_taxonomy_ids.json"):
            (root.db_dir / name).unlink()
        done = run_cli("init", "taxonomy", root=root)
        assert done.returncode == 0, done.stderr
        for name in ("furniture_taxonomy_ids.json", "furniture_leaf_taxonomy_ids.json"):
            assert json.loads((root.db_dir / name).read_text()) == \
                json.loads((REPO / "data" / "db" / name).read_text())
