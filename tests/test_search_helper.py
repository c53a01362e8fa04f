"""The search helper process (pipeline/search/helper.py, issue 18): the console's searches run
in a child process that holds the models, so the console never imports torch; it is reused
between queries, remembers repeated texts, restarts after it died, stops after its idle time
and when the console quits. Against a sandbox catalogue's index (synthetic vectors laid out by
its near-duplicate groups, tests/test_search_query.py) with the test-profile models."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pipeline.core.errors import UserError
from pipeline.search.helper_client import SearchHelperClient
from pipeline.search.settings import SearchSettings
from pipeline.search.helper_query import parse_query_text, request_from_json, request_to_json
from tests.console_support import toml_value
from tests.models_support import furniture_jpeg

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def catalogue_root(tmp_path_factory):
    from pipeline.core.root import Root
    from pipeline.sandbox.catalogue import Catalogue
    from pipeline.search.calibrate import build_catalogue_index
    from tests.test_search_query import EPOCH, synthetic_vectors

    path = tmp_path_factory.mktemp("helper") / "root"
    path.mkdir()
    sections = {"root": {"profile": "sandbox"}, "models": {"profile": "test"},
                "console": {"refresh_s": 0.2, "thumbnails": "none", "search_k": 6}}
    path.joinpath("imageselector.toml").write_text("".join(
        f"[{name}]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in values.items())
        for name, values in sections.items()))
    root = Root(path).ensure()
    cat = Catalogue(listings=30, seed=7, similar_groups=3, group_size=3, epoch=EPOCH)
    build_catalogue_index(root, cat, None, None, vectors_for=synthetic_vectors(cat))
    (path / "query.jpg").write_bytes(furniture_jpeg(3))
    return root, cat


CONSOLE_SCENARIO = r"""
import asyncio, json, os, signal, sys
from pipeline.core.root import Root
from console.app import ConsoleApp

root, group = Root(sys.argv[1]), json.loads(sys.argv[2])
seen = {}

async def main():
    app = ConsoleApp(root, image_class=None)
    async with app.run_test(size=(150, 45)) as pilot:
        pane = app.query_one("#search-pane")
        message = pane.query_one("#search-message")

        async def search(line, want):
            await pilot.press("3")
            pane.field.value = line
            app.screen.set_focus(pane.field)
            await pilot.press("enter")
            for _ in range(2400):
                await pilot.pause(0.05)
                text = str(message.content)
                if want in text and not pane.busy:
                    return text, [c.result["listing_id"] for c in pane.cards()]
            raise AssertionError(f"{line!r}: waited for {want!r}, the pane says {text!r}")

        seen["text"] = await search("oak chair", "results for")
        seen["pid"] = app._search_helper.pid
        seen["text_again"] = await search("oak chair", "results for")
        seen["image"] = await search(sys.argv[3], "results for")
        seen["listing"] = await search(f"listing:{group[0]}", "results for")
        seen["same_pid"] = app._search_helper.pid == seen["pid"]
        seen["console_torch"] = sorted({m.split(".")[0] for m in sys.modules} & {
            "torch", "open_clip", "transformers", "rembg", "onnxruntime"})
        seen["helper_modules"] = app._search_helper.stats()["modules"]
        os.kill(seen["pid"], signal.SIGKILL)            # the helper dies
        app._search_helper.proc.wait()
        seen["restarted"] = await search(f"same:{group[0]}", "results for")
        seen["new_pid"] = app._search_helper.pid
    seen["stopped"] = app._search_helper is None

asyncio.run(main())
for pid in (seen["pid"], seen["new_pid"]):
    try:
        os.kill(pid, 0)
        seen.setdefault("alive", []).append(pid)
    except ProcessLookupError:
        pass
