"""A failed download is tried again by later passes, after a backoff that doubles, up to a cap
(DECISIONS.md image_status: failed -> discovered); 404 and the placeholder stay dead; after the
cap only `requeue` retries it. A real HTTP server on loopback, the real stage, real SQLite."""
from __future__ import annotations

import argparse
import time

import pytest

import download_support as ds
from pipeline.core import db
from pipeline.core.errors import UserError
from pipeline.core.stage_runtime import run_stage
from pipeline.stages.download.commit import commit_results
from pipeline.stages.download.jobs import FAIL, Job, Result
from pipeline.stages.download.retry import GAVE_UP, requeue_due, waiting
from pipeline.stages.download.settings import Settings
from tests.support import run_cli

pytestmark = pytest.mark.timeout(180)

A, B, MISSING, PLACEHOLDER, GOOD = (1, 10), (2, 20), (3, 30), (4, 40), (5, 50)


def _pass(root) -> None:
    args = argparse.Namespace(once=True, workers=2, max_in_flight=None, per_host=None)
    assert run_stage(root, "download", once=True, args=args, install_signals=False) == 0


def _rows(root) -> dict:
    conn = db.connect(root.db_path)
    try:
        # the trigger-kept counters agree with the rows after every change
        assert db.queue_depths(conn) == db.count_states_slowly(conn)
        rows = conn.execute("SELECT listing_id, image_id, state, reason, attempts, retry_at, "
                            "failed_passes, updated_at FROM image_status").fetchall()
    finally:
        conn.close()
    keys = ("state", "reason", "attempts", "retry_at", "failed_passes", "updated_at")
    return {(r[0], r[1]): dict(zip(keys, r[2:])) for r in rows}


def test_failures_are_retried_by_later_passes_dead_ones_never_and_the_cap_holds(tmp_root):
    root = tmp_root
    ds.write_config(root, max_tries=1, failed_retry_after_s=0.0, failed_retry_passes=3)
    body_a, body_b = ds.jpeg_bytes(96, 64, seed=11), ds.jpeg_bytes(96, 64, seed=12)
    with ds.ImageServer() as server:
        url_a = server.add("/a", b"busy", status=500, content_type="text/plain")
        url_b = server.add("/b", b"no", status=403, content_type="text/plain")
        placeholder = server.add("/placeholder", ds.jpeg_bytes(8, 8, quality=10))
        ds.seed(root, [(*A, url_a), (*B, url_b), (*MISSING, server.url("/missing")),
                       (*PLACEHOLDER, placeholder),
                       (*GOOD, server.add("/good", ds.jpeg_bytes(96, 64, seed=13)))])

        _pass(root)
        rows = _rows(root)
        assert rows[GOOD]["state"] == "downloaded"
        assert rows[MISSING]["state"] == rows[PLACEHOLDER]["state"] == "dead"
        for key, reason in ((A, "HTTP 500 after 1 tries"), (B, "HTTP 403")):
            assert rows[key]["state"] == "failed" and rows[key]["reason"] == reason
            assert rows[key]["failed_passes"] == 1 and rows[key]["retry_at"] is not None
        assert rows[MISSING]["retry_at"] is None and rows[PLACEHOLDER]["retry_at"] is None
        requests_dead = server.requests - server.routes["/a"].served - server.routes["/b"].served

        # the next pass tries both failures again (the backoff of 0 s has passed); A fails again
        _pass(root)
        rows = _rows(root)
        assert server.routes["/a"].served == 2 and server.routes["/b"].served == 2
        assert rows[A]["state"] == "failed" and rows[A]["failed_passes"] == 2
        assert rows[B]["failed_passes"] == 2

        # A's server recovers: the third pass downloads it
        served_a = server.routes["/a"].served
        server.add("/a", body_a)
        _pass(root)
        rows = _rows(root)
        assert rows[A]["state"] == "downloaded" and rows[A]["reason"] is None
        assert rows[A]["failed_passes"] == 0 and rows[A]["retry_at"] is None
        assert rows[B]["state"] == "failed" and rows[B]["failed_passes"] == 3

        # B fails on a fourth pass: 1 + 3 automatic retries, so it gives up and says so
        _pass(root)
        rows = _rows(root)
        assert server.routes["/b"].served == 4
        assert rows[B]["state"] == "failed" and rows[B]["retry_at"] is None
        assert rows[B]["failed_passes"] == 4
        assert rows[B]["reason"].startswith("HTTP 403 (failed on 4 passes: " + GAVE_UP)
        assert "imageselector requeue" in rows[B]["reason"]

        # a fifth pass leaves it alone; 404 and the placeholder were never asked for again
        _pass(root)
        assert server.routes["/b"].served == 4
        assert _rows(root)[B]["state"] == "failed"
        served_a += server.routes["/a"].served
        assert served_a == 3
        assert server.requests - served_a - server.routes["/b"].served == requests_dead
        assert server.routes["/placeholder"].served == 1
        assert _rows(root)[MISSING]["state"] == _rows(root)[PLACEHOLDER]["state"] == "dead"

        # `requeue` still works, with a fresh count of passes
        out = run_cli("requeue", "--reason", GAVE_UP, root=root, check=True)
        assert "requeued 1 failed image(s)" in out.stdout
        rows = _rows(root)
        assert rows[B]["state"] == "discovered" and rows[B]["failed_passes"] == 0
        assert rows[B]["reason"] is None and rows[B]["retry_at"] is None
        server.add("/b", body_b)
        _pass(root)
    rows = ds.check_db_matches_disk(root, {A: body_a, B: body_b, GOOD: ds.jpeg_bytes(96, 64, seed=13)})
    assert rows[B]["state"] == "downloaded"


