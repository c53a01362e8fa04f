"""The orchestrator's workers: hosts.toml (or this machine alone) and their transports."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from remote.hosts import Host, HostsFile, load_hosts

IMPLICIT_LOCAL = "local"


def worker_hosts(root, implicit_local: bool = True,
                 include_ray: bool = False) -> tuple[HostsFile, list[Host]]:
    """The workers to use; with no hosts.toml (or no worker in it) this machine alone.
    ``include_ray``: with the Ray workers (the orchestrator and status; nothing that uses SSH)."""
    from pipeline.core.errors import UserError
    from remote.errors import HostsConfigError

    try:
        hosts = load_hosts(root.hosts_path)
    except HostsConfigError as exc:
        raise UserError(str(exc)) from None
    workers = list(hosts) + (list(hosts.ray.values()) if include_ray else [])
    if not workers and not hosts.ray and implicit_local:
        workers = [Host(name=IMPLICIT_LOCAL, local=True)]
    return hosts, workers


def ssh_settings(root, cap_s: float | None = None):
    """remote.ssh.SSHSettings from the root's [remote] section; ``cap_s`` bounds every limit
    (a status call must answer quickly)."""
    from dataclasses import replace

    from remote.ssh import SSHSettings

    settings = SSHSettings.from_mapping(root.config.section("remote"))
    if cap_s is None:
        return settings
    return replace(settings, connect_timeout=min(settings.connect_timeout, cap_s),
                   banner_timeout=min(settings.banner_timeout, cap_s),
                   auth_timeout=min(settings.auth_timeout, cap_s),
                   channel_timeout=min(settings.channel_timeout, cap_s),
                   command_timeout=min(settings.command_timeout, cap_s),
                   io_timeout=min(settings.io_timeout, cap_s),
                   heartbeat_timeout=min(settings.heartbeat_timeout, cap_s),
                   reconnect_attempts=1, backoff_initial_s=0.0, backoff_max_s=0.0)


def make_transport(root, hosts: HostsFile, host: Host, settings=None):
    from remote.transport import transport_for

    return transport_for(host, hosts.known_hosts, settings or ssh_settings(root),
                         local_root=root.path)


@contextmanager
def connected(root, hosts: HostsFile, host: Host, settings=None) -> Iterator[tuple[object, dict]]:
    """(transport, facts) for a worker, connected: over SSH the host key is verified against
    known_hosts first (a RemoteError says what is wrong: unknown or changed key, refused
    client key, no answer); ``facts`` holds the key fingerprint and a heartbeat round trip.
    `hosts check` and `doctor` both start here."""
    from remote.ssh import SSHConnection
    from remote.transport import LocalTransport, SSHTransport

    settings = settings or ssh_settings(root)
    if host.local:
        yield LocalTransport(host, root=host.root or root.path), {}
        return
    conn = SSHConnection(host, hosts.known_hosts, settings).connect()
    with SSHTransport(host, hosts.known_hosts, settings, connection=conn) as transport:
        facts = {"fingerprint": conn.host_key_fingerprint(),
                 "heartbeat_s": round(conn.heartbeat(), 4)}
        yield transport, facts


def host_report(root, hosts: HostsFile, host: Host, settings=None) -> dict:
    """What `hosts check` shows: reachable, key fingerprint, heartbeat, health (load, memory,
    disk of the root, GPUs), and over SSH the clock offset; ``ok`` when the root exists."""
    report: dict = {"name": host.name, "local": host.local}
    with connected(root, hosts, host, settings) as (transport, facts):
        report.update(facts)
        report["health"] = transport.health()
        if not host.local:
            offset, rtt = transport.measure_clock()
            report["clock_offset_s"], report["clock_rtt_s"] = round(offset, 3), round(rtt, 3)
    report["ok"] = bool(report["health"].get("root_exists"))
    return report
