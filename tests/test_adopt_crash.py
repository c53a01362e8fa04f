"""Killed adoptions: a SIGKILL at any moment, then a restart, gives exactly what one
uninterrupted adoption gives; SIGTERM stops between units and the next run finishes."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from original_support import adopted_digest, build_original, root_config, tree_digest
from support import run_cli, wait_for

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    return build_original(tmp_path_factory.mktemp("orig") / "orig")


@pytest.fixture(scope="module")
def reference(original, tmp_path_factory):
    """One uninterrupted adoption: its digest and how long it took in this process."""
    from pipeline.adopt import adopt
    from pipeline.core.root import Root

    path = tmp_path_factory.mktemp("ref") / "root"
    root_config(path, original.spec)
    root = Root(path).ensure()
    t0 = time.monotonic()
    report = adopt(root, original.path)
    took = time.monotonic() - t0
    assert report.ok, report.bad_inputs
    return {"digest": adopted_digest(root, times=False), "seconds": took}


def _check_final(root, original, reference):
    from pipeline.core.db import open_db
    from pipeline.index import verify

    assert adopted_digest(root, times=False) == reference["digest"]
    conn = open_db(root)
    try:
        problems, summary = verify(root, conn)
        assert problems == [] and summary["rows"] == 250
    finally:
        conn.close()
    assert not (root.embeddings_dir / ".adopt-staging").exists()


def _spawn(root_path, original, *extra):
    env = dict(os.environ)
    env.pop("IMAGESELECTOR_ROOT", None)
    return subprocess.Popen([sys.executable, "-m", "imageselector", "adopt", "--root", str(root_path),
                             "--from", str(original.path), "--json", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                            stdin=subprocess.DEVNULL)


def test_sigkill_of_the_command_then_restart(original, reference, tmp_path):
    from pipeline.core.root import Root

    root_path = tmp_path / "root"
    root_config(root_path, original.spec)
    before = tree_digest(original.path)
    rng = random.Random(11)
    # the command spends its first ~0.5 s importing; kill somewhere in the work after that
    for _ in range(3):
        proc = _spawn(root_path, original)
        time.sleep(0.4 + rng.uniform(0, 2 * reference["seconds"]))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    done = run_cli("adopt", "--from", original.path, "--json", root=root_path)
    assert done.returncode == 0, done.stdout + done.stderr
    _check_final(Root(root_path), original, reference)
    assert tree_digest(original.path) == before


def test_sigkill_at_random_moments_in_forked_children(original, reference, tmp_path):
    """15 kills at random moments: five fresh roots, each killed three times in a row
    (each run resuming what the last one left), then finished and compared."""
    from pipeline.adopt import adopt
    from pipeline.core.root import Root

    rng = random.Random(5)
    mid_run = 0
    for chain in range(5):
        root_path = tmp_path / f"root{chain}"
        root_config(root_path, original.spec)
        Root(root_path).ensure()
        for _ in range(3):
            pid = os.fork()
            if pid == 0:  # the child: one adoption, however far it gets
                code = 1
                try:
                    adopt(Root(root_path), original.path)
                    code = 0
                finally:
                    os._exit(code)
            time.sleep(rng.uniform(0, 0.8 * reference["seconds"]))
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _, status = os.waitpid(pid, 0)
            mid_run += os.WIFSIGNALED(status)
        report = adopt(Root(root_path), original.path)
        assert report.ok, report.bad_inputs
        _check_final(Root(root_path), original, reference)
    assert mid_run >= 1   # kills landed inside runs (a test that never kills proves nothing)


def test_sigterm_stops_between_units_and_the_next_run_finishes(original, reference, tmp_path):
    from pipeline.core.root import Root

    root_path = tmp_path / "root"
    root_config(root_path, original.spec, **{"adopt.batch_rows": 5})
    proc = _spawn(root_path, original)
    log = root_path / "logs" / "adopt.log"
    # SIGTERM once the command is under way (its handler is set before the first phase
    # starts; before that, on a loaded machine, the signal would just end the interpreter)
    wait_for(lambda: proc.poll() is not None or (log.exists() and ": starting" in log.read_text()),
             timeout=60, what="the adoption to start its first phase")
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    err = proc.stderr.read().decode()
    assert proc.returncode in (0, 3), err
    if proc.returncode == 3:
        assert "run the same command again to resume" in err
        state = json.loads((root_path / "run/adopt/report.json").read_text())
        assert state["outcome"] == "stopped"
    done = run_cli("adopt", "--from", original.path, root=root_path)
    assert done.returncode == 0, done.stdout + done.stderr
    _check_final(Root(root_path), original, reference)
