"""`imageselector reembed MODEL --workers w1,w2` on the home lab's workers: two SSH workers
(this machine through its own sshd each, behind a loopback TCP proxy), each with its own root
and the test-profile models, serving the slices (pipeline/reembed/serve.py). A normal run; a
server killed (SIGKILL, by the pid in its heartbeat) in the middle of a slice; a host that
stops answering in the middle of a slice; a host whose model cannot load. After each: the
column is switched once, every row holds its own image's vector (the model run here on the
tarred bytes), `index verify` passes, and no server is left running nor a slice file left on
a worker."""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path

import pytest

import tests.models_support  # noqa: F401 - sets U2NET_HOME
from pipeline.core.db import connect
from pipeline.core.procs import pid_alive
from pipeline.index import verify
from pipeline.reembed import serve
from tests.reembed_support import MODEL, assert_column, build_root, column_embedder, expected_vectors
from tests.sshd_support import SSHServer, find_sshd
from tests.support import wait_for
from tests.tcp_proxy import TCPProxy

pytestmark = pytest.mark.timeout(300)
REPO = Path(__file__).resolve().parent.parent
WORKER_TOML = """[root]
profile = "sandbox"

[models]
profile = "{profile}"
device = "cpu"
torch_threads = 1
{extra}
[worker]
batch_size = 4
"""


class Lab:
    """Two SSH workers; w1's server announces each slice and waits while ``hold/hold`` exists."""

    def __init__(self, base: Path):
        self.base = base
        self.hold = base / "hold"
        self.hold.mkdir()
        self.servers: dict[str, SSHServer] = {}
        self.proxies: dict[str, TCPProxy] = {}
        self.roots: dict[str, Path] = {}
        self.pythons: dict[str, Path] = {}

    def start(self) -> "Lab":
        for name in ("w1", "w2"):
            wroot = self.base / f"root-{name}"
            wroot.mkdir()
            (wroot / "imageselector.toml").write_text(WORKER_TOML.format(profile="test", extra=""))
            self.roots[name] = wroot
            py = self.base / f"python-{name}.sh"
            hold = f"export IMAGESELECTOR_TEST_HOLD='{self.hold}'\n" if name == "w1" else ""
            # the SSH session's environment is sshd's: the wrapper gives the server ours
            py.write_text("#!/bin/sh\n"
                          f"export U2NET_HOME='{os.environ['U2NET_HOME']}'\n"
                          "export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1\n" + hold +
                          f"export PYTHONPATH='{REPO}'\nexec '{sys.executable}' \"$@\"\n")
            py.chmod(0o755)
            self.pythons[name] = py
            self.servers[name] = SSHServer(self.base / f"sshd-{name}").start()
            self.proxies[name] = TCPProxy(self.servers[name].port)
        return self

    def hosts_toml(self, models_root: dict[str, Path] | None = None) -> str:
        out = ['known_hosts = "known_hosts"']
        for name, s in self.servers.items():
            root = (models_root or {}).get(name, self.roots[name])
            out.append(f'[workers.{name}]\naddress = "127.0.0.1"\nport = {self.proxies[name].port}\n'
                       f'user = "{s.user}"\nkey_file = "{s.client_key}"\n'
                       f'root = "{root}"\npython = "{self.pythons[name]}"')
        return "\n".join(out) + "\n"

    def known_hosts(self) -> str:
        return "".join(s.host_public_line().replace(f"[127.0.0.1]:{s.port}",
                                                    f"[127.0.0.1]:{self.proxies[n].port}")
                       for n, s in self.servers.items())

    def heartbeat(self, name: str, root: Path | None = None) -> dict:
        path = (root or self.roots[name]) / serve.SERVE_DIR / MODEL / serve.HEARTBEAT_NAME
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def leftovers(self) -> list[str]:
        """Slice or result files, and servers still running, on any worker."""
        left = []
        for name, wroot in self.roots.items():
            base = wroot / serve.SERVE_DIR / MODEL
            left += [str(p) for sub in ("inbox", "outbox") for p in (base / sub).glob("s*")]
            hb = self.heartbeat(name)
            if hb.get("pid") and pid_alive(hb["pid"]):
                left.append(f"{name} server pid {hb['pid']} ({hb.get('state')})")
        return left

    def stop(self) -> None:
        for name in self.roots:                  # a server a failed test left: by its pid
            hb = self.heartbeat(name)
            if hb.get("pid") and pid_alive(hb["pid"]):
                os.kill(hb["pid"], signal.SIGKILL)
        for p in self.proxies.values():
            p.close()
        for s in self.servers.values():
            s.stop()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    if find_sshd() is None:
        pytest.fail("sshd is not installed: apt-get install openssh-server (make sysdeps)")
    from pipeline.models.testprofile import ensure_tiny_u2net

    ensure_tiny_u2net()
    c = Lab(tmp_path_factory.mktemp("lab"))
    try:
        yield c.start()
    finally:
        c.stop()


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    return build_root(tmp_path_factory.mktemp("reembed-hosts") / "root").path


