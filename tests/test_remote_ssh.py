"""SSHConnection against a real OpenSSH sshd on 127.0.0.1: commands, verified transfers,
host keys, client keys, unreachable ports, dead and hung peers, reconnects, trust."""
from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from remote.errors import (AuthFailed, ChangedHostKey, ConnectionLost, RemoteFileMissing,
                           RemoteTimeout, TransferError, UnknownHostKey, Unreachable)
from remote.hostkeys import trust
from remote.ssh import SSHConnection
from remote.transport import SSHTransport
from tests.sshd_support import FAST, client_port, keygen, own_sshd, sshd  # noqa: F401


@pytest.fixture
def kh(sshd, tmp_path):  # noqa: F811
    return sshd.write_known_hosts(tmp_path / "known_hosts")


@pytest.fixture
def conn(sshd, kh, tmp_path):  # noqa: F811
    root = tmp_path / "wroot"
    root.mkdir()
    c = SSHConnection(sshd.host(root=str(root)), kh, FAST).connect()
    yield c
    c.close()


def wait_until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


# ---- commands and transfers ------------------------------------------------------------
def test_command_output_and_exit_status(conn):
    r = conn.run("printf out; printf err >&2; exit 7")
    assert (r.exit_status, r.stdout, r.stderr) == (7, "out", "err")
    assert conn.run("cat", stdin=b"fed through stdin").stdout == "fed through stdin"
    big = conn.run("head -c 3000000 /dev/zero")
    assert big.ok and len(big.stdout_bytes) == 3_000_000


def test_command_timeout_drops_the_connection_then_reconnects(conn):
    with pytest.raises(RemoteTimeout, match="did not finish within 0.5s"):
        conn.run("sleep 30", timeout=0.5)
    assert not conn.connected
    with pytest.raises(ConnectionLost):
        conn.run("true")
    conn.ensure()
    assert conn.run("echo back").stdout == "back\n"
    assert conn.connects == 2


def test_put_and_get_verified(conn, tmp_path):
    src = tmp_path / "batch.bin"
    src.write_bytes(os.urandom(2_500_000))
    want = hashlib.sha256(src.read_bytes()).hexdigest()
    remote = conn.host.root + "/batch.bin"
    assert conn.put_file(src, remote) == (2_500_000, want)
    assert Path(remote).read_bytes() == src.read_bytes()
    back = tmp_path / "back.bin"
    assert conn.get_file(remote, back) == (2_500_000, want)
    assert back.read_bytes() == src.read_bytes()
    assert conn.get_file(remote, tmp_path / "b2.bin", expected_sha256=want)[1] == want
    # no temp names left on either side
    assert sorted(os.listdir(conn.host.root)) == ["batch.bin"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b2.bin", "back.bin", "batch.bin",
                                                          "known_hosts", "wroot"]


def test_upload_with_wrong_checksum_is_refused(conn, tmp_path, monkeypatch):
    src = tmp_path / "f.bin"
    src.write_bytes(b"x" * 1000)
    remote = conn.host.root + "/f.bin"
    # the host reports another checksum (a corrupted copy): nothing is put in place
    monkeypatch.setattr(conn, "remote_sha256", lambda path, timeout=None: "0" * 64)
    with pytest.raises(TransferError, match="checksum after upload"):
        conn.put_file(src, remote)
    assert os.listdir(conn.host.root) == []


def test_download_with_wrong_expected_checksum_is_refused(conn, tmp_path):
    remote = Path(conn.host.root) / "r.bin"
    remote.write_bytes(b"y" * 1000)
    with pytest.raises(TransferError, match="expected 1000 bytes"):
        conn.get_file(str(remote), tmp_path / "r.bin", expected_sha256="1" * 64)
    assert not (tmp_path / "r.bin").exists()
    assert [p for p in tmp_path.iterdir() if p.name.endswith(".part")] == []


def test_missing_remote_file(conn, tmp_path):
    with pytest.raises(RemoteFileMissing):
        conn.get_file(conn.host.root + "/nope", tmp_path / "x")
    with pytest.raises(RemoteFileMissing):
        conn.read_bytes(conn.host.root + "/nope")
    assert conn.stat(conn.host.root + "/nope") is None
    assert conn.connected       # a missing file is not a broken connection


