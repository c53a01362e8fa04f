"""The worker hosts file (``hosts.toml`` at the root).

Example::

    # optional; relative paths are relative to this file's folder
    known_hosts = "known_hosts"

    [workers.imac]
    local = true                      # this machine: plain files, no SSH

    [workers.mbp]
    address = "192.168.1.20"
    port = 22                         # optional, default 22
    user = "imageselector"
    key_file = "~/.ssh/imageselector_ed25519"
    root = "/Users/imageselector/isroot"
    python = "/Users/imageselector/imageselector/.venv/bin/python3"
    os = "posix"                      # optional, "posix" (Linux, macOS) or "windows"

    [workers.sleight]
    address = "192.168.1.30"
    user = "imageselector"
    key_file = "~/.ssh/imageselector_ed25519"
    root = 'C:\\Users\\imageselector\\isroot'
    python = 'C:\\Users\\imageselector\\imageselector\\.venv\\Scripts\\python.exe'
    os = "windows"

    [workers.rented]
    kind = "ray"                      # a Ray cluster: the orchestrator ships, Ray computes
    address = "ray://10.0.0.5:10001"  # Ray client, or the head's "host:port" when this
                                      # machine is a node of that cluster
    actors = 4                        # model actors (each loads the models once)
    num_gpus = 1                      # per actor (optional, default 0)
    num_cpus = 4                      # per actor (optional, default 1)
    memory_gb = 24                    # per actor (optional: Ray's memory resource)

Ray workers are kept apart (``HostsFile.ray``): everything that reaches a host over SSH
iterates ``HostsFile`` and never sees them; the orchestrator and status ask for both.

Every problem is one ``HostsConfigError`` naming the file and the key.
"""
from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from remote.errors import HostsConfigError

OS_KINDS = ("posix", "windows")
DEFAULT_PORT = 22
# Names appear in status lines, file names and log prefixes: keep them plain.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
# A DNS name, IPv4 or IPv6 literal; never starts with "-" (no option injection anywhere).
_ADDRESS_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.:-]{0,251}[A-Za-z0-9])?$")
_WINDOWS_ABS_RE = re.compile(r"^[A-Za-z]:[\\/]")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")

_TOP_KEYS = {"known_hosts", "workers"}
_SSH_KEYS = {"address", "port", "user", "key_file", "root", "python", "os", "local", "checkout"}
_LOCAL_KEYS = {"local", "root", "python", "os", "checkout"}
_RAY_KEYS = {"kind", "address", "actors", "num_cpus", "num_gpus", "memory_gb"}
KINDS = ("ssh", "local", "ray")
# a Ray client address (ray://host:port) or a GCS address (host:port)
_RAY_ADDRESS_RE = re.compile(r"^(ray://)?[A-Za-z0-9]([A-Za-z0-9.:-]{0,251}[A-Za-z0-9])?:[0-9]{1,5}$")


@dataclass(frozen=True)
class RaySpec:
    """A Ray worker: the cluster's address and its model actors (resources per actor)."""

    address: str
    actors: int = 1
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    memory_gb: float | None = None

    def describe(self) -> str:
        need = f"{self.num_cpus:g} CPU" + (f", {self.num_gpus:g} GPU" if self.num_gpus else "") + \
            (f", {self.memory_gb:g} GB" if self.memory_gb else "")
        return f"ray {self.address}, {self.actors} actor(s) of {need}"


@dataclass(frozen=True)
class Host:
    """One worker host. ``root`` and ``python`` are paths on that host, kept as text
    (a Windows path is not a local Path here)."""

    name: str
    local: bool = False
    address: str | None = None
    port: int = DEFAULT_PORT
    user: str | None = None
    key_file: Path | None = None
    root: str | None = None
    python: str | None = None
    os: str = "posix"
    checkout: str | None = None   # the git checkout that `hosts deploy` pulls there
    ray: RaySpec | None = None    # kind = "ray": a Ray cluster, not a host

    @property
    def kind(self) -> str:
        return "ray" if self.ray else "local" if self.local else "ssh"

    @property
    def is_windows(self) -> bool:
        return self.os == "windows"

    @property
    def known_hosts_name(self) -> str:
        """The host's name in known_hosts, as OpenSSH writes it."""
        if self.port == DEFAULT_PORT:
            return self.address or ""
        return f"[{self.address}]:{self.port}"

    def describe(self) -> str:
        if self.ray:
            return f"{self.name} ({self.ray.describe()})"
        if self.local:
            return f"{self.name} (local)"
        return f"{self.name} ({self.user}@{self.address}:{self.port}, {self.os})"

    def as_dict(self) -> dict:
        return {"name": self.name, "local": self.local, "address": self.address,
                "port": self.port, "user": self.user,
                "key_file": str(self.key_file) if self.key_file else None,
                "root": self.root, "python": self.python, "os": self.os, "checkout": self.checkout,
                "kind": self.kind, "ray": self.ray.__dict__.copy() if self.ray else None}