@pytest.fixture(scope="module")
def expected(template):
    from pipeline.core.root import Root

    return expected_vectors(Root(template), column_embedder())


@pytest.fixture
def root(template, tmp_path, lab):
    import shutil

    from pipeline.core.root import Root

    for f in lab.hold.glob("*"):
        f.unlink()
    shutil.copytree(template, tmp_path / "root")
    root = Root(tmp_path / "root").ensure()
    (root.path / "known_hosts").write_text(lab.known_hosts())
    root.hosts_path.write_text(lab.hosts_toml())
    with open(root.config_path, "a") as f:
        f.write("\n[remote]\nconnect_timeout = 3.0\nbanner_timeout = 3.0\nauth_timeout = 3.0\n"
                "channel_timeout = 3.0\ncommand_timeout = 60.0\nio_timeout = 3.0\n"
                "reconnect_attempts = 2\nbackoff_initial_s = 0.1\nbackoff_max_s = 0.2\n")
    return root


def _route(root, workers="w1,w2", **kw):
    from imageselector.commands.reembed import make_route

    route = make_route(root, MODEL, workers, 4, slice_timeout_s=kw.pop("slice_timeout_s", 60.0))
    route.poll_s, route.retry_s, route.stale_s = 0.1, 0.5, kw.pop("stale_s", 3.0)
    return route


def _reembed(root, route):
    from imageselector.commands.reembed import slice_loader
    from pipeline.reembed.run import reembed

    conn = connect(root.db_path)
    try:
        return reembed(root, conn, MODEL, route, slice_loader(root, conn, False))
    finally:
        conn.close()


def _switched_right(root, expected, summary) -> None:
    assert summary["state"] == "switched" and summary["route"] == "hosts"
    conn = connect(root.db_path)
    try:
        assert verify(root, conn)[0] == []
        assert_column(root, conn, expected)
    finally:
        conn.close()


def _in_thread(fn, *args):
    box = {}

    def run():
        try:
            box["value"] = fn(*args)
        except BaseException as exc:       # noqa: BLE001 - handed to the test
            box["error"] = exc
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, box


def test_reembed_on_two_ssh_workers_switches_the_same_column_as_in_process(root, lab, expected):
    route = _route(root)
    summary = _reembed(root, route)
    _switched_right(root, expected, summary)
    assert summary["slices"] == 6 and route.retried == 0
    assert sum(lane.slices for lane in route.lanes) == 6
    wait_for(lambda: not lab.leftovers(), timeout=20)      # servers told to go, files taken back
    assert {lab.heartbeat(n).get("state") for n in lab.roots} == {"stopped"}


def test_a_server_killed_mid_slice_its_slice_is_done_elsewhere_once(root, lab, expected):
    (lab.hold / "hold").write_text("hold")
    route = _route(root)
    t, box = _in_thread(_reembed, root, route)
    wait_for(lambda: any(lab.hold.glob("*.held")), timeout=120)
    held = next(lab.hold.glob("*.held"))
    pid = int(held.read_text())
    assert pid == lab.heartbeat("w1")["pid"]
    # the console's host poll shows w1's server holding the slice (over SSH, as any host row)
    from pipeline.core.hoststages import host_stage_rows
    serving = [r for r in host_stage_rows(root, "w1", 10.0) if r.get("kind") == "reembed-serve"]
    assert [(r["model"], r["state"], r["pid"]) for r in serving] == [(MODEL, "running", pid)]
    assert serving[0]["current"].startswith(f"{MODEL}: slice ")
    from pipeline.core.hoststages import host_log_tail
    assert any(MODEL in line for line in host_log_tail(root, "w1", serving[0]["name"], 20))
    os.kill(pid, signal.SIGKILL)                   # the server dies with the slice in hand
    (lab.hold / "hold").unlink()
    t.join(240)
    assert "error" not in box, box.get("error")
    _switched_right(root, expected, box["value"])
    assert route.retried >= 1
    wait_for(lambda: not lab.leftovers(), timeout=20)


def test_a_worker_that_stops_answering_mid_slice_its_slice_goes_to_the_other(root, lab, expected):
    (lab.hold / "hold").write_text("hold")
    route = _route(root)
    t, box = _in_thread(_reembed, root, route)
    wait_for(lambda: any(lab.hold.glob("*.held")), timeout=120)
    lab.proxies["w1"].stall()                      # w1 keeps its connection but says nothing
    (lab.hold / "hold").unlink()                   # its server finishes: nobody fetches it
    wait_for(lambda: route.retried >= 1, timeout=60)
    lab.proxies["w1"].resume()
    t.join(240)
    assert "error" not in box, box.get("error")
    _switched_right(root, expected, box["value"])
    assert route.retried >= 1
    assert route.lanes[1].slices >= 1
    wait_for(lambda: not lab.leftovers(), timeout=20)


