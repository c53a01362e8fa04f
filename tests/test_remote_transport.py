"""LocalTransport and SSHTransport behave the same: every test runs on both."""
from __future__ import annotations

import dataclasses
import hashlib
import os
import sys
from pathlib import Path

import pytest

from remote.commands import ROOT_MISSING
from remote.errors import RemoteError, RemoteFileMissing
from remote.hosts import Host
from remote.transport import LocalTransport, SSHTransport, Transport, transport_for
from tests.sshd_support import FAST, client_port, sshd  # noqa: F401


@pytest.fixture(params=["local", "ssh"])
def transport(request, tmp_path) -> Transport:
    root = tmp_path / "wroot"
    root.mkdir()
    if request.param == "local":
        t = LocalTransport(Host(name="here", local=True, root=str(root)))
    else:
        server = request.getfixturevalue("sshd")
        kh = server.write_known_hosts(tmp_path / "known_hosts")
        t = SSHTransport(server.host(root=str(root)), kh, FAST)
    yield t
    t.close()


def test_put_get_round_trip(transport, tmp_path):
    src = tmp_path / "batch.tar"
    src.write_bytes(os.urandom(300_000))
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    transport.make_dirs(transport.join("batches/b1"))
    remote = transport.join("batches/b1", "batch.tar")
    seen = []
    assert transport.put_file(src, remote, progress=lambda d, t: seen.append((d, t))) == \
        (300_000, digest)
    assert seen and seen[-1] == (300_000, 300_000)
    assert transport.sha256(remote) == digest
    assert transport.list_dir(transport.join("batches/b1")) == ["batch.tar"]
    out = tmp_path / "out.tar"
    assert transport.get_file(remote, out, expected_sha256=digest) == (300_000, digest)
    assert out.read_bytes() == src.read_bytes()
    # overwriting puts the new content in place whole
    src.write_bytes(b"second")
    transport.put_file(src, remote)
    assert Path(remote).read_bytes() == b"second"
    assert transport.list_dir(transport.join("batches/b1")) == ["batch.tar"]


def test_missing_things(transport, tmp_path):
    with pytest.raises(RemoteFileMissing):
        transport.get_file(transport.join("nope.bin"), tmp_path / "x")
    with pytest.raises(RemoteFileMissing):
        transport.list_dir(transport.join("no/folder"))
    with pytest.raises(RemoteFileMissing):
        transport.read_text(transport.join("nope.json"))
    with pytest.raises(RemoteFileMissing):
        transport.sha256(transport.join("nope.bin"))
    src = tmp_path / "s"
    src.write_text("x")
    with pytest.raises(RemoteFileMissing):
        transport.put_file(src, transport.join("no/folder/s"))
    assert not transport.exists(transport.join("nope"))
    assert transport.remove(transport.join("nope")) is False
    assert not (tmp_path / "x").exists()


def test_small_files(transport):
    path = transport.join("result.json")
    transport.write_text_atomic(path, '{"ok": true}\n')
    assert transport.read_text(path) == '{"ok": true}\n'
    assert transport.exists(path)
    transport.write_text_atomic(path, "two")
    assert transport.read_text(path) == "two"
    assert transport.list_dir(transport.root) == ["result.json"]     # no temp names left
    assert transport.remove(path) is True
    assert not transport.exists(path)
    transport.make_dirs(transport.join("a/b/c"))
    transport.make_dirs(transport.join("a/b/c"))                    # twice is fine
    assert transport.list_dir(transport.join("a/b")) == ["c"]
    transport.write_text_atomic(transport.join("a/file"), "x")
    with pytest.raises(RemoteError, match="not a folder"):
        transport.make_dirs(transport.join("a/file/sub"))
    with pytest.raises(ValueError):
        transport.join("../escape")


