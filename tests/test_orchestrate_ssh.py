"""The orchestrator over real SSH with real workers: two SSH workers (this machine through
its own sshd each, with their own worker roots) and the local one, running the worker stage
with the test-profile models. The orchestrator starts the worker stages itself; they stay up
for the whole module (models load once) and are stopped by their kill files at the end.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import tests.models_support  # noqa: F401 - sets U2NET_HOME for the tiny background model
from pipeline.core.procs import pid_alive
from tests.orchestrate_support import (add_downloaded, assert_indexed_once, batches, db_root,
                                       write_hosts)
from tests.sshd_support import SSHServer, find_sshd, free_port, keygen
from tests.support import run_cli, wait_for

pytestmark = pytest.mark.timeout(300)
REPO = Path(__file__).resolve().parent.parent

WORKER_TOML = """\
[root]
profile = "sandbox"

[models]
profile = "test"
device = "cpu"
torch_threads = 1
bg_threads = 1

[worker]
batch_size = 4
prep_threads = 1
prefetch_images = 8
poll_s = 0.2

[stage]
heartbeat_s = 0.5
poll_s = 0.2
"""

ORCH_EXTRA = "start_workers = true\n"


class Cluster:
    def __init__(self, base: Path):
        self.base = base
        self.python = base / "python.sh"
        self.servers: dict[str, SSHServer] = {}
        self.roots: dict[str, Path] = {}

    def hosts_toml(self, extra: str = "", workers=("w1", "w2", "here")) -> str:
        out = ['known_hosts = "known_hosts"']
        for name in workers:
            if name == "here":
                out.append(f'[workers.here]\nlocal = true\nroot = "{self.roots["here"]}"\n'
                           f'python = "{self.python}"')
                continue
            s = self.servers[name]
            out.append(f'[workers.{name}]\naddress = "127.0.0.1"\nport = {s.port}\n'
                       f'user = "{s.user}"\nkey_file = "{s.client_key}"\n'
                       f'root = "{self.roots[name]}"\npython = "{self.python}"')
        return "\n".join(out) + "\n" + extra

    def db_root(self, path: Path, batch_size: int = 4, workers=("w1", "w2", "here"),
                extra_hosts: str = ""):
        root = db_root(path, batch_size=batch_size, lease_s=120.0, poll_s=0.3,
                       start_workers=True, start_retry_s=30.0)
        known = "".join(s.host_public_line() for s in self.servers.values())
        (root.path / "known_hosts").write_text(known)
        write_hosts(root, self.hosts_toml(extra_hosts, workers))
        return root

    def worker_heartbeat(self, name: str) -> dict:
        try:
            return json.loads((self.roots[name] / "run" / "worker.json").read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def stop_workers(self) -> None:
        """Kill files, then wait; a worker that does not go is ended by its pid."""
        pids = {}
        for name, wroot in self.roots.items():
            hb = self.worker_heartbeat(name)
            if hb.get("state") != "stopped" and pid_alive(hb.get("pid")):
                (wroot / "KILL_WORKER").write_text("test teardown\n")
                pids[name] = hb["pid"]
        deadline = time.monotonic() + 30
        while pids and time.monotonic() < deadline:
            pids = {n: p for n, p in pids.items() if pid_alive(p)}
            time.sleep(0.1)
        for pid in pids.values():
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if find_sshd() is None:
        pytest.fail("sshd is not installed: apt-get install openssh-server (make sysdeps)")
    from pipeline.models.testprofile import ensure_tiny_u2net

    ensure_tiny_u2net()          # made once here, not by three workers at the same time
    base = tmp_path_factory.mktemp("cluster")
    c = Cluster(base)
    # The SSH session's environment is sshd's, not ours: a wrapper gives the workers theirs.
    c.python.write_text("#!/bin/sh\n"
                        f"export U2NET_HOME='{os.environ['U2NET_HOME']}'\n"
                        "export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 NO_ALBUMENTATIONS_UPDATE=1\n"
                        f"export PYTHONPATH='{REPO}'\n"
                        f"exec '{sys.executable}' \"$@\"\n")
    c.python.chmod(0o755)
    for name in ("w1", "w2", "here"):
        wroot = base / f"root-{name}"
        wroot.mkdir()
        (wroot / "imageselector.toml").write_text(WORKER_TOML)
        c.roots[name] = wroot
    try:
        for name in ("w1", "w2"):     # one sshd each: a session can be cut for one worker
            c.servers[name] = SSHServer(base / f"sshd-{name}").start()
        yield c
    finally:
        c.stop_workers()
        for s in c.servers.values():
            s.stop()


def _orchestrate(root, timeout=240) -> subprocess.CompletedProcess:
    proc = run_cli("run", "orchestrate", "--once", root=root, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _verify(root) -> None:
    proc = run_cli("index", "verify", root=root, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_two_ssh_workers_and_the_local_one_index_a_collection(cluster, tmp_path):
    root = cluster.db_root(tmp_path / "root")
    keys = add_downloaded(root, 24, size=32)
    _orchestrate(root)
    _verify(root)
    assert_indexed_once(root, keys)
    done = batches(root)
    assert {r[2] for r in done} == {"imported"}
    assert {r[1] for r in done} == {"w1", "w2", "here"}     # every worker took part
    for name in ("w1", "w2", "here"):                        # started there by the orchestrator
        hb = cluster.worker_heartbeat(name)
        assert hb.get("state") == "running" and pid_alive(hb.get("pid")), name
    # nothing left in transit on any host, every raw download gone, every archive copy there
    for wroot in cluster.roots.values():
        for sub in ("inbox", "outbox", "incoming", "results"):
            d = wroot / "worker" / sub
            assert not d.exists() or list(d.iterdir()) == [], (wroot, sub)
    assert list(root.download_dir.iterdir()) == []
    assert len(list(root.bgremoved_dir.glob("*.jpg"))) == len(keys)
    # the console's view of the workers
    from pipeline.stages.orchestrate import workers_status

    views = {v["name"]: v for v in workers_status(root)}
    assert {v["state"] for v in views.values()} == {"running"}
    assert views["w1"]["pid"] == cluster.worker_heartbeat("w1")["pid"]


def test_a_cut_ssh_connection_mid_batch_loses_nothing(cluster, tmp_path):
    root = cluster.db_root(tmp_path / "root", workers=("w1", "w2"))
    keys = add_downloaded(root, 40, first_listing=30000, size=32)
    log = open(tmp_path / "orchestrate.out", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "imageselector", "--root", str(root.path),
                             "run", "orchestrate", "--once"], stdout=log, stderr=log,
                            stdin=subprocess.DEVNULL)
    try:
        # w1 holds a batch (shipped, in work or with its result waiting): cut its connection
        wait_for(lambda: any(r[1] == "w1" and r[2] in ("shipped", "running") for r in batches(root)),
                 timeout=120, interval=0.01, what="a batch in flight on w1")
        cuts = cluster.servers["w1"].kill_session()
        assert cuts >= 1, "no SSH session to cut"
        time.sleep(0.4)
        cluster.servers["w1"].kill_session()            # and again, wherever it is then
        assert proc.wait(timeout=240) == 0, (tmp_path / "orchestrate.out").read_text()[-4000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    _verify(root)
    assert_indexed_once(root, keys)
    assert any(r[1] == "w1" and r[2] == "imported" for r in batches(root))
    hb = json.loads(root.heartbeat_path("orchestrate").read_text())
    w1 = next(v for v in hb["info"]["workers"] if v["name"] == "w1")
    assert w1["connects"] >= 2, "the cut connection was never made again"


def test_refused_host_key_and_other_host_faults_are_each_that_workers_error(cluster, tmp_path):
    stranger = SSHServer(tmp_path / "sshd-stranger").start()     # its key is in no known_hosts
    try:
        other_key = keygen(tmp_path / "not_authorized")
        s1 = cluster.servers["w1"]
        closed = free_port()
        broken = (
            f'[workers.stranger]\naddress = "127.0.0.1"\nport = {stranger.port}\n'
            f'user = "{stranger.user}"\nkey_file = "{stranger.client_key}"\n'
            f'root = "{tmp_path}"\npython = "{cluster.python}"\n'
            f'[workers.wrongkey]\naddress = "127.0.0.1"\nport = {s1.port}\n'
            f'user = "{s1.user}"\nkey_file = "{other_key}"\n'
            f'root = "{cluster.roots["w1"]}"\npython = "{cluster.python}"\n'
            f'[workers.noroot]\naddress = "127.0.0.1"\nport = {s1.port}\n'
            f'user = "{s1.user}"\nkey_file = "{s1.client_key}"\n'
            f'root = "{tmp_path / "no-such-root"}"\npython = "{cluster.python}"\n'
            f'[workers.down]\naddress = "127.0.0.1"\nport = {closed}\n'
            f'user = "{s1.user}"\nkey_file = "{s1.client_key}"\n'
            f'root = "{tmp_path}"\npython = "{cluster.python}"\n')
        root = cluster.db_root(tmp_path / "root", workers=("here",), extra_hosts=broken)
        keys = add_downloaded(root, 8, first_listing=40000, size=32)
        _orchestrate(root)
        assert_indexed_once(root, keys)
        assert {r[1] for r in batches(root) if r[2] == "imported"} == {"here"}
        hb = json.loads(root.heartbeat_path("orchestrate").read_text())
        views = {v["name"]: v for v in hb["info"]["workers"]}
        assert views["stranger"]["state"] == "error"
        assert "not in" in views["stranger"]["last_error"] and "known_hosts" in views["stranger"]["last_error"]
        assert views["wrongkey"]["state"] == "error"
        assert views["noroot"]["state"] == "error" and "does not exist" in views["noroot"]["last_error"]
        assert views["down"]["state"] == "unreachable"
        assert not (tmp_path / "no-such-root").exists()
        assert "stranger" not in (root.path / "known_hosts").read_text()
        # the same faults as `status` shows them, each host looked at on its own
        from pipeline.stages.orchestrate import workers_status

        now = {v["name"]: v for v in workers_status(root, timeout_s=2.0)}
        assert now["here"]["state"] == "running"
        assert now["stranger"]["state"] == "error" and "known_hosts" in now["stranger"]["last_error"]
        assert now["noroot"]["state"] == "error"
        assert now["down"]["state"] == "unreachable"
    finally:
        stranger.stop()
