"""hosts.toml: a good file parses; every bad one is one error naming the file and the key."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from remote.errors import HostsConfigError
from remote.hosts import load_hosts

GOOD = """
known_hosts = "kh/known_hosts"

[workers.imac]
local = true

[workers.mbp]
address = "192.168.1.20"
user = "imageselector"
key_file = "keys/id_ed25519"
root = "/Users/imageselector/isroot"
python = "venv/bin/python3"

[workers.sleight]
address = "sleight.local"
port = 2222
user = "imageselector"
key_file = "/abs/key"
root = 'C:\\Users\\imageselector\\isroot'
python = 'C:\\Users\\imageselector\\imageselector\\.venv\\Scripts\\python.exe'
os = "windows"
"""

SSH_WORKER = """
[workers.w]
address = "10.0.0.2"
user = "u"
key_file = "/k"
root = "/r"
python = "/p"
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "hosts.toml"
    p.write_text(text)
    return p


def test_good_file(tmp_path):
    hosts = load_hosts(write(tmp_path, GOOD))
    assert list(hosts.workers) == ["imac", "mbp", "sleight"]
    assert hosts.known_hosts == tmp_path / "kh" / "known_hosts"
    imac, mbp, sleight = hosts
    assert imac.local and imac.root is None
    assert mbp.port == 22 and mbp.os == "posix" and mbp.key_file == tmp_path / "keys/id_ed25519"
    assert mbp.known_hosts_name == "192.168.1.20"
    assert sleight.is_windows and sleight.port == 2222
    assert sleight.known_hosts_name == "[sleight.local]:2222"
    assert sleight.root == "C:\\Users\\imageselector\\isroot"


def test_missing_file_means_no_workers(tmp_path):
    hosts = load_hosts(tmp_path / "hosts.toml")
    assert not hosts.exists and len(hosts) == 0
    assert hosts.known_hosts == tmp_path / "known_hosts"
    with pytest.raises(HostsConfigError, match=r"hosts.toml: no worker 'x' \(workers: none\)"):
        hosts.get("x")


def test_default_known_hosts_next_to_the_file(tmp_path):
    assert load_hosts(write(tmp_path, SSH_WORKER)).known_hosts == tmp_path / "known_hosts"


@pytest.mark.parametrize("text, message", [
    ("[workers.w\n", r"not valid TOML"),
    ("bogus = 1\n", r"unknown key bogus"),
    ("known_hosts = 3\n", r"known_hosts must be a non-empty string"),
    ("workers = 3\n", r"workers must be a table"),
    (SSH_WORKER.replace('address = "10.0.0.2"\n', ""), r"workers\.w\.address is missing"),
    (SSH_WORKER.replace('user = "u"\n', ""), r"workers\.w\.user is missing"),
    (SSH_WORKER.replace('key_file = "/k"\n', ""), r"workers\.w\.key_file is missing"),
    (SSH_WORKER.replace('root = "/r"\n', ""), r"workers\.w\.root is missing"),
    (SSH_WORKER.replace('python = "/p"\n', ""), r"workers\.w\.python is missing"),
    (SSH_WORKER.replace('user = "u"', 'user = ""'), r"workers\.w\.user must not be empty"),
    (SSH_WORKER.replace('user = "u"', "user = 5"), r"workers\.w\.user must be a string"),
    (SSH_WORKER + "port = 0\n", r"workers\.w\.port must be an integer 1-65535"),
    (SSH_WORKER + 'port = "22"\n', r"workers\.w\.port must be an integer"),
    (SSH_WORKER + 'os = "macos"\n', r"workers\.w\.os must be one of posix, windows"),
    (SSH_WORKER + 'adress = "x"\n', r"unknown key workers\.w\.adress"),
    (SSH_WORKER + "local = 1\n", r"workers\.w\.local must be true or false"),
    (SSH_WORKER.replace('root = "/r"', 'root = "relative/root"'),
     r"workers\.w\.root must be an absolute path"),
    (SSH_WORKER.replace('root = "/r"', 'root = "/r"\nos = "windows"'),
     r"workers\.w\.root must be an absolute path on that host \(like C:"),
    (SSH_WORKER.replace('root = "/r"', 'root = "/r\\nx"'), r"workers\.w\.root contains a control"),
    ('[workers."bad name"]\nlocal = true\n', r"workers\.'bad name': a worker name is"),
    ("[workers.w]\nlocal = true\naddress = 'x'\n", r"unknown key workers\.w\.address"),
])
def test_bad_file_names_file_and_key(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(HostsConfigError, match=message) as info:
        load_hosts(path)
    assert str(info.value).startswith(f"{path}: ")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("address", [
    "host;touch /tmp/x", "$(touch x)", "`id`", "-oProxyCommand=sh", "a b", "host|x", "h&x",
    "h>x", "h'x", 'h"x', "", "h\\x", "h\nx",
])
def test_address_with_metacharacters_refused(tmp_path, address):
    text = SSH_WORKER.replace('"10.0.0.2"', json.dumps(address))
    with pytest.raises(HostsConfigError, match=r"workers\.w\.address"):
        load_hosts(write(tmp_path, text))


def test_worker_name_cannot_carry_metacharacters(tmp_path):
    for name in ['"a;b"', '"$(x)"', '"-x"', '"a b"']:
        with pytest.raises(HostsConfigError, match="a worker name is"):
            load_hosts(write(tmp_path, f"[workers.{name}]\nlocal = true\n"))
