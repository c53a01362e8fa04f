"""A real Ray cluster on loopback for the tests and bench/bench_ray.py: a head and
(optionally) a second node started with `ray start` (``num_cpus`` each, every port chosen
here), found again by a marker in their environment and stopped by pid."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
MARK = "IMAGESELECTOR_TEST_RAY_CLUSTER"
# nothing beyond loopback, no usage report; node deaths noticed in seconds, not half a minute
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_health_check_initial_delay_ms": "0",
           "RAY_health_check_period_ms": "500", "RAY_health_check_timeout_ms": "1000",
           "RAY_health_check_failure_threshold": "3", "RAY_BACKEND_LOG_LEVEL": "warning",
           # no token auth: Ray 2.5x+ turns it on when ~/.ray/auth_token exists (a local
           # `ray.init()` anywhere on the machine writes one), and the nodes then refuse each other
           "RAY_AUTH_MODE": "disabled"}



def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def ours(marker: str) -> list[psutil.Process]:
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
    def __init__(self, base: Path, num_cpus: int = 1):
        self.num_cpus = num_cpus
        self.marker = uuid.uuid4().hex
        self.hold = base / "hold"
        self.hold.mkdir()
        self.temp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))   # short: unix sockets
        self.ray = str(Path(sys.executable).with_name("ray"))
        self.port, self.client_port = _free_ports(2)
        self.address = f"127.0.0.1:{self.port}"
        self.client_address = f"ray://127.0.0.1:{self.client_port}"    # Ray Client (ray[client])

    def _start(self, args: list[str], extra_env: dict) -> None:
        env = dict(os.environ, **RAY_ENV, **extra_env)
        env[MARK] = self.marker
        nm, om, al, ag, me, re_ = _free_ports(6)     # two nodes on one machine: no defaults
        cmd = [self.ray, "start", *args, f"--num-cpus={self.num_cpus}", "--num-gpus=0",
               "--node-ip-address=127.0.0.1", f"--temp-dir={self.temp}",
               "--object-store-memory=80000000", "--disable-usage-stats",
               f"--node-manager-port={nm}", f"--object-manager-port={om}",
               f"--dashboard-agent-listen-port={al}", f"--dashboard-agent-grpc-port={ag}",
               f"--metrics-export-port={me}", f"--runtime-env-agent-port={re_}"]
        out = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=180)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]

    def start(self, nodes: int = 2) -> "Cluster":
        self._start(["--head", f"--port={self.port}", "--include-dashboard=false",
                     f"--ray-client-server-port={self.client_port}"], {})
        # the second node: its actor waits on the hold file, so a test can kill it mid-batch
        if nodes > 1:
            self._start([f"--address={self.address}"], {"IMAGESELECTOR_TEST_HOLD": str(self.hold)})
        return self

    def ensure_second_node(self) -> None:
        """A second node again after a test killed it (the holding one)."""
        try:
            self.second_raylet()
        except AssertionError:
            self._start([f"--address={self.address}"], {"IMAGESELECTOR_TEST_HOLD": str(self.hold)})

    def second_raylet(self) -> psutil.Process:
        for p in ours(self.marker):
            try:
                if (p.name() == "raylet" and p.status() != psutil.STATUS_ZOMBIE
                        and p.environ().get("IMAGESELECTOR_TEST_HOLD")):
                    return p
            except psutil.Error:
                continue
        raise AssertionError("the second node's raylet is not running")

    def stop(self) -> None:
        procs = ours(self.marker)
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
