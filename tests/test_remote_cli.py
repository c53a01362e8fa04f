"""imageselector hosts list | trust | check, against a real sshd on 127.0.0.1."""
from __future__ import annotations

import io
import json

import pytest

from imageselector.cli import main
from tests.sshd_support import sshd  # noqa: F401


@pytest.fixture
def root(sshd, tmp_path):  # noqa: F811
    root = tmp_path / "root"
    root.mkdir()
    wroot = tmp_path / "wroot"
    wroot.mkdir()
    (root / "hosts.toml").write_text(f"""
[workers.here]
local = true

[workers.w1]
address = "127.0.0.1"
port = {sshd.port}
user = "{sshd.user}"
key_file = "{sshd.client_key}"
root = "{wroot}"
python = "{sshd.host().python}"
""")
    return root


def cli(capsys, *argv, stdin: str | None = None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_list_without_hosts_file(tmp_path, capsys):
    code, out, _ = cli(capsys, "hosts", "list", "--root", str(tmp_path))
    assert code == 0 and "only the local worker" in out
    code, out, _ = cli(capsys, "hosts", "list", "--json", "--root", str(tmp_path))
    assert json.loads(out)["workers"] == []


def test_trust_then_check(root, sshd, capsys, monkeypatch):  # noqa: F811
    kh = root / "known_hosts"
    code, out, _ = cli(capsys, "hosts", "list", "--json", "--root", str(root))
    workers = {w["name"]: w for w in json.loads(out)["workers"]}
    assert workers["w1"]["host_key_known"] is False and workers["here"]["local"]

    code, out, err = cli(capsys, "hosts", "check", "w1", "--root", str(root))
    assert code == 2 and "is not in" in err and "hosts trust w1" in err
    assert len(err.strip().splitlines()) == 1

    # anything but "yes" records nothing
    code, out, err = cli(capsys, "hosts", "trust", "w1", "--root", str(root),
                         stdin="y\n", monkeypatch=monkeypatch)
    assert code == 1 and "SHA256:" in out and not kh.exists()
    code, out, err = cli(capsys, "hosts", "trust", "w1", "--root", str(root),
                         stdin="", monkeypatch=monkeypatch)
    assert code == 1 and not kh.exists()
    code, out, err = cli(capsys, "hosts", "trust", "w1", "--root", str(root),
                         stdin="yes\n", monkeypatch=monkeypatch)
    assert code == 0 and "recorded" in out
    assert kh.read_text() == sshd.host_public_line()
    code, out, _ = cli(capsys, "hosts", "trust", "w1", "--yes", "--root", str(root))
    assert code == 0 and "already in" in out

    code, out, _ = cli(capsys, "hosts", "check", "w1", "--json", "--root", str(root))
    report = json.loads(out)
    assert code == 0 and report["ok"] and report["fingerprint"].startswith("SHA256:")
    assert report["health"]["root_exists"] is True
    assert abs(report["clock_offset_s"]) <= report["clock_rtt_s"] / 2 + 1e-3
    code, out, _ = cli(capsys, "hosts", "check", "w1", "--root", str(root))
    assert code == 0 and "reachable" in out and "free of" in out and "this machine's" in out
    code, out, _ = cli(capsys, "hosts", "check", "here", "--json", "--root", str(root))
    assert code == 0 and json.loads(out)["health"]["root"] == str(root)
    code, out, _ = cli(capsys, "hosts", "list", "--root", str(root))
    assert "key known" in out


def test_trust_yes_flag_and_unknown_worker(root, capsys):
    code, out, _ = cli(capsys, "hosts", "trust", "w1", "--yes", "--root", str(root))
    assert code == 0 and (root / "known_hosts").exists()
    code, _, err = cli(capsys, "hosts", "trust", "nobody", "--root", str(root))
    assert code == 2 and "no worker 'nobody'" in err
    code, _, err = cli(capsys, "hosts", "trust", "here", "--root", str(root))
    assert code == 2 and "local worker" in err


def test_check_reports_missing_remote_root(root, capsys, tmp_path):
    cli(capsys, "hosts", "trust", "w1", "--yes", "--root", str(root))
    (tmp_path / "wroot").rmdir()
    code, out, _ = cli(capsys, "hosts", "check", "w1", "--root", str(root))
    assert code == 1 and "DOES NOT EXIST" in out


def test_bad_hosts_file_is_one_line(tmp_path, capsys):
    (tmp_path / "hosts.toml").write_text("[workers.w]\naddress = 'x'\n")
    code, _, err = cli(capsys, "hosts", "list", "--root", str(tmp_path))
    assert code == 2
    assert err.strip() == f"imageselector: {tmp_path / 'hosts.toml'}: workers.w.user is missing"