def test_backoff_doubles_from_the_time_of_failure_and_not_due_is_no_work(tmp_root):
    root = tmp_root
    ds.write_config(root, max_tries=1, failed_retry_after_s=3600.0, failed_retry_passes=3)
    with ds.ImageServer() as server:
        ds.seed(root, [(*A, server.add("/a", b"busy", status=500, content_type="text/plain"))])
        _pass(root)
        row = _rows(root)[A]
        assert row["retry_at"] - row["updated_at"] == pytest.approx(3600.0)

        # not due yet: a pass does not try it, and it is no work (nothing discovered), so the
        # weekly run's drain (input queue `discovered` empty) still ends
        _pass(root)
        assert server.routes["/a"].served == 1
        conn = db.connect(root.db_path)
        depths = db.queue_depths(conn)
        assert depths["discovered"] == 0 and depths["failed"] == 1
        assert waiting(conn) == (1, row["retry_at"])

        # the clock reaches retry_at (injected): due, back to discovered, tried, 2 h next time
        assert requeue_due(conn, row["retry_at"] - 1.0) == 0
        for passes, backoff in ((2, 7200.0), (3, 14400.0)):
            due = _rows(root)[A]["retry_at"]
            assert requeue_due(conn, due) == 1
            assert _rows(root)[A]["state"] == "discovered"
            _pass(root)
            row = _rows(root)[A]
            assert row["state"] == "failed" and row["failed_passes"] == passes
            assert row["retry_at"] - row["updated_at"] == pytest.approx(backoff)

        # the cap: the third automatic retry fails too, and there is no fourth
        assert requeue_due(conn, _rows(root)[A]["retry_at"]) == 1
        _pass(root)
        row = _rows(root)[A]
        assert row["failed_passes"] == 4 and row["retry_at"] is None and GAVE_UP in row["reason"]
        assert requeue_due(conn, time.time() + 10 * 365 * 86400) == 0
        assert waiting(conn) == (0, None)
        conn.close()
        assert server.routes["/a"].served == 4


def test_failures_of_other_stages_and_with_zero_passes_are_left_to_requeue(tmp_root):
    root = tmp_root
    ds.write_config(root, max_tries=1, failed_retry_after_s=0.0, failed_retry_passes=0)
    with ds.ImageServer() as server:
        ds.seed(root, [(*A, server.add("/a", b"busy", status=500, content_type="text/plain")),
                       (*B, server.add("/b", ds.jpeg_bytes(96, 64, seed=3)))])
        conn = db.connect(root.db_path)
        with db.transaction(conn):  # a worker found B unreadable after its download
            db.set_image_state(conn, [B], db.DOWNLOADED)
            db.set_image_state(conn, [B], db.FAILED, reason="unreadable image")
        conn.close()
        _pass(root)
        _pass(root)
        rows = _rows(root)
        assert server.routes["/a"].served == 1 and server.routes["/b"].served == 0
        assert rows[A]["state"] == "failed" and rows[A]["reason"] == "HTTP 500 after 1 tries"
        assert rows[A]["retry_at"] is None
        assert rows[B]["state"] == "failed" and rows[B]["reason"] == "unreadable image"


