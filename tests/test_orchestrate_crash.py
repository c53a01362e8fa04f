"""The orchestrator SIGKILLed at random moments (half of them in the middle of an import):
after each kill the index verifies and no image is leased to a dead batch; a last run
finishes the job with every image indexed exactly once. The orchestrator runs in forked
children of this process (already imported), with a stub worker thread beside it; the
local worker alternates between the direct and the tar route."""
from __future__ import annotations

import json
import logging
import os
import random
import signal
import time

import pytest

from pipeline.core import db as dbm
from pipeline.stages.orchestrate import core, intake  # noqa: F401 - imported before forking
from pipeline.stages.orchestrate.ledger import ACTIVE
from pipeline.core.root import Root
from tests.orchestrate_support import (FakeReport, StubWorker, add_downloaded,
                                       assert_indexed_once, db_root, local_hosts, write_hosts)

pytestmark = pytest.mark.timeout(240)
ITERATIONS = 20


def _orchestrate_child(root_path, wroot, direct: bool, marker, once: bool) -> None:
    """Runs in the forked child: a stub worker and the orchestrator until killed."""
    code = 1
    try:
        os.environ["IMAGESELECTOR_ORCHESTRATE_LOCAL_DIRECT"] = "true" if direct else "false"
        logging.basicConfig(filename=str(root_path / "child.log"), level=logging.INFO,
                            format="%(asctime)s [%(process)d] %(threadName)s %(message)s",
                            force=True)
        real = intake.import_vectors

        def importing(store, conn, batch_id, result):   # tells the parent: kill now
            marker.write_text(str(batch_id))
            return real(store, conn, batch_id, result)

        intake.import_vectors = importing
        root = Root(root_path)
        from pipeline.stages.orchestrate.settings import OrchestrateSettings

        worker = StubWorker(wroot).start()
        conn = dbm.open_db(root)
        orch = core.Orchestrator(root, conn, OrchestrateSettings.from_config(root.config),
                                 once=once, report=FakeReport())
        code = orch.run()
        worker.stop()
    finally:
        os._exit(code)


def _verify_child(root_path, out) -> None:
    code = 3
    try:
        from pipeline.index import verify

        root = Root(root_path)
        conn = dbm.open_db(root)
        problems, summary = verify(root, conn)
        out.write_text(json.dumps({"problems": problems, "rows": summary["rows"]}))
        code = 0 if not problems else 1
    finally:
        os._exit(code)


def _fork(fn, *args) -> int:
    pid = os.fork()
    if pid == 0:
        fn(*args)
    return pid


def _leaks(root) -> list:
    """Images leased to a batch that is no longer in flight (nobody would bring them back)."""
    conn = dbm.open_db(root)
    try:
        marks = ",".join("?" * len(ACTIVE))
        return conn.execute(
            f"SELECT s.listing_id, s.image_id, b.batch_id, b.state FROM image_status s "
            f"LEFT JOIN batches b ON b.batch_id = s.batch_id WHERE s.state = 'batched' AND "
            f"(b.state IS NULL OR b.state NOT IN ({marks}))", ACTIVE).fetchall()
    finally:
        conn.close()


def test_sigkill_at_random_moments_loses_and_doubles_nothing(tmp_path):
    rng = random.Random(int(os.environ.get("ORCH_CRASH_SEED", "6")))
    wroot = tmp_path / "w"
    root = db_root(tmp_path / "root", batch_size=6, poll_s=0.1)
    write_hosts(root, local_hosts(wroot))
    keys = add_downloaded(root, 12, first_listing=5000)
    marker = tmp_path / "importing"
    in_import = 0
    for i in range(ITERATIONS):
        keys += add_downloaded(root, rng.randint(4, 10), first_listing=10_000 + 100 * i)
        marker.unlink(missing_ok=True)
        pid = _fork(_orchestrate_child, root.path, wroot, i % 2 == 0, marker, False)
        if i % 2:                                  # in the middle of an import
            deadline = time.monotonic() + 8
            while not marker.exists() and time.monotonic() < deadline:
                time.sleep(0.002)
            time.sleep(rng.uniform(0, 0.03))
        else:                                      # anywhere
            time.sleep(rng.uniform(0.05, 1.2))
        in_import += marker.exists()
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        out = tmp_path / "verify.json"
        vpid = _fork(_verify_child, root.path, out)
        _, status = os.waitpid(vpid, 0)
        report = json.loads(out.read_text()) if out.exists() else {"problems": ["no report"]}
        assert os.waitstatus_to_exitcode(status) == 0, f"after kill {i}: {report['problems']}"
        assert _leaks(root) == [], f"after kill {i}"
    assert in_import >= ITERATIONS // 4, "too few kills landed in an import"
    # what a kill in the middle of writing a manifest or a spool record leaves behind
    spool = root.run_dir / "orchestrate"
    half_written = [spool / "manifests" / ".999.json.k1ll3d.tmp", spool / ".started.json.k1ll3d.tmp"]
    for p in half_written:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("{")
    # a last run finishes everything: nothing lost, nothing doubled
    pid = _fork(_orchestrate_child, root.path, wroot, True, marker, True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the final run did not finish")
    assert os.waitstatus_to_exitcode(status) == 0, (root.path / "child.log").read_text()[-3000:]
    assert_indexed_once(root, keys)
    assert _leaks(root) == []
    assert [p for p in spool.rglob("*.tmp")] == []
    assert list(root.download_dir.iterdir()) == []
    assert sorted(p.name for p in root.bgremoved_dir.iterdir()) == sorted(f"{a}_{b}.jpg" for a, b in keys)
