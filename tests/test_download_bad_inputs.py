"""Every bad response ends as `failed` (or `dead`) with its reason while the run goes on;
the odd-but-valid images are accepted. A real HTTP server on loopback, the real stage."""
from __future__ import annotations

import argparse

import pytest

import download_support as ds
from pipeline.core.stage_runtime import run_stage

pytestmark = pytest.mark.timeout(120)


def _run_once(root, **flags) -> int:
    args = argparse.Namespace(once=True, workers=flags.get("workers"),
                              max_in_flight=flags.get("max_in_flight"), per_host=flags.get("per_host"))
    return run_stage(root, "download", once=True, args=args, install_signals=False)


def test_every_bad_input(tmp_root):
    root = tmp_root
    ds.write_config(root, max_bytes=60000)
    good = ds.jpeg_bytes(96, 64, seed=1)
    accepted = {
        "wrongtype": (good, "text/plain"),
        "notype": (ds.jpeg_bytes(96, 64, seed=2), None),
        "cmyk": (ds.cmyk_jpeg(), "image/jpeg"),
        "png16": (ds.png16(), "image/png"),
        "palette": (ds.palette_png(), "image/png"),
        "gif": (ds.palette_gif(), "image/gif"),
        "exif": (ds.exif_rotated_jpeg(), "image/jpeg"),
        "progressive": (ds.jpeg_bytes(96, 64, seed=3, progressive=True), "image/jpeg"),
        "flaky": (ds.jpeg_bytes(96, 64, seed=4), "image/jpeg"),
    }
    big = ds.jpeg_bytes(300, 300, seed=8, quality=100)
    assert len(big) > 60000
    with ds.ImageServer() as server:
        urls, sources = {}, {}
        for name, (body, ctype) in accepted.items():
            mode = "flaky" if name == "flaky" else "normal"
            urls[name] = server.add(f"/{name}", body, content_type=ctype, mode=mode, fail_first=1)
            sources[name] = body
        urls["zero"] = server.add("/zero", b"")
        urls["html"] = server.add("/html", ds.html_page(), content_type="text/html; charset=utf-8")
        urls["truncated"] = server.add("/truncated", ds.jpeg_bytes(200, 150, seed=5)[:4000])
        urls["lie"] = server.add("/lie", ds.jpeg_bytes(96, 64, seed=6), mode="lie")
        urls["bomb"] = server.add("/bomb", ds.png_bomb(), content_type="image/png")
        urls["bomb2"] = server.add("/bomb2", ds.jpeg_claiming_size(9000, 9000))
        urls["stall"] = server.add("/stall", ds.jpeg_bytes(200, 150, seed=7), mode="stall")
        urls["loop"] = server.add("/loop", mode="redirect", location="/loop2")
        server.add("/loop2", mode="redirect", location="/loop")
        urls["large"] = server.add("/large", big)
        urls["missing"] = server.url("/missing")  # 404
        urls["placeholder"] = server.add("/placeholder", ds.jpeg_bytes(8, 8, quality=10))
        urls["e500"] = server.add("/e500", b"oops", status=500, content_type="text/plain")
        urls["e403"] = server.add("/e403", b"no", status=403, content_type="text/plain")
        urls["nourl"] = None
        urls["badurl"] = "ftp://127.0.0.1/x.jpg"
        assert len(server.routes["/placeholder"].body) <= 1000
        names = sorted(urls)
        key = {name: (100 + i, 9000 + i) for i, name in enumerate(names)}
        ds.seed(root, [(*key[n], urls[n]) for n in names])

        assert _run_once(root, workers=4) == 0
        assert server.routes["/flaky"].served == 2  # one 503, then the image

    rows = ds.check_db_matches_disk(root, {key[n]: sources[n] for n in accepted})
    state = {n: rows[key[n]]["state"] for n in names}
    reason = {n: rows[key[n]]["reason"] or "" for n in names}
    for name in accepted:
        assert state[name] == "downloaded", (name, reason[name])
    assert rows[key["exif"]]["width"] == 80 and rows[key["exif"]]["height"] == 120
    assert rows[key["png16"]]["width"] == 96
    assert rows[key["flaky"]]["attempts"] == 2

    expect_failed = {
        "zero": "empty body",
        "html": "not an image (text/html",
        "truncated": "truncated image",
        "lie": "length mismatch",
        "bomb": "decompression bomb",
        "bomb2": "decompression bomb",
        "stall": "timeout",
        "loop": "redirect loop",
        "large": "too large",
        "e500": "HTTP 500 after 2 tries",
        "e403": "HTTP 403",
        "nourl": "no URL",
        "badurl": "bad URL",
    }
    for name, text in expect_failed.items():
        assert state[name] == "failed" and text in reason[name], (name, state[name], reason[name])
    assert "after 2 tries" in reason["stall"] and "after 2 tries" in reason["lie"]
    assert state["missing"] == "dead" and reason["missing"] == "HTTP 404"
    assert state["placeholder"] == "dead" and "placeholder" in reason["placeholder"]

    # The heartbeat's counters say the same.
    import json

    hb = json.loads(root.heartbeat_path("download").read_text())
    assert hb["counters"]["done"] == len(accepted)
    assert hb["counters"]["failed"] == len(expect_failed)
    assert hb["counters"]["dead"] == 2
    assert hb["exit"]["outcome"] == "ok"