def test_detached_command_outlives_the_session(conn, tmp_path):
    marker = tmp_path / "done"
    pid = conn.start_detached(["/bin/sh", "-c", f"sleep 0.5; echo ok > '{marker}'"],
                              log_path=str(tmp_path / "detached.log"))
    assert pid > 0
    conn.close()
    try:
        assert wait_until(marker.exists)
        assert marker.read_text() == "ok\n"
    finally:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass


# ---- host keys and client keys -----------------------------------------------------------
def test_unknown_host_key_is_refused(sshd, tmp_path):  # noqa: F811
    kh = tmp_path / "known_hosts"
    kh.write_text("")
    with pytest.raises(UnknownHostKey) as info:
        SSHConnection(sshd.host(), kh, FAST).connect()
    msg = str(info.value)
    assert str(kh) in msg and "hosts trust w1" in msg and info.value.fingerprint in msg
    assert kh.read_text() == ""                      # never auto-added
    missing = tmp_path / "none" / "known_hosts"
    with pytest.raises(UnknownHostKey):
        SSHConnection(sshd.host(), missing, FAST).connect()
    assert not missing.exists()


def test_changed_host_key_is_refused(own_sshd, tmp_path):  # noqa: F811
    kh = own_sshd.write_known_hosts(tmp_path / "known_hosts")
    SSHConnection(own_sshd.host(), kh, FAST).connect().close()
    own_sshd.restart_with_new_host_key()
    with pytest.raises(ChangedHostKey, match="HOST KEY CHANGED") as info:
        SSHConnection(own_sshd.host(), kh, FAST).connect()
    assert info.value.fingerprint != info.value.expected_fingerprint
    # and trust refuses to overwrite it
    with pytest.raises(ChangedHostKey):
        trust(own_sshd.host(), kh, lambda *a: True, FAST)


def test_wrong_client_key_is_refused(sshd, kh, tmp_path):  # noqa: F811
    stranger = keygen(tmp_path / "stranger")
    with pytest.raises(AuthFailed, match="refused key"):
        SSHConnection(sshd.host(key_file=stranger), kh, FAST).connect()
    with pytest.raises(AuthFailed, match="does not exist"):
        SSHConnection(sshd.host(key_file=tmp_path / "nokey"), kh, FAST).connect()


def test_refused_keys_are_not_retried(sshd, tmp_path):  # noqa: F811
    sleeps = []
    c = SSHConnection(sshd.host(), tmp_path / "known_hosts", FAST, sleep=sleeps.append)
    with pytest.raises(UnknownHostKey):
        c.reconnect()
    assert sleeps == []


def test_closed_port_is_unreachable(sshd, kh):  # noqa: F811
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]       # bound, not listening: refused
        with pytest.raises(Unreachable, match="refused"):
            SSHConnection(sshd.host(port=port), kh, FAST).connect()


def test_silent_server_times_out(sshd, kh):  # noqa: F811
    # accepts TCP (the kernel's backlog) but never says a word: the banner timeout ends it
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(5)
        settings = replace(FAST, banner_timeout=1.0, connect_timeout=1.0)
        with pytest.raises((Unreachable, RemoteTimeout)):
            SSHConnection(sshd.host(port=s.getsockname()[1]), kh, settings).connect()


def test_reconnect_backs_off_then_gives_up(sshd, kh):  # noqa: F811
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        sleeps = []
        c = SSHConnection(sshd.host(port=s.getsockname()[1]), kh, FAST, sleep=sleeps.append)
        with pytest.raises(Unreachable, match="after 3 attempts"):
            c.reconnect()
    assert len(sleeps) == 2 and sleeps[0] <= FAST.backoff_initial_s


# ---- dead and hung peers -----------------------------------------------------------------
def test_heartbeat_detects_a_hung_peer(sshd, conn):  # noqa: F811
    assert conn.heartbeat() >= 0
    port = client_port(conn)
    assert sshd.freeze_session(port) > 0          # TCP stays up, nothing answers
    try:
        with pytest.raises(ConnectionLost, match="heartbeat not answered"):
            conn.heartbeat()
        assert not conn.connected
    finally:
        sshd.signal_session(9, port)
        sshd.signal_session(18, port)
    conn.ensure()
    assert conn.run("echo alive").stdout == "alive\n" and conn.connects == 2


