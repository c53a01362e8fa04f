"""Command lines for the remote operations, one builder per host OS.

``commands_for(host)`` gives an object with the same methods for POSIX (Linux, macOS: no
``setsid`` binary there) and Windows (OpenSSH + PowerShell). Each method returns one command
line for ``SSHConnection.run``; scripts are constants and every value is quoted for that
host's shell (see remote/quoting.py). Nothing here knows stage names or file layouts: the
caller passes them (e.g. the kill file name, ``run/worker.json``).

Exit statuses the caller can rely on (both OSes):
  0 ok, ``ROOT_MISSING`` the root folder does not exist, ``FILE_MISSING`` the file does not.
"""
from __future__ import annotations

import base64
import posixpath
import re

from remote.hosts import Host
from remote.quoting import posix_script, powershell_script, win_cmdline

ROOT_MISSING = 66
FILE_MISSING = 67

_PLAIN_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")

# Runs on the worker with its own Python: stdlib plus psutil when installed. Prints one JSON
# object. GPU figures come from nvidia-smi when present (bounded by a timeout).
# The host's clock (remote heartbeats are aged by it).
CLOCK_SCRIPT = "import time\nprint(repr(time.time()))\n"
HEALTH_SCRIPT = r'''
import json, os, platform, shutil, subprocess, sys
root = sys.argv[1] if len(sys.argv) > 1 else None
out = {"os": platform.system(), "release": platform.release(), "machine": platform.machine(),
       "python": platform.python_version(), "cpu_count": os.cpu_count(), "load": None,
       "mem_total": None, "mem_available": None, "root": root, "root_exists": None,
       "disk_total": None, "disk_free": None, "gpus": [], "psutil": False}
try:
    import psutil
    out["psutil"] = True
    vm = psutil.virtual_memory()
    out["mem_total"], out["mem_available"] = vm.total, vm.available
    try:
        out["load"] = [round(x, 2) for x in psutil.getloadavg()]
    except Exception:
        pass
except ImportError:
    pass
if out["load"] is None and hasattr(os, "getloadavg"):
    try:
        out["load"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
if out["mem_total"] is None and os.path.exists("/proc/meminfo"):
    info = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, _, v = line.partition(":")
            info[k] = int(v.split()[0]) * 1024
    out["mem_total"], out["mem_available"] = info.get("MemTotal"), info.get("MemAvailable")
if root:
    out["root_exists"] = os.path.isdir(root)
    if out["root_exists"]:
        du = shutil.disk_usage(root)
        out["disk_total"], out["disk_free"] = du.total, du.free
smi = shutil.which("nvidia-smi")
if smi:
    try:
        r = subprocess.run([smi, "--query-gpu=name,memory.total,memory.used,utilization.gpu",
                            "--format=csv,noheader,nounits"], capture_output=True, text=True,
                           timeout=10)
        for line in r.stdout.splitlines():
            parts = [p.strip() for p in line.split(",")]
            if len(parts) == 4:
                gpu = {"name": parts[0], "kind": "cuda"}
                for key, val in zip(("mem_total_mib", "mem_used_mib", "util_percent"), parts[1:]):
                    try:
                        gpu[key] = int(float(val))
                    except ValueError:
                        gpu[key] = None
                out["gpus"].append(gpu)
    except (OSError, subprocess.SubprocessError):
        out["gpu_error"] = "nvidia-smi did not answer"
elif platform.system() == "Darwin" and platform.machine() == "arm64":
    out["gpus"].append({"name": "Apple GPU", "kind": "mps"})
print(json.dumps(out))
'''


def python_c_loader(script: str) -> str:
    """A ``python -c`` argument that runs ``script``; base64 keeps it free of quotes."""
    encoded = base64.b64encode(script.encode("utf-8")).decode("ascii")
    return f"import base64;exec(base64.b64decode('{encoded}').decode())"


def check_plain_name(name: str, what: str = "file name") -> str:
    if not _PLAIN_NAME_RE.match(name) or name in (".", ".."):
        raise ValueError(f"{what} must be a plain name (letters, digits, '_', '.', '-'): {name!r}")
    return name


