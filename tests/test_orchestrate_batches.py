"""The orchestrator with stub workers (the real worker loop, no models): batches, leases,
refused results, exactly-once imports, flush, and what a worker sees on its disk."""
from __future__ import annotations

import json
import shutil
import threading
import time

import pytest

from pipeline.core import db as dbm
from pipeline.stages.orchestrate import hostops, scheduler
from pipeline.stages.orchestrate.files import flush_path
from pipeline.stages.orchestrate.ledger import batch_name, parse_name, text_for
from tests.orchestrate_support import (StubEmbedder, StubWorker, add_downloaded,
                                       assert_indexed_once, batches, db_root, heartbeat,
                                       in_thread, inbox_names, local_hosts, process_inbox,
                                       run_orchestrator, states, tamper_result, write_hosts)
from tests.support import wait_for

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "tar"])
def test_local_worker_round_trip(tmp_path, direct):
    root = db_root(tmp_path / "root", batch_size=8,
                   extra="" if direct else "local_direct = false\n")
    keys = add_downloaded(root, 30)
    stub = StubEmbedder()
    worker = StubWorker(root.path, stub).start()
    try:
        orch = run_orchestrator(root)
    finally:
        worker.stop()
    assert orch.exit_code == 0
    assert_indexed_once(root, keys)
    rows = batches(root)
    assert [r[3] for r in rows] == [8, 8, 8, 6]          # full batches, the last partial (--once)
    assert {r[2] for r in rows} == {"imported"}
    # the text is built once by the orchestrator: title + ". " + materials
    assert stub.texts_seen[keys[0]] == f"Walnut chair {keys[0][0]}. walnut, linen"
    # bg-removed copies archived, raw downloads gone, nothing left in transit
    assert sorted(p.name for p in root.bgremoved_dir.iterdir()) == \
        sorted(f"{a}_{b}.jpg" for a, b in keys)
    assert list(root.download_dir.iterdir()) == []
    for sub in ("inbox", "outbox", "incoming", "results"):
        d = root.path / "worker" / sub
        assert not d.exists() or list(d.iterdir()) == [], sub
    spool = root.run_dir / "orchestrate"
    assert [p for p in spool.rglob("*") if p.is_file()] == []


def test_only_full_batches_until_a_flush(tmp_path):
    root = db_root(tmp_path / "root", batch_size=8, extra="flush_settle_s = 0.2\n")
    keys = add_downloaded(root, 20)
    worker = StubWorker(root.path).start()
    stop = threading.Event()
    try:
        handle = in_thread(run_orchestrator, root, once=False, stop=stop)
        wait_for(lambda: states(root)["embedded"] == 16, timeout=30, what="two full batches")
        time.sleep(1.0)
        assert states(root)["downloaded"] == 4, "a partial batch went out without a flush"
        from pipeline.stages.orchestrate.entry import on_driver_finished

        on_driver_finished(root)                           # the runner's drain
        assert flush_path(root).exists()
        wait_for(lambda: states(root)["embedded"] == 20, timeout=30, what="the last partial batch")
        stop.set()
        handle.result()
    finally:
        stop.set()
        worker.stop()
    assert [r[3] for r in batches(root)] == [8, 8, 4]
    assert_indexed_once(root, keys)
    assert not flush_path(root).exists()                   # consumed once the queue is empty


def test_expired_lease_returns_images_and_drops_the_batch(tmp_path):
    wroot = tmp_path / "w"
    root = db_root(tmp_path / "root", batch_size=8, lease_s=1.0)
    write_hosts(root, local_hosts(wroot))
    keys = add_downloaded(root, 16)
    heartbeat(wroot)                                       # a worker that takes batches...
    shipped = lambda: len(inbox_names(wroot)) == 2  # noqa: E731
    handle = in_thread(run_orchestrator, root, once=True, timeout_s=40)
    wait_for(shipped, timeout=20, what="two batches in the worker's inbox")
    heartbeat(wroot, state="stopped")                      # ...and is then gone
    orch = handle.result()
    assert orch.exit_code == 1 and "no usable worker" in orch.failure
    rows = batches(root)
    assert [r[2] for r in rows] == ["expired", "expired"]
    assert all("lease expired" in r[4] for r in rows)
    conn = dbm.open_db(root)
    got = conn.execute("SELECT state, attempts, COUNT(*) FROM image_status GROUP BY state, attempts").fetchall()
    conn.close()
    assert got == [("downloaded", 1, 16)]                 # back in the queue, one loss counted
    assert inbox_names(wroot) == []                        # not left for a worker to redo
    # a worker comes back: the images go out again and are indexed once
    worker = StubWorker(wroot).start()
    try:
        assert run_orchestrator(root).exit_code == 0
    finally:
        worker.stop()
    assert_indexed_once(root, keys)


