"""A real OpenSSH sshd on a loopback port for the remote tests.

``SSHServer(folder).start()`` generates a host key and a client key, writes an sshd_config
(127.0.0.1 only, keys only, the authorized_keys file in the folder, internal SFTP) and runs
``sshd -D -e`` as a child of the test process, for user root (tests run as root, CI too).
It is stopped by its pid. A client's session can be cut, frozen or thawed by signalling the
per-connection sshd processes: the children of the listener pid we started (found by parent
pid, never by name), optionally the one serving a given client port.

A cut or a freeze touches only the session's sshd processes (what a network fault touches),
never the commands the session runs: those end as they would on a real host. Killing them
would break more than one session: every command runs through root's login shell, whose
.bashrc here runs ``pyenv rehash``, which holds a lock file (~/.pyenv/shims/.pyenv-shim)
shared by every session on this machine and released only by its exit trap. A SIGKILL landing
during a rehash (likely on a loaded machine) left that lock behind, and from then on every
new session of every test "host" (and of every other test run here) waited 60 s for it.
"""
from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from remote.hosts import Host
from remote.ssh import SSHSettings

SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/local/sbin/sshd", "/sbin/sshd")


def find_sshd() -> str | None:
    for path in SSHD_CANDIDATES:
        if os.access(path, os.X_OK):
            return path
    return shutil.which("sshd")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path: Path, kind: str = "ed25519") -> Path:
    """A new key pair without passphrase at ``path`` (and ``path``.pub)."""
    for p in (path, path.with_name(path.name + ".pub")):
        p.unlink(missing_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "imageselector-test",
                    "-f", str(path)], check=True, stdout=subprocess.DEVNULL)
    return path