def check_relative(relpath: str) -> list[str]:
    """A path under the root written with '/', each part a plain name (no '..')."""
    parts = relpath.split("/")
    for part in parts:
        check_plain_name(part, "path part")
    return parts


class PosixCommands:
    _ROOT_CHECK = ('test -d "$1" || { printf "no such folder: %s\\n" "$1" >&2; '
                   f'exit {ROOT_MISSING}; }}; ')
    _FILE_CHECK = ('test -f "$2" || { printf "no such file: %s\\n" "$2" >&2; '
                   f'exit {FILE_MISSING}; }}; ')

    def __init__(self, host: Host):
        self.host = host

    def path(self, relpath: str) -> str:
        return posixpath.join(self.host.root, *check_relative(relpath))

    def argv(self, argv) -> str:
        """Run one program with these arguments, no shell in between."""
        return posix_script('exec "$@"', list(argv))

    def imageselector(self, args) -> str:
        """``PYTHON -m imageselector ARGS`` after checking the root exists."""
        return posix_script(self._ROOT_CHECK + 'py=$2; shift 2; exec "$py" -m imageselector "$@"',
                            [self.host.root, self.host.python, *args])

    def start_stage(self, stage: str, extra_args=()) -> str:
        """Start a stage there; ``imageselector start`` detaches itself and returns."""
        return self.imageselector(["start", stage, "--root", self.host.root, *extra_args])

    def write_root_file(self, name: str, text: str) -> str:
        """Write ROOT/NAME atomically (temp name, then rename): a kill or pause file."""
        target = self.path(check_plain_name(name))
        return posix_script(self._ROOT_CHECK + 'tmp="$2.tmp.$$"; printf "%s" "$3" > "$tmp" '
                            '&& mv -f "$tmp" "$2"', [self.host.root, target, text])

    def stop(self, kill_file: str, reason: str = "stop requested") -> str:
        return self.write_root_file(kill_file, reason + "\n")

    def remove_root_file(self, name: str) -> str:
        target = self.path(check_plain_name(name))
        return posix_script(self._ROOT_CHECK + 'rm -f "$2"', [self.host.root, target])

    def read_root_file(self, relpath: str) -> str:
        """Print ROOT/RELPATH (a heartbeat such as run/worker.json)."""
        return posix_script(self._ROOT_CHECK + self._FILE_CHECK + 'cat "$2"',
                            [self.host.root, self.path(relpath)])

    def sha256(self, path: str) -> str:
        """Print the SHA-256 of a file (Linux sha256sum, macOS shasum) as the first word."""
        return posix_script(
            f'test -f "$1" || {{ printf "no such file: %s\\n" "$1" >&2; exit {FILE_MISSING}; }}; '
            'if command -v sha256sum >/dev/null 2>&1; then sha256sum < "$1"; '
            'else shasum -a 256 < "$1"; fi', [path])

    def health(self) -> str:
        """Load, memory, disk of the root, GPUs: one JSON line from the host's Python."""
        return posix_script('py=$1; shift; exec "$py" "$@"',
                            [self.host.python, "-c", python_c_loader(HEALTH_SCRIPT),
                             self.host.root])

    def detached(self, argv, log_path: str | None = None) -> str:
        """Start ``argv`` so it outlives the SSH session; prints its pid."""
        return posix_script('log=$1; shift; nohup "$@" > "$log" 2>&1 < /dev/null & echo $!',
                            [log_path or "/dev/null", *argv])