def test_late_result_of_an_expired_batch_is_reclaimed(tmp_path):
    wroot = tmp_path / "w"
    root = db_root(tmp_path / "root", batch_size=8, lease_s=1.0)
    write_hosts(root, local_hosts(wroot))
    keys = add_downloaded(root, 16)
    heartbeat(wroot)
    handle = in_thread(run_orchestrator, root, once=True, timeout_s=40)
    wait_for(lambda: len(inbox_names(wroot)) == 2, timeout=20, what="two batches shipped")
    first = inbox_names(wroot)[0]
    heartbeat(wroot, state="running", batch=first, age_s=3600)   # hung with the first in hand
    assert handle.result().exit_code == 1
    assert inbox_names(wroot) == [first]                   # the one in hand was not taken away
    process_inbox(wroot)                                   # the worker finishes it, late
    heartbeat(wroot, state="stopped")
    orch = run_orchestrator(root, once=True)
    assert orch.exit_code == 1                             # the other 8 have no worker
    st = states(root)
    assert (st["embedded"], st["downloaded"]) == (8, 8)
    rows = {r[0]: r for r in batches(root)}
    assert rows[parse_name(first)[0]][2] == "imported"
    worker = StubWorker(wroot).start()
    try:
        assert run_orchestrator(root).exit_code == 0
    finally:
        worker.stop()
    assert_indexed_once(root, keys)


def test_a_result_offered_twice_is_imported_once(tmp_path):
    root = db_root(tmp_path / "root", batch_size=8)
    keys = add_downloaded(root, 16)
    saved = tmp_path / "saved"
    saved.mkdir()
    worker = StubWorker(root.path).start()
    finish = worker.report.finish

    def keep_copy(outcome):        # a copy of each result, to offer it again later
        for p in (root.path / "worker" / "outbox").iterdir():
            if not p.name.startswith(".") and not (saved / p.name).exists():
                shutil.copytree(p, saved / p.name)
        finish(outcome)

    worker.report.finish = keep_copy
    try:
        assert run_orchestrator(root).exit_code == 0
    finally:
        worker.stop()
    assert len(list(saved.iterdir())) == 2
    for p in saved.iterdir():                              # the same results arrive again
        shutil.copytree(p, root.path / "worker" / "outbox" / p.name)
    heartbeat(root.path)
    assert run_orchestrator(root).exit_code == 0
    assert_indexed_once(root, keys)
    assert list((root.path / "worker" / "outbox").iterdir()) == []   # cleaned, not imported


def test_a_result_from_other_models_is_refused(tmp_path):
    root = db_root(tmp_path / "root", batch_size=8)
    keys = add_downloaded(root, 8)
    worker = StubWorker(root.path).start()
    try:
        assert run_orchestrator(root).exit_code == 0
    finally:
        worker.stop()
    more = add_downloaded(root, 8, first_listing=9000)
    worker = StubWorker(root.path, StubEmbedder(fingerprint="other-models-02")).start()
    try:
        orch = run_orchestrator(root)
    finally:
        worker.stop()
    assert orch.exit_code == 1                             # that worker is in error now
    rows = batches(root)
    assert rows[-1][2] == "failed" and "fingerprint other-models-02" in rows[-1][4]
    view = orch.report.info["workers"][0]
    assert view["state"] == "error" and "fingerprint" in view["last_error"]
    st = states(root)
    assert (st["embedded"], st["downloaded"]) == (8, 8)    # the refused batch is back in the queue
    assert_indexed_once(root, keys)
    assert not any((root.bgremoved_dir / f"{a}_{b}.jpg").exists() for a, b in more)