def test_leftover_temp_removed_and_orphan_file_adopted_or_replaced(tmp_root):
    """A crash can leave a temp file and a renamed-but-uncommitted file: the next run
    removes the first, adopts a good orphan without downloading it, replaces a bad one."""
    root = tmp_root
    ds.write_config(root)
    good = ds.jpeg_bytes(96, 64, seed=11)
    other = ds.jpeg_bytes(96, 64, seed=12)
    with ds.ImageServer() as server:
        ds.seed(root, [(1, 1, server.add("/a", good)), (1, 2, server.add("/b", other))])
        (root.download_dir / ".1_1.jpg.part").write_bytes(good[:100])
        (root.download_dir / "1_1.jpg").write_bytes(good)         # whole: adopt it
        (root.download_dir / "1_2.jpg").write_bytes(other[:500])  # partial: replace it
        assert _run_once(root) == 0
        assert server.routes["/a"].served == 0
        assert server.routes["/b"].served == 1
    rows = ds.check_db_matches_disk(root, {(1, 1): good, (1, 2): other})
    assert {r["state"] for r in rows.values()} == {"downloaded"}


def test_dead_image_leaves_no_file(tmp_root):
    root = tmp_root
    ds.write_config(root)
    with ds.ImageServer() as server:
        ds.seed(root, [(2, 1, server.url("/gone"))])
        (root.download_dir / "2_1.jpg").write_bytes(b"x" * 50)  # junk from an earlier crash
        assert _run_once(root) == 0
    rows = ds.check_db_matches_disk(root)
    assert rows[(2, 1)]["state"] == "dead"


def test_pool_keeps_connections_alive_and_per_host_cap_holds(tmp_root):
    root = tmp_root
    ds.write_config(root)
    with ds.ImageServer(delay_s=0.02) as server:
        rows = [(3, i, server.add(f"/k{i}", ds.jpeg_bytes(64, 48, seed=i))) for i in range(60)]
        ds.seed(root, rows)
        assert _run_once(root, workers=6, per_host=2) == 0
        assert server.max_active <= 2
        assert server.connections <= 6  # keep-alive: not one connection per image
        assert server.requests == 60
    ds.check_db_matches_disk(root)


def test_without_cap_workers_run_in_parallel(tmp_root):
    root = tmp_root
    ds.write_config(root)
    with ds.ImageServer(delay_s=0.05) as server:
        ds.seed(root, [(4, i, server.add(f"/p{i}", ds.jpeg_bytes(64, 48, seed=i))) for i in range(40)])
        assert _run_once(root, workers=6) == 0
        assert server.max_active > 2
    assert len(ds.disk_files(root)) == 40


class _FakeCtx:
    """Just enough of StageContext to drive the Downloader directly."""

    once = True

    def __init__(self):
        self.states: list[str] = []
        self.counters: dict[str, float] = {}

    def stop_requested(self):
        return False

    def checkpoint(self):
        return True

    def sleep(self, seconds):
        import time

        time.sleep(min(seconds, 0.01))
        return True

    def progress(self, n=1, counter="done", current=None):
        self.counters[counter] = self.counters.get(counter, 0) + n

    def set_info(self, **fields):
        pass

    def blocked(self, reason):
        if not self.states or self.states[-1] != reason:
            self.states.append(reason)

    def unblocked(self):
        self.states.append("unblocked")


def test_low_disk_blocks_then_resumes_when_space_returns(tmp_root):
    import logging

    from pipeline.core.db import open_db
    from pipeline.stages.download.downloader import Downloader
    from pipeline.stages.download.settings import Settings

    root = tmp_root
    with ds.ImageServer() as server:
        ds.seed(root, [(5, i, server.add(f"/f{i}", ds.jpeg_bytes(64, 48, seed=i))) for i in range(5)])
        checks = []

        def free_bytes(path):  # the first three looks find the disk full, then room appears
            checks.append(path)
            return 10**6 if len(checks) <= 3 else 10**13

        from pipeline.core.diskfloor import DiskFloor

        root.config_path.write_text("[disk]\nmin_free_gb = 1.0\ncheck_s = 0.01\n")
        ctx = _FakeCtx()
        conn = open_db(root)
        try:
            settings = Settings(idle_poll_s=0.01, commit_interval_s=0.01)
            floor = DiskFloor(root, [root.download_dir], stage="download", free=free_bytes)
            downloader = Downloader(conn, root.download_dir, settings, logging.getLogger("t"), ctx,
                                    floor=floor)
            assert downloader.run() == 0
        finally:
            conn.close()
        assert server.requests == 5
    assert len(ctx.states) == 2 and ctx.states[0].startswith("disk low: ")
    assert ctx.states[0].endswith(" 1.0 MB free, floor 1.0 GB")
    assert ctx.states[1] == "unblocked"
    assert ctx.counters["done"] == 5
    ds.check_db_matches_disk(root)
