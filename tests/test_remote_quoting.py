"""No host name, path or text can become a command: POSIX for real through sshd, Windows on
the generated PowerShell (decoded and tokenized here, as PowerShell reads it)."""
from __future__ import annotations

import hashlib
import os
import re
import secrets
import shlex
from pathlib import Path

import pytest

from remote.commands import (FILE_MISSING, ROOT_MISSING, PosixCommands, WindowsCommands,
                             commands_for)
from remote.hosts import Host
from remote.quoting import (POWERSHELL_PREFIX, decode_powershell, ps_quote, win_cmdline)
from remote.ssh import SSHConnection
from tests.sshd_support import FAST, sshd  # noqa: F401  (fixture)

TOKEN = "PWNED_" + secrets.token_hex(4)
NASTY = [
    "plain",
    "with space",
    f"semi;touch {TOKEN}",
    f"$(touch {TOKEN})",
    f"`touch {TOKEN}`",
    f"a' ; touch {TOKEN}; echo '",
    f'a" ; touch {TOKEN}; echo "',
    "back\\slash\\",
    f"amp & touch {TOKEN} &",
    f"pipe | touch {TOKEN}",
    f"redir > {TOKEN}",
    "glob * ? [a]",
    "~ tilde $HOME ${PATH} $1 !! #comment",
    "\u2018smart\u2019 quotes ' and \u201a\u201b'",
    f"ps $env:PATH @(1) ; Remove-Item {TOKEN}; `n $(Get-Date)",
    "-leadingdash",
    "%PATH% ^ cmd & echo",
    "new\nline",
    "",
]
PS_QUOTES = "'\u2018\u2019\u201a\u201b"

WIN_HOST = Host(name="sleight", address="10.0.0.3", user="u", key_file=Path("/k"),
                root="C:\\Users\\me\\is root\\", python="C:\\py dir\\python.exe", os="windows")
POSIX_HOST = Host(name="mbp", address="10.0.0.2", user="u", key_file=Path("/k"),
                  root="/Users/me/is root", python="venv/bin/python3", os="posix")


# ---- PowerShell, as PowerShell tokenizes it -------------------------------------------------
def ps_literal(s: str, i: int) -> tuple[str, int]:
    """Read the single-quoted literal starting at s[i]; returns (value, index after it)."""
    assert s[i] in PS_QUOTES
    i += 1
    out = []
    while True:
        c = s[i]
        if c in PS_QUOTES:
            if i + 1 < len(s) and s[i + 1] in PS_QUOTES:
                out.append(s[i + 1])
                i += 2
                continue
            return "".join(out), i + 1
        out.append(c)
        i += 1


def ps_skeleton(script: str) -> tuple[str, list[str]]:
    """The script with every single-quoted literal replaced by '<>', and the literals."""
    skel, values, i = [], [], 0
    while i < len(script):
        if script[i] in PS_QUOTES:
            value, i = ps_literal(script, i)
            values.append(value)
            skel.append("'<>'")
        else:
            skel.append(script[i])
            i += 1
    return "".join(skel), values