def test_root_files_kill_heartbeat_log(transport):
    assert transport.read_root_file("run/worker.json") is None
    assert transport.tail_root_file("logs/worker.log") is None
    transport.stop("KILL_WORKER")
    assert Path(transport.join("KILL_WORKER")).read_text() == "stop requested\n"
    transport.make_dirs(transport.join("run"))
    Path(transport.join("run/worker.json")).write_text('{"pid": 1}')
    assert transport.read_root_file("run/worker.json") == '{"pid": 1}'
    transport.make_dirs(transport.join("logs"))
    Path(transport.join("logs/worker.log")).write_text("".join(f"l{i}\n" for i in range(10)))
    assert transport.tail_root_file("logs/worker.log", 2) == "l8\nl9\n"
    # read from the end only: a line cut by the window is left out
    Path(transport.join("logs/worker.log")).write_text("".join(f"line {i}\n" for i in range(100)))
    assert transport.tail_root_file("logs/worker.log", 3, max_bytes=20) == "line 98\nline 99\n"
    assert transport.tail_root_file("logs/worker.log", 50, max_bytes=10**6).count("\n") == 50
    with pytest.raises(ValueError):
        transport.stop("../KILL")


def test_root_missing(transport, tmp_path):
    os.rmdir(transport.root)
    with pytest.raises(RemoteFileMissing, match="root .* does not exist"):
        transport.stop("KILL_WORKER")
    with pytest.raises(RemoteFileMissing, match="root .* does not exist"):
        transport.read_root_file("run/worker.json")
    with pytest.raises(RemoteFileMissing, match="root .* does not exist"):
        transport.tail_root_file("logs/worker.log")
    result = transport.imageselector(["--help"])
    assert result.exit_status == ROOT_MISSING and "no such folder" in result.stderr
    assert not os.path.exists(transport.root)
    health = transport.health()
    assert health["root_exists"] is False


def test_run_programs(transport):
    r = transport.run(["printf", "%s", "a b; $(x)"])
    assert (r.exit_status, r.stdout) == (0, "a b; $(x)")
    assert transport.run(["sh", "-c", "exit 4"]).exit_status == 4
    help_ = transport.imageselector(["--help"])
    assert help_.exit_status == 0 and "imageselector" in help_.stdout


def test_start_stage_runs_start_with_the_root(transport, tmp_path):
    fake = tmp_path / "fake python"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    if isinstance(transport, LocalTransport):
        transport.python = str(fake)
    else:
        transport.conn.host = transport.host = dataclasses.replace(transport.host,
                                                                   python=str(fake))
        transport.commands = transport.conn.commands = type(transport.commands)(transport.host)
    r = transport.start_stage("worker", ["--once"])
    assert r.stdout.splitlines() == ["-m", "imageselector", "start", "worker", "--root",
                                     transport.root, "--once"]


def test_health(transport):
    h = transport.health()
    assert h["root_exists"] is True and h["root"] == transport.root
    assert h["cpu_count"] >= 1 and h["mem_total"] > 0 and h["disk_free"] > 0
    assert isinstance(h["gpus"], list)


def test_clock_offset_is_read_at_the_midpoint_of_one_round_trip(transport):
    offset, rtt = transport.measure_clock()
    assert abs(offset) <= rtt / 2 + 1e-3           # the same clock on both ends of loopback
    assert transport.clock_offset_s() == offset     # measured once per transport


def test_ssh_transport_survives_a_dropped_connection(sshd, tmp_path):  # noqa: F811
    root = tmp_path / "r"
    root.mkdir()
    kh = sshd.write_known_hosts(tmp_path / "known_hosts")
    t = SSHTransport(sshd.host(root=str(root)), kh, FAST)
    t.write_text_atomic(t.join("a"), "1")
    sshd.kill_session(client_port(t.conn))
    assert t.read_text(t.join("a")) == "1"            # retried on a new connection
    assert t.conn.connects == 2
    t.check()
    t.close()


def test_transport_for(tmp_path):
    local = transport_for(Host(name="l", local=True), tmp_path / "kh", local_root=tmp_path)
    assert isinstance(local, LocalTransport) and local.root == str(tmp_path)
    assert local.python == sys.executable
    remote = transport_for(Host(name="r", address="h", user="u", key_file=Path("/k"),
                                root="/r", python="/p"), tmp_path / "kh")
    assert isinstance(remote, SSHTransport)
