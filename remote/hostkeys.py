"""Trusting a worker host's SSH key: reading the known_hosts file named by hosts.toml, fetching
a host's key from a key exchange without authentication, and recording it there only after the
operator confirmed its fingerprint (``trust``). A key that differs from a recorded one is
refused; removing the old line is the operator's deliberate act. (A connection's refusal of an
unknown key is remote.ssh's ``_RefuseUnknownHost``, next to the connect it serves.)
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import paramiko

from remote.errors import ChangedHostKey, HostKeyError, Unreachable
from remote.hosts import Host
from remote.ssh import SSHSettings


def load_known_hosts(path: Path) -> paramiko.HostKeys:
    keys = paramiko.HostKeys()
    if path.exists():
        try:
            keys.load(str(path))
        except (OSError, UnicodeDecodeError) as exc:
            raise HostKeyError(f"{path}: cannot read the known_hosts file ({exc})") from None
    return keys


@dataclass(frozen=True)
class TrustResult:
    host: str
    key_type: str
    fingerprint: str
    recorded: bool          # written to known_hosts now
    already_known: bool     # was already there, nothing to do


def fetch_host_key(host: Host, settings: SSHSettings | None = None,
                   prefer: list[str] | None = None) -> paramiko.PKey:
    """The host's public key, from a key exchange without authentication."""
    s = settings or SSHSettings()
    where = f"{host.name} ({host.address}:{host.port})"
    try:
        sock = socket.create_connection((host.address, host.port), timeout=s.connect_timeout)
    except OSError as exc:
        raise Unreachable(f"{where}: {exc.strerror or exc}") from None
    transport = paramiko.Transport(sock)
    transport.banner_timeout = s.banner_timeout
    if prefer:
        opts = transport.get_security_options()
        opts.key_types = [k for k in prefer if k in opts.key_types] + \
            [k for k in opts.key_types if k not in prefer]
    try:
        transport.start_client(timeout=s.connect_timeout)
        return transport.get_remote_server_key()
    except (paramiko.SSHException, EOFError, OSError) as exc:
        raise Unreachable(f"{where}: SSH handshake failed ({exc})") from None
    finally:
        transport.close()


def trust(host: Host, known_hosts: str | os.PathLike,
          confirm: Callable[[Host, str, str], bool],
          settings: SSHSettings | None = None) -> TrustResult:
    """Fetch ``host``'s key and record it in ``known_hosts`` only when ``confirm(host,
    key_type, fingerprint)`` returns True. A key that differs from a recorded one is refused
    here too: removing the old line is the operator's deliberate act."""
    known_hosts = Path(known_hosts)
    keys = load_known_hosts(known_hosts)
    name = host.known_hosts_name
    recorded = keys.lookup(name) or {}
    key = fetch_host_key(host, settings, prefer=list(recorded.keys()))
    key_type = key.get_name()
    old = recorded.get(key_type)
    if old is not None:
        if old.asbytes() == key.asbytes():
            return TrustResult(host.name, key_type, key.fingerprint, False, True)
        raise ChangedHostKey(
            f"{host.name}: HOST KEY CHANGED for {name}: it offers {key.fingerprint}, "
            f"{known_hosts} has {old.fingerprint}; not recording it (if the host was "
            f"reinstalled, remove its line from {known_hosts} first)",
            fingerprint=key.fingerprint, expected_fingerprint=old.fingerprint)
    if not confirm(host, key_type, key.fingerprint):
        return TrustResult(host.name, key_type, key.fingerprint, False, False)
    append_known_host(known_hosts, name, key)
    return TrustResult(host.name, key_type, key.fingerprint, True, False)


def append_known_host(known_hosts: Path, name: str, key: paramiko.PKey) -> None:
    """Add one line to known_hosts atomically (temp file, fsync, rename)."""
    known_hosts.parent.mkdir(parents=True, exist_ok=True)
    old = known_hosts.read_text(encoding="utf-8") if known_hosts.exists() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    tmp = known_hosts.with_name(f".{known_hosts.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(old + f"{name} {key.get_name()} {key.get_base64()}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, known_hosts)