@dataclass(frozen=True)
class HostsFile:
    path: Path
    known_hosts: Path
    workers: dict[str, Host] = field(default_factory=dict)
    exists: bool = True
    ray: dict[str, Host] = field(default_factory=dict)   # kind = "ray" (not iterated)

    def get(self, name: str) -> Host:
        try:
            return self.workers[name]
        except KeyError:
            known = ", ".join(self.workers) or "none"
            raise HostsConfigError(f"{self.path}: no worker {name!r} (workers: {known})") from None

    def __iter__(self):
        return iter(self.workers.values())

    def __len__(self) -> int:
        return len(self.workers)


def load_hosts(path: str | os.PathLike) -> HostsFile:
    """Read hosts.toml. A missing file means no workers (not an error)."""
    path = Path(path)
    base = path.parent
    if not path.exists():
        return HostsFile(path=path, known_hosts=base / "known_hosts", exists=False)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise HostsConfigError(f"{path}: not valid TOML ({exc})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise HostsConfigError(f"{path}: cannot read ({exc})") from None
    return parse_hosts(data, path)


def parse_hosts(data: dict, path: Path) -> HostsFile:
    base = path.parent
    _no_unknown_keys(path, "", data, _TOP_KEYS)
    known_hosts_raw = data.get("known_hosts", "known_hosts")
    if not isinstance(known_hosts_raw, str) or not known_hosts_raw.strip():
        raise HostsConfigError(f"{path}: known_hosts must be a non-empty string")
    known_hosts = _local_path(base, known_hosts_raw)
    workers_raw = data.get("workers", {})
    if not isinstance(workers_raw, dict):
        raise HostsConfigError(f"{path}: workers must be a table ([workers.NAME])")
    workers: dict[str, Host] = {}
    ray: dict[str, Host] = {}
    for name, table in workers_raw.items():
        if not _NAME_RE.match(name):
            raise HostsConfigError(
                f"{path}: workers.{name!r}: a worker name is letters, digits, '-' and '_' "
                f"(at most 63, starting with a letter or digit)")
        if not isinstance(table, dict):
            raise HostsConfigError(f"{path}: workers.{name} must be a table")
        kind = table.get("kind", "ssh")
        if kind not in KINDS:
            raise HostsConfigError(f"{path}: workers.{name}.kind must be one of "
                                   f"{', '.join(KINDS)}, got {kind!r}")
        if kind == "ray":
            ray[name] = _parse_ray_worker(path, name, table)
        else:
            body = {k: v for k, v in table.items() if k != "kind"}
            if kind == "local" and body.get("local", True) is not True:
                raise HostsConfigError(f"{path}: workers.{name}: kind = \"local\" with local = false")
            if kind == "local":
                body["local"] = True
            workers[name] = _parse_worker(path, name, body)
    return HostsFile(path=path, known_hosts=known_hosts, workers=workers, ray=ray)


def _parse_ray_worker(path: Path, name: str, t: dict) -> Host:
    where = f"workers.{name}"
    _no_unknown_keys(path, where, t, _RAY_KEYS)
    address = _req_str(path, where, t, "address")
    port = address.rpartition(":")[2]
    if not _RAY_ADDRESS_RE.match(address) or not 1 <= int(port or 0) <= 65535:
        raise HostsConfigError(f"{path}: {where}.address must be ray://HOST:PORT or the head's "
                               f"HOST:PORT, got {address!r}")
    actors = t.get("actors", 1)
    if not isinstance(actors, int) or isinstance(actors, bool) or not 1 <= actors <= 4096:
        raise HostsConfigError(f"{path}: {where}.actors must be an integer 1-4096, got {actors!r}")
    numbers = {}
    for key, default, least in (("num_cpus", 1.0, 0.0), ("num_gpus", 0.0, 0.0),
                                ("memory_gb", None, 0.0)):
        value = t.get(key, default)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or value < least or value != value or value > 1e6):
            raise HostsConfigError(f"{path}: {where}.{key} must be a number >= 0, got {value!r}")
        numbers[key] = float(value) if value is not None else None
    if not numbers["num_cpus"] and not numbers["num_gpus"]:
        raise HostsConfigError(f"{path}: {where}: an actor needs num_cpus or num_gpus above 0")
    return Host(name=name, address=address, port=int(port),
                ray=RaySpec(address=address, actors=actors, **numbers))


