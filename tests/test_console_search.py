"""The search pane: results as listing cards in rank order, thumbnails read from a tar by
offset, "more like this" on a card, and a clear message while search is not available."""
from __future__ import annotations

import asyncio
import io
import tarfile

import pytest
from PIL import Image

from console.adapters import load_thumbnail
from console.app import ConsoleApp
from console.widgets.listing_card import ListingCard
from tests.console_support import label_text, make_root, wait_until

pytestmark = [pytest.mark.timeout(90),
              pytest.mark.filterwarnings("ignore:Image.Image.getdata:DeprecationWarning")]


def write_primary_tar(path, listing_ids) -> dict:
    """A primary-image tar; returns listing_id -> {"path", "offset", "size"}."""
    where = {}
    with tarfile.open(path, "w") as tar:
        for i, lid in enumerate(listing_ids):
            buf = io.BytesIO()
            Image.new("RGB", (64, 48), (40 * i % 255, 90, 160)).save(buf, "JPEG")
            info = tarfile.TarInfo(f"{lid}.jpg")
            info.size = len(buf.getvalue())
            tar.addfile(info, io.BytesIO(buf.getvalue()))
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            lid = int(member.name.split(".")[0])
            where[lid] = {"path": str(path), "offset": member.offset_data, "size": member.size}
    return where


def test_thumbnail_is_read_from_the_tar_by_offset(tmp_path):
    where = write_primary_tar(tmp_path / "imageprimary_00000.tar", [11, 22])
    image = load_thumbnail(None, where[22], max_px=32)
    assert image.size == (32, 24) and image.mode == "RGB"
    assert load_thumbnail(None, None) is None


def test_search_shows_cards_in_rank_order_and_more_like_this(tmp_path):
    from textual_image.widget import HalfcellImage

    root = make_root(tmp_path / "root")
    where = write_primary_tar(root.primary_dir / "imageprimary_00000.tar", [101, 202, 303])
    results = [
        {"listing_id": 202, "title": "Walnut side table", "price": 240.0, "currency": "USD",
         "shop": "OakAndIron", "score": 0.0491, "agree": 3,
         "models": {"clip_vitb32": {"rank": 1, "score": 0.9}, "dinov2_base": {"rank": 1, "score": 0.8},
                    "dinov3_base": {"rank": 2, "score": 0.7}}, "primary_image": where[202]},
        {"listing_id": 101, "title": "Oak bench", "price": 180.0, "shop": "Benchly", "score": 0.0163,
         "agree": 1, "models": {"clip_vitb32": {"rank": 4, "score": 0.6}}, "primary_image": where[101]},
        {"listing_id": 303, "title": "Broken image", "price": 10, "shop": "x", "score": 0.1,
         "primary_image": {"path": "missing.tar", "offset": 0, "size": 10}},
    ]
    asked = []
    app = ConsoleApp(root, image_class=HalfcellImage)
    app.sources.search = lambda r, query, k: asked.append((query, k)) or (results, [])
    app.sources.more_like_this = lambda r, lid, k: asked.append(("like", lid)) or (results[1:2], [])

    async def scenario() -> None:
        async with app.run_test(size=(140, 45)) as pilot:
            await pilot.press("3")  # the search tab; its input takes the focus
            await wait_until(pilot, lambda: app.focused is app.query_one("#search-input"))
            await pilot.press(*"walnut", "enter")
            pane = app.query_one("#search-pane")
            await wait_until(pilot, lambda: len(pane.cards()) == 3, what="three cards")
            cards = pane.cards()
            assert [c.result["listing_id"] for c in cards] == [202, 101, 303]
            assert asked[0] == ("walnut", 24)
            assert isinstance(cards[0].query_one(".card-image"), HalfcellImage)
            assert "3 models agree" in label_text(cards[0].query_one(".card-score"))
            assert label_text(cards[0].query_one(".card-ranks")) == "B32#1 D2b#1 D3b#2"
            assert label_text(cards[2].query_one(".card-image")) == "no image"
            cards[1].focus()
            await pilot.press("enter")
            await wait_until(pilot, lambda: [c.result["listing_id"] for c in pane.cards()] == [101],
                             what="more like this")
            assert asked[-1] == ("like", 101)
            assert "more like listing 101" in label_text(pane.query_one("#search-message"))

    asyncio.run(scenario())


def test_search_pane_finds_the_ground_truth_listing_first(tmp_path):
    """A synthetic collection whose answer is known (tests/index_support.py): the pane asks
    the real pipeline.search.query for listings like 101, and the other photos of the same object
    (102, 103) come first."""
    from pipeline.index import IndexStore
    from tests.index_support import Collection, open_db

    root = make_root(tmp_path / "root")
    conn = open_db(root)
    store = IndexStore.for_root(root, capacity=200)
    store.open(conn)
    Collection(root, conn, store)
    conn.close()
    app = ConsoleApp(root, image_class=None)

    async def scenario() -> None:
        async with app.run_test(size=(140, 45)) as pilot:
            await pilot.press("3")
            app.query_one("#search-input").focus()
            await pilot.press(*"listing:101", "enter")
            pane = app.query_one("#search-pane")
            await wait_until(pilot, lambda: pane.cards(), timeout=60, what="results")
            lids = [c.result["listing_id"] for c in pane.cards()]
            assert set(lids[:2]) == {102, 103}
            assert 101 not in lids
            assert "oak chair" in label_text(pane.cards()[0].query_one(".card-title"))

    asyncio.run(scenario())


def test_empty_index_and_bad_query_are_messages(tmp_path):
    root = make_root(tmp_path / "root")
    app = ConsoleApp(root, image_class=None)

    async def scenario() -> None:
        async with app.run_test(size=(140, 45)) as pilot:
            await pilot.press("3")
            app.query_one("#search-input").focus()
            await pilot.press(*"chair", "enter")
            message = app.query_one("#search-message")
            await wait_until(pilot, lambda: "is empty: nothing to search" in label_text(message),
                             what="the empty-store message")
            app.query_one("#search-input").value = "listing:abc"
            await pilot.press("enter")
            await wait_until(pilot, lambda: "is not a listing id" in label_text(message))
            app.query_one("#search-input").value = "/no/such/photo.jpg"
            await pilot.press("enter")
            await wait_until(pilot, lambda: "does not exist" in label_text(message))
            assert not app.query(ListingCard)

    asyncio.run(scenario())


def test_escape_leaves_the_query_box_and_keys_work_again(tmp_path):
    root = make_root(tmp_path / "root")
    app = ConsoleApp(root, image_class=None)
    seen = {}

    async def scenario() -> None:
        async with app.run_test(size=(160, 48)) as pilot:
            await pilot.press("3")
            field = app.query_one("#search-input")
            assert app.focused is field
            await pilot.press("o", "a", "k")
            await pilot.press("escape")
            seen["focus_after_escape"] = app.focused
            await pilot.press("question_mark")       # help opens from the search tab
            seen["help"] = type(app.screen).__name__
            await pilot.press("escape")
            await pilot.press("1")                    # and tab switching works
            seen["tab"] = app.panels.tabs.active
            await pilot.press("3")                    # back: the query is kept, and the
            await pilot.press("s")                    # first key does not replace it
            seen["value"] = field.value

    asyncio.run(scenario())
    assert seen["focus_after_escape"] is None
    assert seen["help"] == "HelpScreen"
    assert seen["tab"] == "dashboard"
    assert seen["value"] == "oaks"
