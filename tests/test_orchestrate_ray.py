"""The orchestrator with a Ray worker against a real Ray cluster on loopback: a head and a
second node started here (`ray start`, one CPU each, stopped by pid at the end), model
actors with the test-profile models. A normal run imports every batch once on both nodes;
the orchestrator killed in the middle of an import and restarted imports nothing twice; a
node killed (its raylet) while it holds a batch: the batch runs on the other node and is
imported once. The cluster is started once for the module (Ray's start-up is the slow part)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil
import pytest

from tests import models_support  # noqa: F401 - sets $U2NET_HOME before the nodes start
from tests.orchestrate_support import (add_downloaded, assert_indexed_once, batches, db_root,
                                       in_thread, run_orchestrator, write_hosts)
from tests.support import wait_for

pytest.importorskip("ray")
pytestmark = pytest.mark.timeout(420)

REPO = Path(__file__).resolve().parent.parent
MARK = "IMAGESELECTOR_TEST_RAY_CLUSTER"
# nothing beyond loopback, no usage report; node deaths noticed in seconds, not half a minute
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_health_check_initial_delay_ms": "0",
           "RAY_health_check_period_ms": "500", "RAY_health_check_timeout_ms": "1000",
           "RAY_health_check_failure_threshold": "3", "RAY_BACKEND_LOG_LEVEL": "warning"}
MODELS = """
[models]
profile = "test"
device = "cpu"

[worker]
batch_size = 4
prep_threads = 1
prefetch_images = 4
"""


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _ours(marker: str) -> list[psutil.Process]:
    """Every process of this cluster: they all inherit the marker from `ray start`."""
    found = []
    for p in psutil.process_iter(["pid", "uids"]):
        try:
            if p.uids().real == os.getuid() and p.environ().get(MARK) == marker:
                found.append(p)
        except (psutil.Error, OSError):
            continue
    return found


class Cluster:
    def __init__(self, base: Path):
        self.marker = uuid.uuid4().hex
        self.hold = base / "hold"
        self.hold.mkdir()
        self.temp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))   # short: unix sockets
        self.ray = str(Path(sys.executable).with_name("ray"))
        (self.port,) = _free_ports(1)
        self.address = f"127.0.0.1:{self.port}"

    def _start(self, args: list[str], extra_env: dict) -> None:
        env = dict(os.environ, **RAY_ENV, **extra_env)
        env[MARK] = self.marker
        nm, om, al, ag, me, re_ = _free_ports(6)     # two nodes on one machine: no defaults
        cmd = [self.ray, "start", *args, "--num-cpus=1", "--num-gpus=0",
               "--node-ip-address=127.0.0.1", f"--temp-dir={self.temp}",
               "--object-store-memory=80000000", "--disable-usage-stats",
               f"--node-manager-port={nm}", f"--object-manager-port={om}",
               f"--dashboard-agent-listen-port={al}", f"--dashboard-agent-grpc-port={ag}",
               f"--metrics-export-port={me}", f"--runtime-env-agent-port={re_}"]
        out = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=180)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]

    def start(self) -> None:
        self._start(["--head", f"--port={self.port}", "--include-dashboard=false"], {})
        # the second node: its actor waits on the hold file, so a test can kill it mid-batch
        self._start([f"--address={self.address}"], {"IMAGESELECTOR_RAY_TEST_HOLD": str(self.hold)})

    def second_raylet(self) -> psutil.Process:
        for p in _ours(self.marker):
            try:
                if p.name() == "raylet" and p.environ().get("IMAGESELECTOR_RAY_TEST_HOLD"):
                    return p
            except psutil.Error:
                continue
        raise AssertionError("the second node's raylet is not running")

    def stop(self) -> None:
        procs = _ours(self.marker)
        for p in procs:
            try:
                p.send_signal(signal.SIGTERM)
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(procs, timeout=10)
        for p in alive:
            try:
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(alive, timeout=5)
        subprocess.run(["rm", "-rf", str(self.temp)], check=False)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("ray"))
    try:
        c.start()
        yield c
    finally:
        c.stop()
    assert _ours(c.marker) == [], "a process of the test cluster is still running"


def _ray_root(path: Path, cluster: Cluster, n_images: int, actors: int = 2, lease_s: float = 600.0):
    root = db_root(path, batch_size=4, lease_s=lease_s, poll_s=0.3, start_workers=True,
                   extra="max_in_flight = 2\n" + MODELS.replace("[models]", "\n[models]", 1))
    write_hosts(root, f'[workers.cloud]\nkind = "ray"\naddress = "{cluster.address}"\n'
                      f"actors = {actors}\nnum_cpus = 1\n")
    return root, add_downloaded(root, n_images)


def _imported_once(root, keys) -> None:
    assert_indexed_once(root, keys)
    rows = batches(root)
    imported = [r for r in rows if r[2] == "imported"]
    assert sum(r[3] for r in imported) == len(keys)     # no image in two imported batches
    assert {r[1] for r in rows} == {"cloud"}


def test_a_run_on_two_nodes_imports_every_batch_once(tmp_path, cluster):
    for f in cluster.hold.glob("*"):
        f.unlink()
    root, keys = _ray_root(tmp_path / "root", cluster, 16)
    orch = run_orchestrator(root, timeout_s=300)
    assert orch.exit_code == 0
    _imported_once(root, keys)
    link = orch.workers["cloud"].link
    assert len(link.nodes_seen) == 2          # both nodes ran actors
    view = orch.worker_view(orch.workers["cloud"], time.time())   # status and the console
    assert view["kind"] == "ray" and view["ray"]["actors"] == 2
    assert view["imported_batches"] == 4 and view["images_per_s"]
    assert len(batches(root)) == 4            # nothing retried
    # the result tars the link kept until import are gone; the spool holds nothing
    spool = root.run_dir / "orchestrate"
    assert [p for p in spool.rglob("*") if p.is_file()] == []


CHILD = """
import sys, time, pathlib
from pipeline.core.root import Root
from pipeline.stages.orchestrate import intake
from tests.orchestrate_support import run_orchestrator