def _parse_worker(path: Path, name: str, t: dict) -> Host:
    where = f"workers.{name}"
    local = t.get("local", False)
    if not isinstance(local, bool):
        raise HostsConfigError(f"{path}: {where}.local must be true or false")
    os_kind = _opt_str(path, where, t, "os") or "posix"
    if os_kind not in OS_KINDS:
        raise HostsConfigError(f"{path}: {where}.os must be one of {', '.join(OS_KINDS)}, "
                               f"got {os_kind!r}")
    if local:
        _no_unknown_keys(path, where, t, _LOCAL_KEYS)
        root = _opt_str(path, where, t, "root")
        python = _opt_str(path, where, t, "python")
        if root is not None:
            _check_root(path, where, root, os_kind)
        checkout = _opt_str(path, where, t, "checkout")
        if checkout is not None:
            _check_root(path, where, checkout, os_kind, key="checkout")
        return Host(name=name, local=True, root=root, python=python, os=os_kind, checkout=checkout)

    _no_unknown_keys(path, where, t, _SSH_KEYS)
    address = _req_str(path, where, t, "address")
    if not _ADDRESS_RE.match(address):
        raise HostsConfigError(f"{path}: {where}.address must be a host name or IP address, "
                               f"got {address!r}")
    port = t.get("port", DEFAULT_PORT)
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise HostsConfigError(f"{path}: {where}.port must be an integer 1-65535, got {port!r}")
    user = _req_str(path, where, t, "user")
    key_file = _local_path(path.parent, _req_str(path, where, t, "key_file"))
    root = _req_str(path, where, t, "root")
    _check_root(path, where, root, os_kind)
    python = _req_str(path, where, t, "python")
    checkout = _opt_str(path, where, t, "checkout")
    if checkout is not None:
        _check_root(path, where, checkout, os_kind, key="checkout")
    return Host(name=name, local=False, address=address, port=port, user=user,
                key_file=key_file, root=root, python=python, os=os_kind, checkout=checkout)


def _check_root(path: Path, where: str, root: str, os_kind: str, key: str = "root") -> None:
    absolute = _WINDOWS_ABS_RE.match(root) if os_kind == "windows" else root.startswith("/")
    if not absolute:
        example = "C:\\\\Users\\\\me\\\\isroot" if os_kind == "windows" else "/home/me/isroot"
        raise HostsConfigError(f"{path}: {where}.{key} must be an absolute path on that host "
                               f"(like {example}), got {root!r}")


def _req_str(path: Path, where: str, t: dict, key: str) -> str:
    if key not in t:
        raise HostsConfigError(f"{path}: {where}.{key} is missing")
    value = _opt_str(path, where, t, key)
    if not value:
        raise HostsConfigError(f"{path}: {where}.{key} must not be empty")
    return value


def _opt_str(path: Path, where: str, t: dict, key: str) -> str | None:
    if key not in t:
        return None
    value = t[key]
    if not isinstance(value, str):
        raise HostsConfigError(f"{path}: {where}.{key} must be a string, got {value!r}")
    if _CONTROL_RE.search(value):
        raise HostsConfigError(f"{path}: {where}.{key} contains a control character")
    return value


def _no_unknown_keys(path: Path, where: str, t: dict, allowed: set[str]) -> None:
    for key in t:
        if key not in allowed:
            prefix = f"{where}." if where else ""
            raise HostsConfigError(f"{path}: unknown key {prefix}{key} "
                                   f"(allowed: {', '.join(sorted(allowed))})")


def _local_path(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p