def test_a_worker_whose_model_cannot_load_is_left_out_and_named(root, lab, expected, tmp_path):
    broken = tmp_path / "broken-w1"
    broken.mkdir()
    (broken / "imageselector.toml").write_text(WORKER_TOML.format(
        profile="production", extra=f'hf_cache_dir = "{tmp_path / "no-cache"}"\n'))
    root.hosts_path.write_text(lab.hosts_toml({"w1": broken}))
    route = _route(root)
    summary = _reembed(root, route)                # w2 does it all
    _switched_right(root, expected, summary)
    assert route.lanes[0].unusable and "w1" in route.lanes[0].unusable
    assert route.lanes[1].slices == 6
    from pipeline.core.errors import UserError

    only = _route(root, workers="w1")
    with pytest.raises(UserError, match=r"no worker can re-embed: w1: "):
        _reembed(root, only)
    assert (lab.heartbeat("w1", broken).get("state")) == "error"


def test_reembed_names_an_unknown_worker_in_one_line(root):
    from tests.support import run_cli

    out = run_cli("reembed", MODEL, "--workers", "w1,nosuch", root=root)
    assert out.returncode != 0
    assert out.stderr.strip().splitlines()[-1] == (
        "imageselector: --workers: no worker nosuch in hosts.toml (workers: w1, w2; or --workers local)")


def test_a_stop_while_a_host_holds_a_slice_ends_at_once_and_resumes(root, lab, expected):
    """The stop flag (Ctrl-C, SIGTERM) while w1 holds a slice: the re-embed returns "stopped"
    without waiting for it; the result w1 writes afterwards is not taken by the next run,
    which resumes and switches."""
    (lab.hold / "hold").write_text("hold")
    stop = threading.Event()
    from imageselector.commands.reembed import slice_loader
    from pipeline.reembed.run import reembed

    route = _route(root)

    def run():
        conn = connect(root.db_path)
        try:
            return reembed(root, conn, MODEL, route, slice_loader(root, conn, False),
                           should_stop=stop.is_set)
        finally:
            conn.close()
    t, box = _in_thread(run)
    wait_for(lambda: any(lab.hold.glob("*.held")), timeout=120)
    stop.set()
    t.join(60)
    assert not t.is_alive() and box["value"]["state"] == "stopped"
    (lab.hold / "hold").unlink()                   # w1's server finishes the held slice, exits
    wait_for(lambda: lab.heartbeat("w1").get("state") == "stopped", timeout=60)
    summary = _reembed(root, _route(root))
    _switched_right(root, expected, summary)
    wait_for(lambda: not lab.leftovers(), timeout=20)


def test_the_server_embeds_dropped_slices_says_why_a_bad_one_fails_and_stops_on_sigterm(tmp_path, expected, template):
    """reembed-serve alone, on a local root: a slice file in, its vectors out (the model run
    here gives the same); a damaged slice gets a one-line .error; SIGTERM ends it cleanly."""
    import subprocess

    import numpy as np

    from pipeline.core.root import Root
    from pipeline.stages.archive.tarindex import read_image

    wroot = tmp_path / "worker"
    wroot.mkdir()
    (wroot / "imageselector.toml").write_text(WORKER_TOML.format(profile="test", extra=""))
    base = wroot / serve.SERVE_DIR / MODEL
    proc = subprocess.Popen([sys.executable, "-m", "imageselector", "--root", str(wroot),
                             "reembed-serve", MODEL, "--batch-size", "4"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: (json.loads((base / serve.HEARTBEAT_NAME).read_text()).get("state")
                          if (base / serve.HEARTBEAT_NAME).exists() else None) == "ready", timeout=120)
        conn = connect(Root(template).db_path)
        keys = sorted(expected)[:5]
        images = [read_image(Root(template), conn, a, b) for a, b in keys]
        conn.close()
        (base / "inbox" / "s1.slice").write_bytes(serve.pack_slice(images, None, [f"{a}_{b}" for a, b in keys]))
        (base / "inbox" / "s2.slice").write_bytes(b"not a tar")
        wait_for(lambda: (base / "outbox" / "s1.npz").exists() and (base / "outbox" / "s2.error").exists(),
                 timeout=60)
        vectors, meta = serve.unpack_result((base / "outbox" / "s1.npz").read_bytes(), 5)
        np.testing.assert_allclose(vectors[MODEL], np.stack([expected[k] for k in keys]), atol=1e-5)
        assert meta["fingerprint"] == json.loads((base / serve.HEARTBEAT_NAME).read_text())["fingerprint"]
        error = (base / "outbox" / "s2.error").read_text()
        assert error.count("\n") == 1 and error.startswith("the slice file is damaged")
        assert not list((base / "inbox").iterdir())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert json.loads((base / serve.HEARTBEAT_NAME).read_text())["state"] == "stopped"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