def ms_crt_split(s: str) -> list[str]:
    """Split a Windows command line as the Microsoft C runtime does (argv of python.exe)."""
    args, i, n = [], 0, len(s)
    while True:
        while i < n and s[i] in " \t":
            i += 1
        if i >= n:
            return args
        arg, inq = [], False
        while i < n:
            c = s[i]
            if c == "\\":
                j = i
                while j < n and s[j] == "\\":
                    j += 1
                if j < n and s[j] == '"':
                    arg.append("\\" * ((j - i) // 2))
                    if (j - i) % 2:
                        arg.append('"')
                        i = j + 1
                    else:
                        i = j
                else:
                    arg.append("\\" * (j - i))
                    i = j
                continue
            if c == '"':
                if inq and i + 1 < n and s[i + 1] == '"':
                    arg.append('"')
                    i += 2
                    continue
                inq = not inq
                i += 1
                continue
            if c in " \t" and not inq:
                break
            arg.append(c)
            i += 1
        args.append("".join(arg))


@pytest.mark.parametrize("value", NASTY)
def test_ps_quote_round_trip(value):
    quoted = ps_quote(value)
    parsed, end = ps_literal(quoted + " ; rest", 0)
    assert parsed == value
    assert end == len(quoted)


@pytest.mark.parametrize("value", NASTY)
def test_win_cmdline_round_trip(value):
    argv = ["C:\\py dir\\python.exe", "-c", value, "x y", 'q"uote', "trail\\"]
    assert ms_crt_split(win_cmdline(argv)) == argv


def windows_builds(value: str):
    """Every Windows command with ``value`` in every slot it can take."""
    host = Host(name="w", address="h", user="u", key_file=Path("/k"), root=f"C:\\r{value}",
                python=f"C:\\p{value}\\python.exe", os="windows")
    c = WindowsCommands(host)
    return {
        "start": c.start_stage("worker", [value]),
        "stop": c.stop("KILL_WORKER", reason=value),
        "write": c.write_root_file("PAUSE_X", value),
        "read": c.read_root_file("run/worker.json"),
        "sha": c.sha256(f"C:\\d\\{value}"),
        "health": c.health(),
        "argv": c.argv([f"C:\\x{value}.exe", value]),
        "detached": c.detached([f"C:\\x{value}.exe", value]),
    }


@pytest.mark.parametrize("value", NASTY)
def test_windows_values_never_change_the_script(value):
    benign = windows_builds("benign")
    nasty = windows_builds(value)
    for op, command in nasty.items():
        # The login shell (cmd.exe or PowerShell) sees letters, digits and base64 only.
        assert command.startswith(POWERSHELL_PREFIX)
        assert re.fullmatch(r"[A-Za-z0-9 .+/=-]+", command), op
        skel, values = ps_skeleton(decode_powershell(command))
        benign_skel, _ = ps_skeleton(decode_powershell(benign[op]))
        assert skel == benign_skel, op
        assert '"' not in skel and "#" not in skel, op   # our scripts use single quotes only
        if op in ("stop", "write"):
            assert (value + "\n" if op == "stop" else value) in values


def test_windows_start_passes_exact_argv():
    c = WindowsCommands(WIN_HOST)
    _, values = ps_skeleton(decode_powershell(c.start_stage("worker", ["--once"])))
    exe = values[values.index("C:\\py dir\\python.exe")]
    assert exe == WIN_HOST.python
    argument_string = values[values.index(exe) + 1]
    # the trailing backslash is gone: it would escape the closing quote
    assert ms_crt_split(argument_string) == ["-m", "imageselector", "start", "worker", "--root",
                                             "C:\\Users\\me\\is root", "--once"]
    assert "C:\\Users\\me\\is root" in values      # $root, checked before running


def test_windows_paths():
    c = WindowsCommands(WIN_HOST)
    assert c.path("run/worker.json") == "C:\\Users\\me\\is root\\run\\worker.json"
    assert WindowsCommands(Host(name="w", root="D:\\", os="windows", address="a", user="u",
                                key_file=Path("/k"), python="p")).path("KILL_X") == "D:\\KILL_X"
    with pytest.raises(ValueError):
        c.path("../x")
    with pytest.raises(ValueError):
        c.stop("..\\KILL")
    conn = SSHConnection(WIN_HOST, "/nonexistent")
    assert conn.sftp_path("C:\\Users\\me\\x.bin") == "/C:/Users/me/x.bin"


def test_windows_exit_codes_and_checks_present():
    c = WindowsCommands(WIN_HOST)
    read = decode_powershell(c.read_root_file("run/worker.json"))
    assert f"exit {ROOT_MISSING}" in read and f"exit {FILE_MISSING}" in read
    assert "Test-Path -LiteralPath $root -PathType Container" in read
    assert "Win32_Process" in decode_powershell(c.detached(["a.exe"]))
    assert "$ErrorActionPreference = 'Stop'" in decode_powershell(c.health())


# ---- POSIX, generated ------------------------------------------------------------------
@pytest.mark.parametrize("value", NASTY)
def test_posix_words_are_exactly_the_values(value):
    host = Host(name="p", address="h", user="u", key_file=Path("/k"), root=f"/r{value}",
                python=f"/p{value}/python")
    c = PosixCommands(host)
    words = shlex.split(c.start_stage("worker", [value]))
    assert words[:2] == ["/bin/sh", "-c"] and words[3] == "sh"
    assert words[4:] == [host.root, host.python, "start", "worker", "--root", host.root, value]
    benign = PosixCommands(Host(name="p", address="h", user="u", key_file=Path("/k"),
                                root="/r", python="/p"))
    assert shlex.split(benign.start_stage("worker"))[2] == words[2]   # same constant script


def test_commands_for_picks_the_os():
    assert isinstance(commands_for(WIN_HOST), WindowsCommands)
    assert isinstance(commands_for(POSIX_HOST), PosixCommands)
    with pytest.raises(ValueError):
        commands_for(Host(name="l", local=True))


# ---- POSIX, for real through sshd --------------------------------------------------------
WEIRD_DIR = "we ird;$(touch X)`touch X`'\"&|<>*?~!#%^{a,b}\\ end".replace("X", TOKEN)


def canaries(tmp: Path) -> list[Path]:
    """Files an injected `touch TOKEN` would have made: in the remote cwd (home) or below tmp."""
    found = list(Path.home().glob(f"*{TOKEN}*")) + list(tmp.rglob(f"*{TOKEN}*"))
    return [p for p in found if WEIRD_DIR not in str(p)]


@pytest.fixture(scope="module")
def weird(sshd, tmp_path_factory):  # noqa: F811
    """A root and a fake python whose paths carry every shell metacharacter."""
    tmp = tmp_path_factory.mktemp("weird")
    root = tmp / WEIRD_DIR / "root"
    (root / "run").mkdir(parents=True)
    (root / "logs").mkdir()
    bindir = tmp / WEIRD_DIR / "bin"
    bindir.mkdir()
    fake_python = bindir / "python3"
    # prints its arguments NUL-separated, so the test sees exactly what it received
    fake_python.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\0" "$a"; done\n')
    fake_python.chmod(0o755)
    kh = sshd.write_known_hosts(tmp / "known_hosts")
    host = sshd.host(root=str(root), python=str(fake_python))
    conn = SSHConnection(host, kh, FAST).connect()
    yield conn, root, tmp
    conn.close()


def test_posix_real_start_gets_exact_arguments(weird):
    conn, root, tmp = weird
    for value in NASTY:
        result = conn.run(conn.commands.start_stage("worker", [value]))
        assert result.exit_status == 0, result.stderr
        args = result.stdout_bytes.decode().split("\0")[:-1]
        assert args == ["-m", "imageselector", "start", "worker", "--root", str(root), value]
    assert not canaries(tmp), "a metacharacter ran a command"


def test_posix_real_files_with_nasty_text(weird):
    conn, root, tmp = weird
    c = conn.commands
    for value in NASTY:
        assert conn.run(c.write_root_file("PAUSE_X", value)).exit_status == 0
        assert (root / "PAUSE_X").read_text() == value
    # the file's content never meets a shell; one read shows it comes back byte for byte
    (root / "run" / "worker.json").write_text("".join(NASTY))
    read = conn.run(c.read_root_file("run/worker.json"))
    assert read.exit_status == 0 and read.stdout == "".join(NASTY)
    assert conn.run(c.argv(["printf", "%s|", *NASTY])).stdout == "|".join(NASTY) + "|"
    assert not canaries(tmp), "a metacharacter ran a command"


def test_posix_real_root_and_file_missing(weird):
    conn, root, tmp = weird
    c = conn.commands
    assert conn.run(c.read_root_file("run/nothing.json")).exit_status == FILE_MISSING
    assert conn.run(c.stop("KILL_WORKER")).exit_status == 0
    assert (root / "KILL_WORKER").read_text() == "stop requested\n"
    gone = PosixCommands(Host(name="g", address="h", user="u", key_file=Path("/k"),
                              root=str(root) + "-missing", python=conn.host.python))
    for command in (gone.stop("KILL_WORKER"), gone.read_root_file("run/w.json"),
                    gone.start_stage("worker")):
        result = conn.run(command)
        assert result.exit_status == ROOT_MISSING
        assert "no such folder" in result.stderr
    assert not Path(str(root) + "-missing").exists()


def test_posix_real_sha256_of_weird_path(weird):
    conn, root, tmp = weird
    f = root / "data ';$(x) `y`.bin"
    f.write_bytes(os.urandom(1000))
    assert conn.remote_sha256(str(f)) == hashlib.sha256(f.read_bytes()).hexdigest()
    assert not canaries(tmp)