@pytest.mark.parametrize("kind", ["dims", "rows"])
def test_a_result_with_wrong_dims_or_rows_is_that_workers_error(tmp_path, kind):
    wroot = tmp_path / "w"
    good = tmp_path / "good"
    root = db_root(tmp_path / "root", batch_size=8)
    write_hosts(root, local_hosts(wroot, "bad") + local_hosts(good, "good"))
    heartbeat(wroot)
    keys = add_downloaded(root, 8)
    # first run: the batch goes to the worker that is up; stop once it is shipped
    orch = run_orchestrator(root, once=True, until=lambda: bool(inbox_names(wroot)))
    assert orch.exit_code == 0 and inbox_names(wroot)
    assert batches(root)[0][2] == "shipped"
    [name] = process_inbox(wroot)
    tamper_result(wroot / "worker" / "outbox" / name, kind)
    worker = StubWorker(good).start()       # the other worker goes on
    try:
        orch = run_orchestrator(root, once=True)  # recovers the lease from the DB
    finally:
        worker.stop()
    assert orch.exit_code == 0
    rows = batches(root)
    assert rows[0][1:3] == ("bad", "failed")
    expected = "dim 100" if kind == "dims" else "rows do not follow"
    assert expected in rows[0][4]
    views = {v["name"]: v for v in orch.report.info["workers"]}
    assert views["bad"]["state"] == "error" and expected in views["bad"]["last_error"]
    assert {r[1] for r in rows[1:]} == {"good"}
    assert_indexed_once(root, keys)


def test_a_missing_worker_root_is_that_workers_error(tmp_path):
    root = db_root(tmp_path / "root", batch_size=4)
    write_hosts(root, local_hosts(tmp_path / "nowhere", "gone") + local_hosts(tmp_path / "w", "ok"))
    keys = add_downloaded(root, 12)
    worker = StubWorker(tmp_path / "w").start()
    try:
        orch = run_orchestrator(root)
    finally:
        worker.stop()
    assert orch.exit_code == 0
    views = {v["name"]: v for v in orch.report.info["workers"]}
    assert views["gone"]["state"] == "error"
    assert "does not exist" in views["gone"]["last_error"]
    assert not (tmp_path / "nowhere").exists()             # never created behind the operator
    assert_indexed_once(root, keys)


def test_a_batch_of_a_worker_gone_from_hosts_toml_is_given_back(tmp_path):
    root = db_root(tmp_path / "root", batch_size=8)
    write_hosts(root, local_hosts(tmp_path / "old", "old"))
    heartbeat(tmp_path / "old")
    add_downloaded(root, 8)
    run_orchestrator(root, until=lambda: bool(inbox_names(tmp_path / "old")))
    write_hosts(root, local_hosts(tmp_path / "new", "new"))
    worker = StubWorker(tmp_path / "new").start()
    try:
        assert run_orchestrator(root).exit_code == 0
    finally:
        worker.stop()
    rows = batches(root)
    assert rows[0][2] == "expired" and "no longer in hosts.toml" in rows[0][4]
    assert rows[1][1:3] == ("new", "imported")


def test_missing_download_files_fail_only_their_images(tmp_path):
    root = db_root(tmp_path / "root", batch_size=8)
    keys = add_downloaded(root, 8)
    (root.download_dir / f"{keys[3][0]}_{keys[3][1]}.jpg").unlink()
    worker = StubWorker(root.path).start()
    try:
        assert run_orchestrator(root).exit_code == 0
    finally:
        worker.stop()
    st = states(root)
    assert (st["embedded"], st["failed"]) == (7, 1)
    assert_indexed_once(root, [k for k in keys if k != keys[3]])


# ---- pieces ------------------------------------------------------------------------------

def test_text_and_names():
    assert text_for("Oak table", '["oak", "steel"]') == "Oak table. oak, steel"
    assert text_for(None, None) == ". "
    assert text_for("Stool", "not json") == "Stool. "
    name = batch_name(12, 1700000000.123, "a1b2c3")
    assert parse_name(name) == (12, "a1b2c3")
    assert parse_name("b12-x") is None


def test_throughput_decides_batches_in_flight_and_who_gets_the_next():
    slow, fast, new = scheduler.Throughput(), scheduler.Throughput(), scheduler.Throughput()
    slow.add_rate(10.0)
    slow.add_ship(5.0)
    fast.add_rate(1000.0)
    fast.add_ship(30.0)
    # the slow one never idles with 2; the fast one needs more queued to cover a shipment
    assert scheduler.target_in_flight(slow, 10000, 5.0, 2, 4) == 2
    assert scheduler.target_in_flight(fast, 10000, 5.0, 2, 8) == 5
    assert scheduler.target_in_flight(fast, 10000, 5.0, 2, 4) == 4
    assert scheduler.target_in_flight(new, 10000, 5.0, 2, 4) == 2
    # scarce images: the next batch goes to whoever would finish it first
    assert scheduler.choose([("slow", 0, slow), ("fast", 20000, fast)], 10000, 5.0) == "fast"
    assert scheduler.choose([("slow", 0, slow), ("fast", 2_000_000, fast)], 10000, 5.0) == "slow"
    assert scheduler.choose([("slow", 0, slow), ("new", 0, new)], 10000, 5.0) == "new"
    assert scheduler.choose([], 10000, 5.0) is None


