"""The orchestrator with a Ray worker against a real Ray cluster on loopback: a head and a
second node started here (`ray start`, one CPU each, stopped by pid at the end), model
actors with the test-profile models. A normal run imports every batch once on both nodes;
the orchestrator killed in the middle of an import and restarted imports nothing twice; a
node killed (its raylet) while it holds a batch: the batch runs on the other node and is
imported once. The cluster is started once for the module (Ray's start-up is the slow part)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import models_support  # noqa: F401 - sets $U2NET_HOME before the nodes start
from tests.orchestrate_support import (FakeReport, add_downloaded, assert_indexed_once, batches,
                                       db_root, in_thread, run_orchestrator, write_hosts)
from tests.ray_support import RAY_ENV, REPO, Cluster, ours
from tests.support import wait_for

pytest.importorskip("ray")
pytestmark = pytest.mark.timeout(420)

MODELS = """
[models]
profile = "test"
device = "cpu"

[worker]
batch_size = 4
prep_threads = 1
prefetch_images = 4
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("ray"))
    # this process is the driver (the orchestrator and reembed run in it): the same auth mode
    saved = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = RAY_ENV["RAY_AUTH_MODE"]
    try:
        c.start()
        yield c
    finally:
        _disconnect()
        c.stop()
        if saved is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = saved
    assert ours(c.marker) == [], "a process of the test cluster is still running"


def _disconnect() -> None:
    """This process's Ray driver (the orchestrator and reembed ran in it) goes with the
    cluster: later tests fork this process, and a forked child of a live Ray/gRPC driver
    can hang."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


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
from tests.ray_support import RAY_ENV, REPO, Cluster, ours
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


def test_reembed_on_the_cluster_switches_the_same_column_as_in_process(tmp_path, cluster):
    """`reembed MODEL --workers cloud`: the slices run on the cluster's actors, this process
    writes them; the column equals the model run here on the tarred images."""
    from imageselector.commands.reembed import make_route, slice_loader
    from pipeline.core.db import connect
    from pipeline.index import verify
    from pipeline.reembed.run import reembed
    from tests.reembed_support import (MODEL, assert_column, build_root, column_embedder,
                                        expected_vectors)

    for f in cluster.hold.glob("*"):
        f.unlink()
    root = build_root(tmp_path / "root")
    write_hosts(root, f'[workers.cloud]\nkind = "ray"\naddress = "{cluster.address}"\n'
                      f"actors = 1\nnum_cpus = 1\n")     # one actor: one model load
    conn = connect(root.db_path)
    route = make_route(root, MODEL, "ray", 4)
    summary = reembed(root, conn, MODEL, route, slice_loader(root, conn, False))
    assert summary["state"] == "switched" and summary["route"] == "ray"
    assert summary["slices"] == 6 and route.retried == 0
    assert verify(root, conn)[0] == []
    assert_column(root, conn, expected_vectors(root, column_embedder()))
    conn.close()


def test_a_ray_client_address_runs_the_orchestrator_and_the_reembed(tmp_path, cluster):
    """`address = "ray://HEAD:PORT"` (Ray Client: no local node, ray[client]): the same
    orchestrator run and the same re-embed as with the head's GCS address."""
    from imageselector.commands.reembed import make_route, slice_loader
    from pipeline.core.db import connect
    from pipeline.reembed.run import reembed
    from tests.reembed_support import (MODEL, assert_column, build_root, column_embedder,
                                        expected_vectors)

    for f in cluster.hold.glob("*"):
        f.unlink()
    _disconnect()                              # this process was a driver of the GCS address
    try:
        root, keys = _ray_root(tmp_path / "orch", cluster, 8, actors=1)
        write_hosts(root, f'[workers.cloud]\nkind = "ray"\naddress = "{cluster.client_address}"\n'
                          f"actors = 1\nnum_cpus = 1\n")
        orch = run_orchestrator(root, timeout_s=300)
        assert orch.exit_code == 0
        _imported_once(root, keys)

        root = build_root(tmp_path / "reembed")
        write_hosts(root, f'[workers.cloud]\nkind = "ray"\naddress = "{cluster.client_address}"\n'
                          f"actors = 1\nnum_cpus = 1\n")
        conn = connect(root.db_path)
        summary = reembed(root, conn, MODEL, make_route(root, MODEL, "ray", 4),
                          slice_loader(root, conn, False))
        assert summary["state"] == "switched" and summary["slices"] == 6
        assert_column(root, conn, expected_vectors(root, column_embedder()))
        conn.close()
    finally:
        _disconnect()


