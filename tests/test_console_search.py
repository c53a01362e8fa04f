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
from pipeline.core.errors import UserError
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


FIVE = {"clip_vitb32": {"rank": 1, "score": 0.9}, "clip_vitl14": {"rank": 1, "score": 0.9},
        "dinov2_base": {"rank": 1, "score": 0.8}, "dinov2_large": {"rank": 2, "score": 0.8},
        "dinov3_base": {"rank": 2, "score": 0.7}}


class FakeHelper:
    """Stands in for pipeline/search/helper_client.py: answers from a list, records each
    SearchRequest the pane built."""

    def __init__(self, results):
        self.results = results
        self.asked = []
        self.stopped = False

    def stop(self):
        self.stopped = True

    def search(self, helper, request, progress):
        assert helper is self
        self.asked.append(request)
        progress("searching")
        if request.listing == 999:
            raise UserError("listing 999 is not in the index")
        if request.same_as is not None:
            return {"results": self.results[1:2], "groups": [
                {"shop": "Benchly", "listings": self.results[1:2]}], "notes": ["same item: ..."]}
        return {"results": self.results[:request.k], "warnings": [], "took_s": 0.01}


def test_search_shows_cards_in_rank_order_and_more_like_this(tmp_path):
    from textual_image.widget import HalfcellImage

    root = make_root(tmp_path / "root")
    where = write_primary_tar(root.primary_dir / "imageprimary_00000.tar", [101, 202, 303])
    results = [
        {"listing_id": 202, "url": "https://www.etsy.com/listing/202", "title": "Walnut side table",
         "price": 240.0, "currency": "USD", "shop": "OakAndIron", "score": 0.0491, "agree": 5,
         "models": FIVE, "primary_image": where[202]},
        {"listing_id": 101, "title": "Oak bench", "price": 180.0, "shop": "Benchly", "score": 0.0163,
         "agree": 1, "models": {"clip_vitb32": {"rank": 4, "score": 0.6}}, "primary_image": where[101]},
        {"listing_id": 303, "title": "Broken image", "price": 10, "shop": "x", "score": 0.1,
         "primary_image": {"path": "missing.tar", "offset": 0, "size": 10}},
    ]
    fake = FakeHelper(results)
    app = ConsoleApp(root, image_class=HalfcellImage)
    app.sources.open_search_helper = lambda r: fake
    app.sources.search = fake.search

    async def scenario() -> None:
        async with app.run_test(size=(140, 45)) as pilot:
            await pilot.press("3")  # the search tab; its input takes the focus
            await wait_until(pilot, lambda: app.focused is app.query_one("#search-input"))
            await pilot.press(*"walnut price:20-300", "enter")
            pane = app.query_one("#search-pane")
            await wait_until(pilot, lambda: len(pane.cards()) == 3, what="three cards")
            cards = pane.cards()
            assert [c.result["listing_id"] for c in cards] == [202, 101, 303]
            req = fake.asked[0]   # the pane built the request; the helper ran it
            assert (req.text, req.k, req.filters.min_price, req.filters.max_price) == \
                ("walnut", 24, 20.0, 300.0)
            assert isinstance(cards[0].query_one(".card-image"), HalfcellImage)
            assert label_text(cards[0].query_one(".card-score")) == "#202 · score 0.0491"
            assert label_text(cards[0].query_one(".card-meta")) == "240.00 USD · OakAndIron"
            # all five ranks, on a line that wraps instead of being cut off
            ranks = cards[0].query_one(".card-ranks")
            assert label_text(ranks) == "5 agree: B32#1 L14#1 D2b#1 D2L#2 D3b#2"
            assert ranks.size.height == 2 and ranks.size.width * 2 >= len(label_text(ranks))
            assert label_text(cards[2].query_one(".card-image")) == "no image"
            assert pane.selected is cards[0]
            await pilot.press("escape")               # leave the box: the pane's keys act
            await pilot.press("o")
            assert app.clipboard == "https://www.etsy.com/listing/202"
            await pilot.press("e")                    # same item elsewhere
            await wait_until(pilot, lambda: fake.asked[-1].same_as == 202, what="same-as")
            message = pane.query_one("#search-message")
            await wait_until(pilot, lambda: "Benchly: #101 180.00" in label_text(message))
            pane.cards()[0].focus()
            await pilot.press("enter")                # more like this on the focused card
            await wait_until(pilot, lambda: fake.asked[-1].listing == 101, what="more like this")
            assert pane.field.value == "listing:101"
            await pilot.press("up", "up")              # the history: back two queries
            assert pane.field.value == "same:202"
            assert app.focused is pane.field
            pane.field.value = "listing:999"
            await pilot.press("enter")                # an error clears the previous results
            await wait_until(pilot, lambda: "listing 999 is not in the index" in label_text(message))
            await wait_until(pilot, lambda: not pane.cards(), what="results cleared")

    asyncio.run(scenario())
    assert fake.stopped   # quitting stops the helper the console started


def test_pages_and_cancel(tmp_path):
    """n and p page through the same query (the request asks for k of every page so far);
    Escape while a search runs stops waiting and drops its late answer."""
    import threading

    root = make_root(tmp_path / "root", console={"search_k": 2})
    results = [{"listing_id": 500 + i, "title": f"chair {i}", "price": 10 + i, "shop": "s",
                "score": 0.1, "agree": 1, "models": {"clip_vitb32": {"rank": i + 1}}}
               for i in range(5)]
    fake = FakeHelper(results)
    release = threading.Event()

    def slow(helper, request, progress):
        if request.text == "slow":
            progress("loading the models")
            release.wait(20)
        return fake.search(helper, request, progress)

    app = ConsoleApp(root, image_class=None)
    app.sources.open_search_helper = lambda r: fake
    app.sources.search = slow

    async def scenario() -> None:
        async with app.run_test(size=(140, 45)) as pilot:
            pane = app.query_one("#search-pane")
            message = pane.query_one("#search-message")
            lids = lambda: [c.result["listing_id"] for c in pane.cards()]  # noqa: E731
            await pilot.press("3", *"chair", "enter", "escape")
            await wait_until(pilot, lambda: lids() == [500, 501])
            await pilot.press("n")
            await wait_until(pilot, lambda: lids() == [502, 503], what="page 2")
            assert fake.asked[-1].k == 4 and "page 2" in label_text(message)
            assert label_text(pane.cards()[0].query_one(".card-title")).startswith("3. ")
            await pilot.press("n")
            await wait_until(pilot, lambda: lids() == [504], what="page 3")
            await pilot.press("n")                    # a short page is the last one
            await pilot.press("p")
            await wait_until(pilot, lambda: lids() == [502, 503], what="back to page 2")
            app.query_one("#search-input").focus()
            pane.field.value = "slow"
            await pilot.press("enter")
            await wait_until(pilot, lambda: "loading the models" in label_text(message))
            assert "Escape cancels" in label_text(message)
            await pilot.press("escape")
            assert "cancelled" in label_text(message)
            release.set()                             # the late answer comes and is dropped
            await wait_until(pilot, lambda: len(fake.asked) == 5, what="late answer")
            await pilot.pause(0.2)
            assert not pane.cards() and "cancelled" in label_text(message)

    asyncio.run(scenario())
    refused = (root.logs_dir / "console_commands.log").read_text()
    assert "page 3 is the last one" in refused


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
            await wait_until(pilot, lambda: "is neither a listing id" in label_text(message))
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