def test_unpack_refuses_members_outside_the_batch(tmp_path):
    import io
    import tarfile

    root = tmp_path / "w"
    (root / "worker" / "incoming").mkdir(parents=True)
    (root / "worker" / "inbox").mkdir(parents=True)
    tar_path = root / "worker" / "incoming" / "b1.tar"
    with tarfile.open(tar_path, "w") as tar:
        for name in ("b1/manifest.json", "b1/../../evil.txt"):
            info = tarfile.TarInfo(name)
            info.size = 2
            tar.addfile(info, io.BytesIO(b"{}"))
    with pytest.raises(hostops.OpError, match="not part of a batch|not a file under"):
        hostops.call("unpack", {"root": str(root), "name": "b1"})
    assert not (tmp_path / "evil.txt").exists()
    assert hostops.call("state", {"root": str(root)})["inbox"] == []
    with pytest.raises(hostops.RootMissing):
        hostops.call("state", {"root": str(tmp_path / "nope")})
    with pytest.raises(hostops.OpError, match="bad batch name"):
        hostops.call("cleanup", {"root": str(root), "name": "../x"})


def test_bad_settings_are_one_clear_error(tmp_path):
    from pipeline.core.errors import UserError
    from pipeline.stages.orchestrate.settings import OrchestrateSettings

    root = db_root(tmp_path / "root", extra="min_in_flight = 5\nmax_in_flight = 2\n")
    with pytest.raises(UserError, match="min_in_flight"):
        OrchestrateSettings.from_config(root.config)
    (root.path / "imageselector.toml").write_text('[orchestrate]\nbatch_size = "many"\n')
    root2 = type(root)(root.path)
    with pytest.raises(UserError, match="batch_size"):
        OrchestrateSettings.from_config(root2.config)


def test_a_worker_that_cannot_be_started_is_that_workers_error(tmp_path):
    root = db_root(tmp_path / "root", batch_size=4, start_workers=True)
    (tmp_path / "k").mkdir()
    (tmp_path / "k" / "KILL_WORKER").write_text("operator: keep this worker down\n")
    write_hosts(root, local_hosts(tmp_path / "k", "killed")
                + local_hosts(tmp_path / "p", "nopython") + 'python = "/nonexistent/python3"\n')
    (tmp_path / "p").mkdir()
    add_downloaded(root, 8)
    orch = run_orchestrator(root, timeout_s=60)
    assert orch.exit_code == 1 and "no usable worker" in orch.failure
    views = {v["name"]: v for v in orch.report.info["workers"]}
    assert views["killed"]["state"] == "error" and "KILL_WORKER" in views["killed"]["last_error"]
    assert views["nopython"]["state"] == "error"
    assert "/nonexistent/python3" in views["nopython"]["last_error"]
    # the operator's kill file is left alone, nothing was lost
    assert (tmp_path / "k" / "KILL_WORKER").read_text().startswith("operator")
    assert states(root)["downloaded"] == 8


def test_workers_status_for_the_console(tmp_path):
    root = db_root(tmp_path / "root")
    write_hosts(root, local_hosts(tmp_path / "up", "up") + local_hosts(tmp_path / "down", "down")
                + local_hosts(tmp_path / "gone", "gone"))
    heartbeat(tmp_path / "up", batch="b0000007-abcdef-1")
    heartbeat(tmp_path / "down", state="stopped")
    code = (
        "import json, sys\n"
        "from pipeline.core.root import Root\n"
        "from pipeline.stages.orchestrate import workers_status\n"
        f"print(json.dumps(workers_status(Root({str(root.path)!r}))))\n"
        "heavy = [m for m in ('torch', 'faiss', 'open_clip', 'transformers', 'rembg', "
        "'onnxruntime', 'textual') if m in sys.modules]\n"
        "print(json.dumps(heavy))\n")
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    views = {v["name"]: v for v in json.loads(lines[0])}
    assert json.loads(lines[1]) == []                       # the status path stays light
    assert views["up"]["state"] == "running" and views["up"]["busy"]
    assert views["down"]["state"] == "stopped"
    assert views["gone"]["state"] == "error" and "does not exist" in views["gone"]["last_error"]
