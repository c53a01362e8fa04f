"""Deploying code to a worker: `git pull` over real SSH, only after YES:GIT."""
from __future__ import annotations

import subprocess

import pytest

from imageselector.cli import main
from remote.deploy import NotConfirmed, checkout_of, deploy, deploy_steps
from remote.errors import HostsConfigError
from remote.hosts import Host
from remote.transport import LocalTransport
from tests.sshd_support import sshd  # noqa: F401


def git(*args, cwd=None) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True,
                          env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                               "GIT_COMMITTER_EMAIL": "t@t", "PATH": "/usr/bin:/bin",
                               "HOME": str(cwd or "/tmp")}).stdout.strip()


@pytest.fixture
def repos(tmp_path):
    """An upstream repo, and the worker's checkout cloned from it, one commit behind."""
    upstream = tmp_path / "upstream"
    upstream.mkdir()
    git("init", "-q", "-b", "main", cwd=upstream)
    (upstream / "code.py").write_text("v = 1\n")
    git("add", ".", cwd=upstream)
    git("commit", "-qm", "one", cwd=upstream)
    checkout = tmp_path / "worker checkout; $(touch PWNED)"  # metacharacters travel as data
    git("clone", "-q", str(upstream), str(checkout), cwd=tmp_path)
    (upstream / "code.py").write_text("v = 2\n")
    git("commit", "-qam", "two", cwd=upstream)
    return upstream, checkout


def test_steps_per_platform():
    mac = Host(name="mbp", address="10.0.0.2", user="u", root="/Users/u/r",
               python="/Users/u/imageselector/.venv/bin/python3")
    win = Host(name="sleight", address="10.0.0.3", user="u", root="C:\\r", os="windows",
               python="C:\\Users\\u\\imageselector\\.venv\\Scripts\\python.exe")
    assert checkout_of(mac) == "/Users/u/imageselector"
    assert checkout_of(win) == "C:\\Users\\u\\imageselector"
    assert deploy_steps(mac)[0] == ["git", "-C", "/Users/u/imageselector", "pull", "--ff-only"]
    assert deploy_steps(mac)[1][-3:] == ["install", "--upgrade", "-e", "/Users/u/imageselector"][-3:]
    win_steps = [" ".join(s) for s in deploy_steps(win)]
    assert any("onnxruntime-directml" in s for s in win_steps)
    assert any("--index-url" in s and "torch" in s for s in win_steps)
    assert not any("directml" in " ".join(s) for s in deploy_steps(mac))
    assert deploy_steps(mac, install=False) == [deploy_steps(mac)[0]]
    with pytest.raises(HostsConfigError, match="set checkout"):
        checkout_of(Host(name="x", python="/usr/bin/python3"))


def test_nothing_runs_without_the_typed_confirmation(repos, tmp_path):
    upstream, checkout = repos
    host = Host(name="here", local=True, root=str(tmp_path), python="python3", checkout=str(checkout))
    before = git("rev-parse", "HEAD", cwd=checkout)
    for typed in ("", "yes", "YES", "YES:GIT "):
        with pytest.raises(NotConfirmed):
            deploy(host, typed, LocalTransport(host, root=tmp_path), install=False)
    assert git("rev-parse", "HEAD", cwd=checkout) == before


def test_deploy_pulls_over_real_ssh(repos, sshd, tmp_path, capsys):  # noqa: F811
    upstream, checkout = repos
    root = tmp_path / "root"
    root.mkdir()
    wroot = tmp_path / "wroot"
    wroot.mkdir()
    (root / "hosts.toml").write_text(f"""
[workers.w1]
address = "127.0.0.1"
port = {sshd.port}
user = "{sshd.user}"
key_file = "{sshd.client_key}"
root = "{wroot}"
python = "{sshd.host().python}"
checkout = "{checkout}"
""")
    sshd.write_known_hosts(root / "known_hosts")
    # without a terminal and without --confirm: refused, nothing pulled
    code = main(["hosts", "deploy", "w1", "--no-install", "--root", str(root)])
    assert code == 2
    assert (checkout / "code.py").read_text() == "v = 1\n"
    code = main(["hosts", "deploy", "w1", "--no-install", "--confirm", "YES:GIT", "--root", str(root)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert (checkout / "code.py").read_text() == "v = 2\n"
    assert git("rev-parse", "HEAD", cwd=checkout) == git("rev-parse", "HEAD", cwd=upstream)
    assert not (tmp_path / "PWNED").exists() and not (wroot / "PWNED").exists()
    # a failing pull (diverged history) is reported as a failure
    (checkout / "code.py").write_text("local change\n")
    git("commit", "-qam", "diverge", cwd=checkout)
    (upstream / "code.py").write_text("v = 3\n")
    git("commit", "-qam", "three", cwd=upstream)
    code = main(["hosts", "deploy", "w1", "--no-install", "--confirm", "YES:GIT", "--root", str(root)])
    assert code == 1 and "FAILED" in capsys.readouterr().out
