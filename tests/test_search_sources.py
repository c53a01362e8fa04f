"""Query pictures from files, URLs and the Etsy API (issue 19), through the CLI with the real
encoders (test-profile models, the tiny background model) against an index of sandbox
pictures embedded by the same models; image URLs that are not usable get a one-line error
(a loopback HTTP server)."""
from __future__ import annotations

import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

import models_support  # noqa: F401  (sets U2NET_HOME)
from pipeline.search.calibrate import build_catalogue_index
from tests.etsy_support import KEY
from tests.support import run_cli_here

pytestmark = pytest.mark.timeout(600)
MAX_BYTES = 300_000


class Pictures(BaseHTTPRequestHandler):
    routes: dict = {}

    def do_GET(self):  # noqa: N802
        got = self.routes.get(self.path)
        if got is None:
            self.send_error(404)
            return
        if got[0] == "redirect":
            self.send_response(302)
            self.send_header("Location", got[1])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        ctype, body = got
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def served():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Pictures)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", Pictures.routes
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def real(tmp_path_factory, served):
    """A root whose index holds 4 of the local Etsy API's 6 listings, embedded by the
    test-profile models; the pictures of two of them as PNG files and on the HTTP server."""
    from pipeline.core.root import Root
    from pipeline.sandbox.etsy_api import LocalEtsyAPI
    from pipeline.search.encoders import load_model_set, load_remover

    api = LocalEtsyAPI(listings=6, seed=11, api_key=KEY).start()
    base = tmp_path_factory.mktemp("search19src")
    path = base / "root"
    path.mkdir()
    (path / "imageselector.toml").write_text(
        '[root]\nprofile = "sandbox"\n[models]\nprofile = "test"\ndevice = "cpu"\n'
        f'[download]\nmax_bytes = {MAX_BYTES}\n[etsy]\nbase_url = "{api.base_url}"\n')
    root = Root(path).ensure()
    cat = api.catalogue
    indexed = [cat.listing_id(i) for i in range(4)]
    pictures = build_catalogue_index(root, cat, load_model_set(root), load_remover(root),
                                     listings=indexed)
    url, routes = served
    files = {}
    for i in (0, 2):
        lid = cat.listing_id(i)
        buf = io.BytesIO()
        pictures[(lid, cat.image_id(i, 0))].save(buf, "PNG")
        (base / f"{lid}.png").write_bytes(buf.getvalue())
        routes[f"/{lid}.png"] = ("image/png", buf.getvalue())
        files[lid] = base / f"{lid}.png"
    yield root, cat, files, url, api
    api.stop()


@pytest.fixture
def cli(capsys, monkeypatch):
    """`imageselector search ...` in this process (the models load once for the module)."""
    monkeypatch.setenv("ETSY_API_KEY", KEY)

    def run(root, *args, ok=True):
        proc = run_cli_here(capsys, "search", *args, root=root)
        if ok:
            assert proc.returncode == 0, proc.stderr
        return proc
    return run


def ids(proc):
    return [r["listing_id"] for r in json.loads(proc.stdout)]


def test_image_file_url_and_text_with_image(real, cli):
    root, cat, files, url, _api = real
    a, b = sorted(files)
    by_file = cli(root, "--image", files[a], "-k", 3, "--json")
    assert ids(by_file)[0] == a
    by_url = cli(root, "--url", f"{url}/{a}.png", "-k", 3, "--json")
    assert ids(by_url) == ids(by_file)
    both = cli(root, "--text", "oak chair", "--image", files[a], "-k", 3, "--json")
    top = json.loads(both.stdout)[0]
    assert top["listing_id"] == a
    assert {"clip_vitb32", "dinov2_large"} <= set(top["ranks"])


def test_several_images_mean_and_fuse(real, cli):
    from pipeline.search.encoders import combine_images
    from pipeline.search.engine import SearchEngine

    root, cat, files, url, _api = real
    a, b = sorted(files)
    fused = ids(cli(root, "--image", files[a], "--url", f"{url}/{b}.png", "--combine", "fuse",
                    "-k", 3, "--json"))
    mean = ids(cli(root, "--image", files[a], "--image", files[b], "--combine", "mean",
                   "-k", 3, "--json"))
    # what each combination means, on the pictures' stored vectors (they are indexed)
    engine = SearchEngine.for_root(root)
    engine.refresh()
    models = [m for m in engine.available if not m.endswith("_text")]
    stored = [{m: engine.stored_vector(m, engine.rows_of_listing(lid, cat.image_id(
        cat.index_of_listing(lid), 0))[0]) for m in models} for lid in (a, b)]
    for how, got in (("mean", mean), ("fuse", fused)):
        want = [h.listing_id for h in engine.search_vectors(combine_images(stored, how), 3,
                                                            combine="fuse")]
        assert got == want, how
    assert a in fused   # rank 1 of its own search in every model


def test_listing_not_indexed_comes_through_the_etsy_api(real, cli):
    root, cat, _files, _url, _api = real
    lid = cat.listing_id(5)
    proc = cli(root, "--listing", lid, "-k", 3, "--json")
    got = ids(proc)
    assert len(got) == 3 and lid not in got
    assert f"listing {lid} is not indexed" in proc.stderr
    missing = cli(root, "--listing", 1_499_999_999, ok=False)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "listing 1499999999 is not in the index" in missing.stderr


@pytest.mark.parametrize("path, route, message", [
    ("/page.html", ("text/html", b"<html><body>not a picture</body></html>" * 40),
     "not an image (the server sent text/html"),
    ("/big.jpg", ("image/jpeg", b"\xff\xd8\xff" + b"\0" * MAX_BYTES), "too large"),
    ("/cut.jpg", None, "truncated image"),
    ("/loop", ("redirect", "/loop"), "redirect loop"),
    ("/gone.jpg", "404", "HTTP 404"),
])
def test_unusable_image_url_gets_one_line(real, cli, path, route, message):
    from PIL import Image

    root, _cat, files, url, _api = real
    routes = Pictures.routes
    if route is None:   # a real JPEG cut in half, served with the cut length
        buf = io.BytesIO()
        Image.open(next(iter(files.values()))).convert("RGB").save(buf, "JPEG", quality=90)
        data = buf.getvalue()
        route = ("image/jpeg", data[: len(data) // 2])
    if route != "404":
        routes[path] = route
    proc = cli(root, "--url", url + path, ok=False)
    assert proc.returncode == 2, proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and url + path in lines[0], proc.stderr
