"""The chaos soak's short version (bench/bench_chaos.py, issue 20): a few of each fault on a
sandbox root with two SSH workers behind loopback proxies and the local one, then the fault-free
finish and every check, including equality with a fault-free run of the same catalogue."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.sshd_support import find_sshd

pytestmark = pytest.mark.timeout(600)
REPO = Path(__file__).resolve().parent.parent
CHECKS = ("restore drills", "fault-free finish", "SQLite integrity", "acknowledged writes",
          "images on disk", "index", "tars", "equal to a fault-free run",
          "no signal from the product", "no process left")


def test_short_chaos_run_loses_and_doubles_nothing():
    if find_sshd() is None:
        pytest.fail("sshd is not installed: apt-get install openssh-server (make sysdeps)")
    out = subprocess.run([sys.executable, str(REPO / "bench" / "bench_chaos.py"), "--seed", "7",
                          "--minutes", "0.4", "--listings", "10", "--stage-kills", "3",
                          "--import-kills", "1", "--ssh-cuts", "1", "--ssh-stalls", "1",
                          "--worker-kills", "1", "--disk-floors", "1", "--pipeline-kills", "1",
                          "--backup-drills", "1"], capture_output=True, text=True, timeout=580,
                         cwd=REPO, stdin=subprocess.DEVNULL)
    text = out.stdout + out.stderr
    assert "seed: 7" in text
    for name in CHECKS:
        assert re.search(rf"\[ok\] {re.escape(name)}:", text), f"{name} not ok:\n{text[-4000:]}"
    assert out.returncode == 0, text[-4000:]
    injected = dict(re.findall(r"^  (\w+): (\d+)$", text, re.M))
    assert int(injected.get("stage_kill", 0)) >= 1 and int(injected.get("pipeline_kill", 0)) == 1
    assert int(injected.get("backup_kill_drill", 0)) == 1
    assert int(injected.get("etsy_fault_responses", 0)) > 0
