"""Quoting for the two remote shells, and wrapping a script so no data can become code.

POSIX hosts: the command line is ``/bin/sh -c 'CONSTANT SCRIPT' sh ARG...``. The script is a
constant written here; every piece of data (paths, names, text) travels as a positional
argument quoted with ``shlex.quote``, so the login shell (bash, zsh) sees quoted words only
and ``sh`` sees data only as ``"$1"``.

Windows hosts (OpenSSH, whose login shell may be cmd.exe or PowerShell):
``powershell.exe ... -EncodedCommand BASE64``. The outer command line is letters, digits
and ``+/=`` only, so neither cmd.exe nor PowerShell can find a metacharacter in it; inside
the script every value is a PowerShell single-quoted literal. Native programs are started
through ``System.Diagnostics.Process`` with an argument string built by the Microsoft C
runtime rules (``subprocess.list2cmdline``), which avoids PowerShell 5.1's broken quoting of
native arguments (embedded quotes, trailing backslashes, empty strings).
"""
from __future__ import annotations

import base64
import re
import shlex
import subprocess

# PowerShell treats all of these as a single quote inside a single-quoted string.
_PS_SINGLE_QUOTES = "'\u2018\u2019\u201a\u201b"
_PS_QUOTE_RE = re.compile(f"([{_PS_SINGLE_QUOTES}])")
_ENCODED_RE = re.compile(r"^[A-Za-z0-9+/=]+$")

POWERSHELL_PREFIX = ("powershell.exe -NoLogo -NoProfile -NonInteractive "
                     "-ExecutionPolicy Bypass -EncodedCommand ")

# Runs first in every Windows script: stop on errors, UTF-8 out, no progress records
# (which PowerShell would send to stderr as CLIXML), and a helper to start a native program
# with an exact command line and relay its output and exit status.
_PS_PREAMBLE = r"""
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
[Console]::OutputEncoding = [System.Text.Encoding]::UTF8
function Invoke-Native([string]$Exe, [string]$Arguments) {
    $psi = New-Object System.Diagnostics.ProcessStartInfo
    $psi.FileName = $Exe
    $psi.Arguments = $Arguments
    $psi.UseShellExecute = $false
    $psi.RedirectStandardOutput = $true
    $psi.RedirectStandardError = $true
    $psi.StandardOutputEncoding = [System.Text.Encoding]::UTF8
    $psi.StandardErrorEncoding = [System.Text.Encoding]::UTF8
    $psi.EnvironmentVariables['PYTHONUTF8'] = '1'
    $p = [System.Diagnostics.Process]::Start($psi)
    $out = $p.StandardOutput.ReadToEndAsync()
    $err = $p.StandardError.ReadToEndAsync()
    $p.WaitForExit()
    [Console]::Out.Write($out.Result)
    [Console]::Error.Write($err.Result)
    return $p.ExitCode
}
"""


def posix_quote(value: str) -> str:
    return shlex.quote(str(value))


def posix_join(argv) -> str:
    return " ".join(posix_quote(a) for a in argv)


def posix_script(script: str, args=()) -> str:
    """A command line that runs the constant ``script`` under /bin/sh with ``args`` as $1..."""
    return posix_join(["/bin/sh", "-c", script, "sh", *args])


def ps_quote(value: str) -> str:
    """A PowerShell single-quoted literal: nothing inside is expanded or executed."""
    return "'" + _PS_QUOTE_RE.sub(r"\1\1", str(value)) + "'"


def win_cmdline(argv) -> str:
    """One Windows command line (Microsoft C runtime argument rules)."""
    return subprocess.list2cmdline([str(a) for a in argv])


def powershell_script(script: str, values: dict[str, str] | None = None) -> str:
    """A command line running ``script`` in PowerShell; ``values`` become ``$name = '...'``."""
    lines = [_PS_PREAMBLE]
    for name, value in (values or {}).items():
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
            raise ValueError(f"not a PowerShell variable name: {name!r}")
        lines.append(f"${name} = {ps_quote(value)}")
    lines.append(script)
    return encode_powershell("\n".join(lines))


def encode_powershell(script: str) -> str:
    encoded = base64.b64encode(script.encode("utf-16-le")).decode("ascii")
    return POWERSHELL_PREFIX + encoded


def decode_powershell(command: str) -> str:
    """The script inside a command made by ``encode_powershell`` (for tests and logs)."""
    if not command.startswith(POWERSHELL_PREFIX):
        raise ValueError("not an encoded PowerShell command")
    encoded = command[len(POWERSHELL_PREFIX):]
    if not _ENCODED_RE.match(encoded):
        raise ValueError("encoded part has characters outside base64")
    return base64.b64decode(encoded).decode("utf-16-le")