def test_sftp_request_to_a_hung_peer_times_out(sshd, kh):  # noqa: F811
    conn = SSHConnection(sshd.host(root="/tmp"), kh, replace(FAST, io_timeout=1.0)).connect()
    conn.exists(conn.host.root)                   # SFTP session open
    port = client_port(conn)
    sshd.freeze_session(port)
    try:
        with pytest.raises((RemoteTimeout, ConnectionLost)):
            conn.read_bytes(conn.host.root + "/x")
    finally:
        sshd.signal_session(9, port)
        sshd.signal_session(18, port)
    assert not conn.connected


def test_killed_session_is_noticed_and_replaced(sshd, conn):  # noqa: F811
    sshd.kill_session(client_port(conn))
    with pytest.raises(ConnectionLost):
        conn.heartbeat()
    conn.ensure()
    assert conn.run("echo again").stdout == "again\n"


def test_a_cut_leaves_the_commands_the_session_ran_to_end_by_themselves(sshd, conn, tmp_path):  # noqa: F811
    """A cut kills the connection, not what the host's shell runs (as a real cut): killing a
    shell inside its critical section leaves its lock behind. Root's .bashrc here runs
    ``pyenv rehash`` at every login, whose lock file all sessions share: left behind, it
    stalled every later session of every test host for 60 s."""
    lock = tmp_path / "held.lock"
    errors = []

    def hold():
        try:
            conn.run(f"trap 'rm -f {lock}' EXIT; : > {lock}; sleep 1; :", timeout=20)
        except Exception as exc:
            errors.append(exc)

    t = threading.Thread(target=hold)
    t.start()
    assert wait_until(lock.exists), "the command never took its lock"
    assert sshd.kill_session(client_port(conn)) >= 1
    t.join(20)
    assert len(errors) == 1 and isinstance(errors[0], ConnectionLost), errors
    assert wait_until(lambda: not lock.exists()), "the cut left the command's lock behind"
    conn.ensure()
    assert conn.run("echo again").stdout == "again\n"


def test_connection_cut_mid_upload(sshd, conn, tmp_path):  # noqa: F811
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(8 << 20))
    remote = conn.host.root + "/big.bin"
    cut = []

    def cut_once(done, total):
        if not cut and done > 0:
            cut.append(sshd.kill_session(client_port(conn)))

    with pytest.raises(ConnectionLost):
        conn.put_file(src, remote, progress=cut_once)
    assert cut and cut[0] > 0
    assert not os.path.exists(remote)             # nothing half-written under the real name
    # the transport retries an idempotent transfer once on a fresh connection
    cut.clear()
    transport = SSHTransport(conn.host, conn.known_hosts, connection=conn)
    size, digest = transport.put_file(src, remote, progress=cut_once)
    assert cut and size == 8 << 20
    assert hashlib.sha256(Path(remote).read_bytes()).hexdigest() == digest


def test_connection_cut_mid_download(sshd, conn, tmp_path):  # noqa: F811
    remote = Path(conn.host.root) / "res.bin"
    remote.write_bytes(os.urandom(8 << 20))
    local = tmp_path / "res.bin"
    cut = []

    def cut_once(done, total):
        if not cut and done > 0:
            cut.append(sshd.kill_session(client_port(conn)))

    with pytest.raises(ConnectionLost):
        conn.get_file(str(remote), local, progress=cut_once)
    assert not local.exists()
    assert [p for p in tmp_path.iterdir() if p.name.endswith(".part")] == []


# ---- trust --------------------------------------------------------------------------------
def test_trust_records_only_after_confirmation(sshd, tmp_path):  # noqa: F811
    kh = tmp_path / "known_hosts"
    host = sshd.host()
    seen = []
    result = trust(host, kh, lambda h, kind, fp: seen.append(fp) or False, FAST)
    assert not result.recorded and not kh.exists()
    assert seen == [result.fingerprint] and result.fingerprint.startswith("SHA256:")
    result = trust(host, kh, lambda *a: True, FAST)
    assert result.recorded
    assert kh.read_text() == sshd.host_public_line()
    c = SSHConnection(host, kh, FAST).connect()
    assert c.host_key_fingerprint() == result.fingerprint
    c.close()
    again = trust(host, kh, lambda *a: pytest.fail("asked again"), FAST)
    assert again.already_known and not again.recorded
    assert kh.read_text() == sshd.host_public_line()
