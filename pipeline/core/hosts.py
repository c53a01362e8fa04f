"""The orchestrator's workers: hosts.toml (or this machine alone) and their transports."""
from __future__ import annotations

from remote.hosts import Host, HostsFile, load_hosts

IMPLICIT_LOCAL = "local"


def worker_hosts(root, implicit_local: bool = True) -> tuple[HostsFile, list[Host]]:
    """The workers to use; with no hosts.toml (or no worker in it) this machine alone."""
    from pipeline.core.errors import UserError
    from remote.errors import HostsConfigError

    try:
        hosts = load_hosts(root.hosts_path)
    except HostsConfigError as exc:
        raise UserError(str(exc)) from None
    workers = list(hosts)
    if not workers and implicit_local:
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
