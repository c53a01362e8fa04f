"""The whole pipeline on a sandbox root, stage by stage through the real CLI, as the operator
starts them in order: local Etsy API -> sync -> download -> orchestrate (local worker, test
models) -> tar -> primary -> backup; then index verify and search agree with the catalogue."""
from __future__ import annotations

import json

import pytest

from pipeline.core import db
from pipeline.core.fsutil import read_json_or_none
from pipeline.core.root import Root
from tests.alerts_support import free_port
from tests.support import cli_json, run_cli, wait_for


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "u2net"))
    port = free_port()
    path = tmp_path / "sandbox"
    run_cli("sandbox", "init", path, "--port", port, check=True)
    root = Root(path)
    text = root.config_path.read_text()
    assert "batch_size = 50" in text and "images_per_tar = 100" in text  # the sandbox defaults
    root.config_path.write_text(text.replace("batch_size = 50", "batch_size = 16")
                                .replace("images_per_tar = 100", "images_per_tar = 20"))
    qps = root.db_dir / "qps_config.json"
    qps.write_text(json.dumps({**json.loads(qps.read_text()), "qps": 100}))
    run_cli("start", "etsy-api", "--listings", "12", "--qps", "0", root=root, check=True)
    yield root
    run_cli("stop", "etsy-api", "--wait", root=root)


def test_sandbox_pipeline_end_to_end(sandbox):
    root = sandbox
    for stage in ("sync", "download", "orchestrate", "tar", "primary", "backup"):
        out = run_cli("run", stage, "--once", root=root, timeout=300)
        assert out.returncode == 0, f"{stage}: {out.stderr[-3000:]}"
    snap = cli_json("status", root=root)
    queues = snap["queues"]
    conn = db.open_db(root)
    n_images = conn.execute("SELECT COUNT(*) FROM images").fetchone()[0]
    assert n_images > 12  # several images per listing
    assert queues["discovered"] == queues["downloaded"] == queues["batched"] == 0
    assert queues["embedded"] + queues["tarred"] + queues["dead"] + queues["failed"] == n_images
    assert queues["tarred"] >= 20
    assert db.queue_depths(conn) == db.count_states_slowly(conn)
    assert run_cli("index", "verify", root=root).returncode == 0
    assert [b for b in snap["backups"] if b["target"] == "sandbox"][0]["verified"]
    # search by an indexed listing: one result per listing, never the query itself, with its
    # primary image read from the primary tars by offset
    listing = conn.execute("SELECT listing_id FROM image_status WHERE state IN ('embedded','tarred') "
                           "LIMIT 1").fetchone()[0]
    results = cli_json("search", "--listing", listing, "-k", "5", root=root)
    assert results and listing not in [r["listing_id"] for r in results]
    assert len({r["listing_id"] for r in results}) == len(results)
    for r in results:
        prim = r["primary_image"]
        rank1 = conn.execute("SELECT image_id FROM images WHERE listing_id = ? AND rank = 1",
                             (r["listing_id"],)).fetchone()[0]
        assert prim["path"].endswith(".tar") and prim["offset"] is not None, prim
        with open(prim["path"], "rb") as fh:
            fh.seek(prim["offset"])
            assert fh.read(3) == b"\xff\xd8\xff"  # a JPEG starts right at the offset
        assert rank1 is not None
    text = cli_json("search", "--text", "oak chair", "-k", "3", root=root)
    assert text and set(text[0]["models"]) <= {"clip_vitb32", "clip_vitl14"}
    # every stage recorded a clean exit
    for stage in ("sync", "download", "orchestrate", "tar", "primary", "backup"):
        assert read_json_or_none(root.heartbeat_path(stage))["exit"]["outcome"] == "ok", stage


def test_sandbox_weekly_run_finishes_by_itself(sandbox):
    """`run pipeline` on the sandbox ends by work state, not by runner.idle_stop_s: tar
    holds fewer embedded images than one tar (it cannot progress), and phase 2 runs once."""
    root = sandbox
    text = root.config_path.read_text()
    # fewer images than one tar: the case that used to wait out the 2-hour idle timer
    root.config_path.write_text(text.replace("images_per_tar = 20", "images_per_tar = 1000")
                                + "\n[runner]\ncheck_s = 0.5\n")
    out = run_cli("run", "pipeline", root=root, timeout=280)
    assert out.returncode == 0, out.stderr[-3000:]
    conn = db.open_db(root)
    steps = {r[0]: r[1:] for r in conn.execute(
        "SELECT step, outcome, reason FROM runner_steps ORDER BY rowid")}
    for name in ("sync", "download", "orchestrate", "tar", "primary", "backup"):
        assert steps[name][0] == "ok", (name, steps[name])
    queues = db.queue_depths(conn)
    assert queues["discovered"] == queues["downloaded"] == queues["batched"] == 0
    assert queues["embedded"] > 0 and queues["tarred"] == 0  # less than a tar: left for next week
    primary = read_json_or_none(root.heartbeat_path("primary"))
    assert primary["exit"]["outcome"] == "ok"  # ran with --once and ended
    summary = json.loads(conn.execute("SELECT value FROM sync_state WHERE key='last_pipeline_run'").fetchone()[0])
    # a sandbox root with alerts off is told so, as a warning that does not fail the run
    assert "WARNING: alerts off" in summary["summary"] and ": ok after" in summary["summary"]