class WindowsCommands:
    _ROOT_CHECK = ("if (-not (Test-Path -LiteralPath $root -PathType Container)) { "
                   "[Console]::Error.WriteLine('no such folder: ' + $root); "
                   f"exit {ROOT_MISSING} }}\n")
    _FILE_CHECK = ("if (-not (Test-Path -LiteralPath $file -PathType Leaf)) { "
                   "[Console]::Error.WriteLine('no such file: ' + $file); "
                   f"exit {FILE_MISSING} }}\n")

    def __init__(self, host: Host):
        self.host = host

    @property
    def root(self) -> str:
        # A trailing backslash would escape the closing quote of a quoted argument.
        root = self.host.root.replace("/", "\\")
        return root if len(root) <= 3 else root.rstrip("\\")

    def path(self, relpath: str) -> str:
        return self.root.rstrip("\\") + "\\" + "\\".join(check_relative(relpath))

    def _native(self, exe: str, args) -> str:
        return powershell_script(
            self._ROOT_CHECK + "$code = Invoke-Native $exe $arguments\nexit $code\n",
            {"root": self.root, "exe": exe, "arguments": win_cmdline(args)})

    def argv(self, argv) -> str:
        argv = list(argv)
        return powershell_script("$code = Invoke-Native $exe $arguments\nexit $code\n",
                                 {"exe": argv[0], "arguments": win_cmdline(argv[1:])})

    def imageselector(self, args) -> str:
        return self._native(self.host.python, ["-m", "imageselector", *args])

    def start_stage(self, stage: str, extra_args=()) -> str:
        return self.imageselector(["start", stage, "--root", self.root, *extra_args])

    def write_root_file(self, name: str, text: str) -> str:
        return powershell_script(
            self._ROOT_CHECK
            + "$tmp = $file + '.tmp'\n"
            + "[System.IO.File]::WriteAllText($tmp, $text)\n"
            + "if (Test-Path -LiteralPath $file) { [System.IO.File]::Replace($tmp, $file, $null) }"
            + " else { [System.IO.File]::Move($tmp, $file) }\n",
            {"root": self.root, "file": self.path(check_plain_name(name)), "text": text})

    def stop(self, kill_file: str, reason: str = "stop requested") -> str:
        return self.write_root_file(kill_file, reason + "\n")

    def remove_root_file(self, name: str) -> str:
        return powershell_script(
            self._ROOT_CHECK
            + "if (Test-Path -LiteralPath $file) { Remove-Item -LiteralPath $file -Force }\n",
            {"root": self.root, "file": self.path(check_plain_name(name))})

    def read_root_file(self, relpath: str) -> str:
        return powershell_script(
            self._ROOT_CHECK + self._FILE_CHECK
            + "[Console]::Out.Write([System.IO.File]::ReadAllText($file))\n",
            {"root": self.root, "file": self.path(relpath)})

    def sha256(self, path: str) -> str:
        return powershell_script(
            self._FILE_CHECK
            + "[Console]::Out.WriteLine((Get-FileHash -Algorithm SHA256 -LiteralPath $file)"
            + ".Hash.ToLower())\n",
            {"file": path.replace("/", "\\")})

    def health(self) -> str:
        return powershell_script(
            "$code = Invoke-Native $exe $arguments\nexit $code\n",
            {"exe": self.host.python,
             "arguments": win_cmdline(["-c", python_c_loader(HEALTH_SCRIPT), self.root])})

    def detached(self, argv, log_path: str | None = None) -> str:
        """Start ``argv`` through WMI (Win32_Process.Create): the process is not in the SSH
        session's job, which Windows' OpenSSH kills at logout. Prints its pid. ``log_path``
        is ignored: the program must write its own log."""
        return powershell_script(
            "$r = Invoke-CimMethod -ClassName Win32_Process -MethodName Create "
            "-Arguments @{ CommandLine = $cmdline }\n"
            "if ($r.ReturnValue -ne 0) { [Console]::Error.WriteLine("
            "'Win32_Process.Create failed: ' + $r.ReturnValue); exit 1 }\n"
            "[Console]::Out.WriteLine($r.ProcessId)\n",
            {"cmdline": win_cmdline(argv)})


def commands_for(host: Host) -> PosixCommands | WindowsCommands:
    if host.local:
        raise ValueError(f"{host.name} is a local worker: use LocalTransport, not commands")
    return WindowsCommands(host) if host.is_windows else PosixCommands(host)