marker = pathlib.Path(sys.argv[2])
real = intake.import_vectors

def importing(*args, **kwargs):
    out = real(*args, **kwargs)        # the vectors are in the index, the ledger not told yet
    marker.write_text("importing")
    time.sleep(600)
    return out

intake.import_vectors = importing
run_orchestrator(Root(sys.argv[1]), timeout_s=500)
"""


def test_the_orchestrator_killed_mid_import_imports_nothing_twice(tmp_path, cluster):
    root, keys = _ray_root(tmp_path / "root", cluster, 12)
    marker = tmp_path / "importing"
    env = dict(os.environ, **RAY_ENV)
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(root.path), str(marker)],
                             cwd=REPO, env=env)
    try:
        wait_for(lambda: marker.exists() or child.poll() is not None, timeout=300)
        assert marker.exists(), f"the orchestrator exited ({child.returncode}) before an import"
    finally:
        child.kill()
        child.wait(30)
    states = [r[2] for r in batches(root)]
    assert states.count("imported") < len(keys) // 4             # killed before the end
    orch = run_orchestrator(root, timeout_s=300)
    assert orch.exit_code == 0
    _imported_once(root, keys)
    spool = root.run_dir / "orchestrate"                          # nothing left half-done
    assert [p for p in spool.rglob("*") if p.is_file() and "manifests" not in p.parts] == []


def test_a_node_killed_mid_batch_its_batch_runs_elsewhere_once(tmp_path, cluster):
    (cluster.hold / "hold").write_text("hold")
    for f in cluster.hold.glob("*.held"):
        f.unlink()
    root, keys = _ray_root(tmp_path / "root", cluster, 12)
    run = in_thread(run_orchestrator, root, timeout_s=300)
    wait_for(lambda: any(cluster.hold.glob("*.held")), timeout=240)
    held = sorted(p.name[:-5] for p in cluster.hold.glob("*.held"))
    raylet = cluster.second_raylet()
    raylet.kill()                              # the node dies with the batch in hand
    raylet.wait(30)
    orch = run.result()
    assert orch.exit_code == 0
    _imported_once(root, keys)
    assert orch.workers["cloud"].link.retried >= 1
    rows = {r[0]: r for r in batches(root)}
    from pipeline.stages.orchestrate.ledger import parse_name

    for name in held:                          # the held batch itself was imported, once
        assert rows[parse_name(name)[0]][2] == "imported"


@pytest.mark.parametrize("body, wrong", [
    ('address = "127.0.0.1"', "address"),
    ('address = "http://h:1"', "address"),
    ('address = "h:6379"\nactors = 0', "actors"),
    ('address = "h:6379"\nnum_gpus = -1', "num_gpus"),
    ('address = "h:6379"\nnum_cpus = 0', "num_cpus or num_gpus"),
    ('address = "h:6379"\nuser = "me"', "unknown key workers.cloud.user"),
])
def test_a_bad_ray_worker_is_one_clear_error(tmp_path, body, wrong):
    from remote.errors import HostsConfigError
    from remote.hosts import load_hosts

    path = tmp_path / "hosts.toml"
    path.write_text(f'[workers.cloud]\nkind = "ray"\n{body}\n')
    with pytest.raises(HostsConfigError, match=wrong):
        load_hosts(path)


def test_a_ray_worker_is_kept_apart_from_the_ssh_hosts(tmp_path):
    from remote.hosts import load_hosts

    path = tmp_path / "hosts.toml"
    path.write_text('[workers.here]\nlocal = true\n[workers.cloud]\nkind = "ray"\n'
                    'address = "ray://10.0.0.5:10001"\nactors = 8\nnum_gpus = 1\nmemory_gb = 24\n')
    hosts = load_hosts(path)
    assert [h.name for h in hosts] == ["here"]            # SSH and local users never see it
    cloud = hosts.ray["cloud"]
    assert cloud.kind == "ray" and cloud.ray.actors == 8 and cloud.ray.memory_gb == 24.0
    assert "8 actor(s)" in cloud.describe()