seen["console_torch_after"] = "torch" in sys.modules
print(json.dumps(seen))
"""


def test_console_searches_through_the_helper_and_never_loads_torch(catalogue_root):
    root, cat = catalogue_root
    group = [lid for lid, _ in next(iter(cat.similar_groups().values()))]
    out = subprocess.run([sys.executable, "-c", CONSOLE_SCENARIO, str(root.path),
                          json.dumps(group), str(root.path / "query.jpg")],
                         capture_output=True, text=True, timeout=220, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    text, lids = seen["text"]
    assert lids and "(text cached)" not in text
    text, lids_again = seen["text_again"]
    assert "(text cached)" in text and lids_again == lids     # the same text: no encode
    assert seen["image"][1]                                    # an image query found listings
    # more like a group member: the other photos of the same object come first
    assert set(seen["listing"][1][:2]) == set(group[1:])
    assert seen["same_pid"]                                    # one helper for all of them
    assert seen["console_torch"] == [] and not seen["console_torch_after"]
    assert "torch" in seen["helper_modules"]                   # the models live in the helper
    restarted, same_lids = seen["restarted"]
    assert f"(pid {seen['pid']}) had exited with code -9: started a new one" in restarted
    assert set(same_lids) == set(group[1:])
    assert seen["new_pid"] != seen["pid"]
    assert seen["stopped"] and "alive" not in seen             # quit stopped it, by its pid


def test_helper_stops_when_idle_and_starts_again_quietly(catalogue_root):
    root, _ = catalogue_root
    client = SearchHelperClient(root, SearchSettings(helper_idle_s=0.3, helper_text_cache=4))
    try:
        first = client.stats()
        assert first["notes"] == [] and first["modules"] == []   # no model loaded for stats
        assert client.proc.wait(timeout=60) == 0                 # idle: it exits by itself
        second = client.stats()
        assert second["notes"] == [] and second["pid"] != first["pid"] and client.starts == 2
    finally:
        client.stop()
    assert client.proc is None


def test_helper_answers_bad_requests_with_one_line_and_keeps_going(catalogue_root):
    root, cat = catalogue_root
    client = SearchHelperClient(root, SearchSettings(helper_idle_s=60, helper_text_cache=4))
    try:
        with pytest.raises(UserError, match="unknown op 'nope'"):
            client._ask({"op": "nope"}, None)
        missing = parse_query_text("same:42", 5)
        with pytest.raises(UserError, match="listing 42"):
            client.search(missing)
        answer, _ = client.search(parse_query_text(f"same:{cat.listing_id(0)}", 5))
        assert answer["ok"] and client.starts == 1
    finally:
        client.stop()


@pytest.mark.parametrize("line, check", [
    ("oak chair price:20-80 shop:12", lambda r: (r.text, r.filters.min_price, r.filters.max_price,
                                                 r.filters.shop) == ("oak chair", 20, 80, 12)),
    ("sofa price:-80 state:any since:2024-01-02", lambda r: r.filters.max_price == 80
     and r.filters.min_price is None and r.filters.state == "any" and r.filters.since > 0),
    ("listing:https://www.etsy.com/listing/123/oak taxonomy:5", lambda r: r.listing == 123
     and r.filters.taxonomy == 5),
    ("same:77", lambda r: r.same_as == 77 and r.kind == "same_as"),
    ("chair unseen", lambda r: r.filters.exclude == frozenset({5, 6})),
    ("https://example.com/a.jpg combine:fuse", lambda r: r.urls == ["https://example.com/a.jpg"]
     and r.combine == "fuse"),
])
def test_typed_line_to_request_and_back(line, check):
    req = parse_query_text(line, 10, {5, 6})
    assert check(req)
    again = request_from_json(json.loads(json.dumps(request_to_json(req))))
    assert again == req


@pytest.mark.parametrize("line, message", [
    ("price:80", "price:80 is not a range"),
    ("price:x-9", "price: 'x' is not a number"),
    ("shop:abc", "shop:abc is not a number"),
    ("oak price:90-10", "--min-price 90.0 is above --max-price 10.0"),
    ("listing:abc", "is neither a listing id"),
    ("/no/such.jpg", "does not exist"),
    ("'oak", "unclosed quote"),
    ("price:1-2", "nothing to search for"),
    ("since:yesterday", "is not a date"),
])
def test_bad_typed_lines_get_one_line(line, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace("+", r"\+")) as err:
        parse_query_text(line, 10)
    assert "\n" not in str(err.value)