class SSHServer:
    def __init__(self, folder: Path, user: str | None = None):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.user = user or getpass.getuser()
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None
        self.host_key = self.folder / "ssh_host_ed25519_key"
        self.client_key = self.folder / "client_ed25519"
        self.authorized_keys = self.folder / "authorized_keys"
        self.config = self.folder / "sshd_config"
        self.log = self.folder / "sshd.log"

    # ---- lifecycle ---------------------------------------------------------------------
    def start(self, port: int | None = None) -> "SSHServer":
        sshd = find_sshd()
        if sshd is None:
            raise RuntimeError("sshd not installed (apt-get install openssh-server)")
        os.makedirs("/run/sshd", exist_ok=True)   # sshd's privilege separation folder
        if not self.host_key.exists():
            keygen(self.host_key)
        if not self.client_key.exists():
            keygen(self.client_key)
            self.authorize(self.client_key)
        last_error = ""
        for _ in range(5):
            self.port = port or free_port()
            self._write_config()
            logf = open(self.log, "ab")
            self.proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(self.config)],
                                         stdin=subprocess.DEVNULL, stdout=logf, stderr=logf)
            logf.close()
            if self._wait_ready(10.0):
                return self
            last_error = self.log.read_text(errors="replace")[-2000:]
            self.stop()
            if port:
                break
        raise RuntimeError(f"sshd did not start: {last_error}")

    def _write_config(self) -> None:
        self.config.write_text("\n".join([
            f"Port {self.port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {self.host_key}",
            f"PidFile {self.folder / 'sshd.pid'}",
            f"AuthorizedKeysFile {self.authorized_keys}",
            "StrictModes no",
            "UsePAM no",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UseDNS no",
            "MaxStartups 100",
            "MaxSessions 100",
            "Subsystem sftp internal-sftp",
            "LogLevel ERROR",
            "",
        ]))

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as s:
                    if s.recv(8).startswith(b"SSH-"):
                        return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        """Stop the listener we started (by its pid) and any sessions it still has."""
        if self.proc is None:
            return
        pid = self.proc.pid
        # connections first (SIGKILL), then the commands still running: SIGTERM lets their
        # shells run their exit traps (a lock held is released); what ignores it is killed
        left = []
        for tree in self._session_trees():
            server, commands = _split(tree)
            for p in tree:
                _signal(p.pid, signal.SIGCONT)
            for p in server:
                _signal(p.pid, signal.SIGKILL)
            for p in commands:
                _signal(p.pid, signal.SIGTERM)
            left += commands
        _, alive = psutil.wait_procs(left, timeout=3.0)
        for p in alive:
            _signal(p.pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def restart_with_new_host_key(self) -> None:
        """The same address and port, another host key (a reinstalled or impostor host)."""
        port = self.port
        self.stop()
        keygen(self.host_key)
        self.start(port=port)

    # ---- keys and hosts ----------------------------------------------------------------
    def authorize(self, key: Path) -> None:
        pub = key.with_name(key.name + ".pub").read_text()
        with open(self.authorized_keys, "a") as f:
            f.write(pub if pub.endswith("\n") else pub + "\n")

    def host_public_line(self) -> str:
        """The server's key as a known_hosts line."""
        kind, b64 = self.host_key.with_name(self.host_key.name + ".pub").read_text().split()[:2]
        return f"[127.0.0.1]:{self.port} {kind} {b64}\n"

    def write_known_hosts(self, path: Path) -> Path:
        path.write_text(self.host_public_line())
        return path

    def host(self, name: str = "w1", root: str | None = None, **overrides) -> Host:
        fields = dict(name=name, address="127.0.0.1", port=self.port, user=self.user,
                      key_file=self.client_key, root=root or str(self.folder / "wroot"),
                      python=os.environ.get("IMAGESELECTOR_TEST_PYTHON") or _python(), os="posix")
        fields.update(overrides)
        return Host(**fields)

    # ---- sessions ----------------------------------------------------------------------
    @staticmethod
    def _descendants(pid: int) -> list[psutil.Process]:
        try:
            return psutil.Process(pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def _session_trees(self, client_port: int | None = None) -> list[list[psutil.Process]]:
        if self.proc is None:
            return []
        out = []
        try:
            children = psutil.Process(self.proc.pid).children()
        except psutil.NoSuchProcess:
            return []
        for child in children:
            tree = [child] + self._descendants(child.pid)
            if client_port is not None and not any(_serves(p, client_port) for p in tree):
                continue
            out.append(tree)
        return out

    def sessions(self, client_port: int | None = None) -> list[list[int]]:
        """Per-connection process trees: [child pid, its descendants...] for each direct
        child of the listener; with ``client_port``, only the one serving that port."""
        return [[p.pid for p in tree] for tree in self._session_trees(client_port)]

    def signal_session(self, sig: int, client_port: int | None = None) -> int:
        """Send ``sig`` to the sshd processes of the matching sessions (SIGCONT: to every
        process of them, to undo any stop); returns how many processes got it."""
        n = 0
        for tree in self._session_trees(client_port):
            server, _ = _split(tree)
            for p in (tree if sig == signal.SIGCONT else server):
                n += _signal(p.pid, sig)
        return n

    def kill_session(self, client_port: int | None = None) -> int:
        """Cut the connection (SIGKILL its sshd processes); the commands it ran are left to
        end by themselves, as after a real cut."""
        return self.signal_session(signal.SIGKILL, client_port)

    def freeze_session(self, client_port: int | None = None) -> int:
        """SIGSTOP to its sshd processes: the TCP connection stays open but nothing answers
        (a hung peer)."""
        return self.signal_session(signal.SIGSTOP, client_port)

    def thaw_and_kill_sessions(self) -> None:
        self.signal_session(signal.SIGCONT)
        self.signal_session(signal.SIGKILL)


def client_port(conn) -> int:
    """The local port of an SSHConnection's socket (to find its sshd session)."""
    return conn._client.get_transport().sock.getsockname()[1]


def _split(tree: list[psutil.Process]) -> tuple[list[psutil.Process], list[psutil.Process]]:
    """(the session's sshd processes, the commands it runs) of one session tree."""
    server, commands = [], []
    for p in tree:
        try:
            is_sshd = p.name().startswith("sshd")     # sshd, or sshd-session (OpenSSH 9.8+)
        except psutil.NoSuchProcess:
            continue
        (server if is_sshd else commands).append(p)
    return server, commands


def _serves(proc: psutil.Process, port: int) -> bool:
    try:
        conns = proc.net_connections(kind="tcp") if hasattr(proc, "net_connections") \
            else proc.connections(kind="tcp")
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    return any(c.raddr and c.raddr.port == port for c in conns)


def _signal(pid: int, sig: int) -> int:
    try:
        os.kill(pid, sig)
        return 1
    except ProcessLookupError:
        return 0


def _python() -> str:
    return sys.executable


# ---- pytest fixtures (import them into a test module) ----------------------------------
# Short limits so a fault shows within seconds; the figures are limits, not expectations.
FAST = SSHSettings(connect_timeout=3.0, banner_timeout=3.0, auth_timeout=3.0,
                   channel_timeout=3.0, command_timeout=20.0, transfer_timeout=30.0,
                   io_timeout=5.0, heartbeat_timeout=1.0, keepalive_s=0,
                   reconnect_attempts=3, backoff_initial_s=0.05, backoff_max_s=0.2)


def _start(folder: Path) -> SSHServer:
    if find_sshd() is None:
        pytest.fail("sshd is not installed: apt-get install openssh-server (make sysdeps)")
    return SSHServer(folder).start()


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """One sshd for a test module; tests must leave it running."""
    server = _start(tmp_path_factory.mktemp("sshd"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def own_sshd(tmp_path):
    """An sshd for one test (for tests that restart it or change its key)."""
    server = _start(tmp_path / "sshd")
    try:
        yield server
    finally:
        server.stop()