def test_commit_uses_the_failure_time_and_counts_passes_in_a_row(tmp_root):
    """commit_results with an injected clock: the backoff runs from the failure's own time."""
    root = tmp_root
    ds.seed(root, [(*A, "http://127.0.0.1:9/a")])
    settings = Settings.from_config(root.config, failed_retry_after_s=60.0, failed_retry_passes=2)
    conn = db.connect(root.db_path)
    commit_results(conn, [Result(Job(0.0, *A, None, tries=3), FAIL, "timeout after 3 tries")],
                   settings, now=5000.0)
    state, retry_at, passes = conn.execute(
        "SELECT state, retry_at, failed_passes FROM image_status").fetchone()
    assert (state, retry_at, passes) == ("failed", 5060.0, 1)
    assert requeue_due(conn, 5059.0) == 0 and requeue_due(conn, 5060.0) == 1
    commit_results(conn, [Result(Job(0.0, *A, None, tries=3), FAIL, "timeout after 3 tries")],
                   settings, now=6000.0)
    assert conn.execute("SELECT retry_at, failed_passes FROM image_status").fetchone() == (6120.0, 2)
    assert db.queue_depths(conn) == db.count_states_slowly(conn)
    conn.close()


@pytest.mark.parametrize("key,value", [("failed_retry_after_s", -1.0), ("failed_retry_passes", -1)])
def test_bad_retry_settings_name_the_key(tmp_root, key, value):
    with pytest.raises(UserError, match=f"download.{key} must be 0 or more"):
        Settings.from_config(tmp_root.config, **{key: value})


def test_weekly_run_retries_due_failures_and_its_drain_ends(tmp_root, tmp_path):
    """The runner with the real downloader in phase 1: a failure whose backoff has passed is
    work (downloaded in this run), one not yet due is not (left failed, never asked for), and
    the drain ends."""
    root = tmp_root
    ds.write_config(root, max_tries=1, failed_retry_after_s=3600.0, failed_retry_passes=3)
    with root.config_path.open("a") as f:
        f.write("[stage]\nheartbeat_s = 0.2\npoll_s = 0.1\n[runner]\ncheck_s = 0.1\n"
                'phase1 = ["selftest --units 1 --work-s 0 --batch 0", "download"]\n'
                'driver = "selftest"\nphase2 = []\n')
    body = ds.jpeg_bytes(96, 64, seed=21)
    with ds.ImageServer() as server:
        ds.seed(root, [(*A, server.add("/a", body)), (*B, server.add("/b", body))])
        settings = Settings.from_config(root.config)
        conn = db.connect(root.db_path)
        now = time.time()
        commit_results(conn, [Result(Job(0.0, *A, None, tries=1), FAIL, "HTTP 500 after 1 tries")],
                       settings, now=now - 7200.0)   # due an hour ago
        commit_results(conn, [Result(Job(0.0, *B, None, tries=1), FAIL, "HTTP 500 after 1 tries")],
                       settings, now=now)            # due in an hour
        conn.close()
        out = run_cli("run", "pipeline", root=root, timeout=150)
        # it ends (a production root without a backup target makes it exit 1: not our concern)
        assert out.returncode in (0, 1), out.stderr[-2000:]
        rows = _rows(root)
        assert rows[A]["state"] == "downloaded"
        assert rows[B]["state"] == "failed" and rows[B]["failed_passes"] == 1
        assert server.routes["/a"].served == 1 and server.routes["/b"].served == 0
    conn = db.connect(root.db_path)
    steps = dict(conn.execute("SELECT step, outcome FROM runner_steps").fetchall())
    conn.close()
    assert steps["selftest"] == "ok" and steps["download"] in ("ok", "stopped")


def test_drain_hook_counts_due_failures_as_work_until_the_pass_has_requeued_them(tmp_root):
    """Before the stage is up, a failure due now is work (the pass will requeue it); one not
    due is not; anything discovered is."""
    from pipeline.stages.download.entry import nothing_to_do

    root = tmp_root
    ds.seed(root, [(*A, "http://127.0.0.1:9/a"), (*B, "http://127.0.0.1:9/b")])
    settings = Settings.from_config(root.config, failed_retry_after_s=3600.0)
    conn = db.connect(root.db_path)

    def drained() -> bool:
        return nothing_to_do(root, conn, db.queue_depths(conn))

    def fail(key, at) -> None:
        commit_results(conn, [Result(Job(0.0, *key, None, tries=1), FAIL, "HTTP 500")], settings, now=at)

    assert not drained()                                  # two discovered
    now = time.time()
    fail(B, now)                                          # due in an hour
    fail(A, now - 3 * 3600.0)                             # due two hours ago
    assert not drained()
    assert requeue_due(conn, time.time()) == 1            # what the pass does at its start
    assert not drained()                                  # A is discovered: work
    fail(A, time.time())                                  # it fails again: due in two hours
    assert drained()
    conn.close()