def test_a_graceful_stop_lets_the_batch_on_an_actor_finish_and_imports_it(tmp_path, cluster):
    """KILL_ORCH (here: the loop's checkpoint) while a batch is in an actor's hands: the
    orchestrator waits for it (ray_drain.py) and imports it; the batches not started go back
    to the queue at once; no batch is left leased and no image is lost."""
    import threading

    from pipeline.core import db as dbm

    (cluster.hold / "hold").write_text("hold")
    for f in cluster.hold.glob("*.held"):
        f.unlink()
    root, _ = _ray_root(tmp_path / "root", cluster, 0)
    stop = threading.Event()
    report = FakeReport()
    run = in_thread(run_orchestrator, root, once=False, timeout_s=300, stop=stop, report=report)

    def actors_ready() -> int:
        views = [w.get("ray") or {} for w in report.info.get("workers") or []]
        return sum(v.get("actors_ready", 0) for v in views)
    # the work comes once both actors are up: on a loaded machine the head's actor alone
    # would take every batch before the holding node's actor is ready
    wait_for(lambda: actors_ready() == 2, timeout=240, what="both actors ready")
    keys = add_downloaded(root, 8)
    wait_for(lambda: any(cluster.hold.glob("*.held")), timeout=240)
    held = sorted(p.name[:-5] for p in cluster.hold.glob("*.held"))
    stop.set()                                 # graceful stop with a batch in hand
    time.sleep(1.0)
    (cluster.hold / "hold").unlink()           # ... which then finishes
    orch = run.result(timeout=240)
    assert orch.exit_code == 0
    from pipeline.stages.orchestrate.ledger import ACTIVE, parse_name

    rows = {r[0]: r for r in batches(root)}
    for name in held:
        assert rows[parse_name(name)[0]][2] == "imported"
    assert not [r for r in rows.values() if r[2] in ACTIVE]       # nothing left leased
    conn = dbm.open_db(root)
    states = dict(((a, b), s) for a, b, s in conn.execute(
        "SELECT listing_id, image_id, state FROM image_status"))
    conn.close()
    embedded = [k for k in keys if states[k] == "embedded"]
    assert set(states.values()) <= {"embedded", "downloaded"} and embedded
    assert_indexed_once(root, embedded)


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


def test_reembed_with_a_node_killed_mid_slice_runs_that_slice_elsewhere_once(tmp_path, cluster):
    """The second node's actor holds a slice; its raylet is killed: the slice goes to the head's
    actor, the column switches once and every row holds its own image's vector."""
    import threading

    from imageselector.commands.reembed import make_route, slice_loader
    from pipeline.core.db import connect
    from pipeline.index import verify
    from pipeline.reembed.run import reembed
    from tests.reembed_support import (MODEL, assert_column, build_root, column_embedder,
                                        expected_vectors)

    cluster.ensure_second_node()
    for f in cluster.hold.glob("*"):
        f.unlink()
    (cluster.hold / "hold").write_text("hold")
    root = build_root(tmp_path / "root")
    write_hosts(root, f'[workers.cloud]\nkind = "ray"\naddress = "{cluster.address}"\n'
                      f"actors = 2\nnum_cpus = 1\n")      # one actor a node
    route = make_route(root, MODEL, "ray", 4)
    box = {}

    def run():
        conn = connect(root.db_path)
        try:
            box["summary"] = reembed(root, conn, MODEL, route, slice_loader(root, conn, False))
        except BaseException as exc:          # noqa: BLE001 - handed to the test
            box["error"] = exc
        finally:
            conn.close()
    t = threading.Thread(target=run, daemon=True)
    t.start()
    wait_for(lambda: any(cluster.hold.glob("*.held")), timeout=240)
    raylet = cluster.second_raylet()
    raylet.kill()                              # the node dies with the slice in hand
    raylet.wait(30)
    (cluster.hold / "hold").unlink()
    t.join(300)
    assert "error" not in box, box.get("error")
    assert box["summary"]["state"] == "switched" and route.retried >= 1
    conn = connect(root.db_path)
    assert verify(root, conn)[0] == []
    assert_column(root, conn, expected_vectors(root, column_embedder()))
    conn.close()


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


def test_a_second_cluster_address_in_one_process_is_refused(monkeypatch):
    """A Ray driver joins one cluster: connecting again to another address must not silently
    use the first one (the work would go to the wrong machines)."""
    import ray

    from pipeline.core import raycluster

    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(raycluster, "_connected_to", "ray://10.0.0.5:10001")
    raycluster.connect("ray://10.0.0.5:10001", "cloud")           # the same one: nothing to do
    with pytest.raises(raycluster.RayUnavailableError,
                       match=r"^cloud: this process is already connected to the Ray cluster at "
                             r"ray://10\.0\.0\.5:10001, not 10\.0\.0\.6:6379"):
        raycluster.connect("10.0.0.6:6379", "cloud")


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
