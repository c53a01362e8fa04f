"""Worker hosts as sources: one poller per host in hosts.toml (added and removed as the file
changes), the placeholder row of a host that is waiting or unreachable, and finding a host
by name for the actions."""
from __future__ import annotations

from typing import Any, Callable

from console.polling import OK


class HostSources:
    """Mixed into ConsoleApp: keeps hosts and host_rows in step with the hosts poller."""

    @staticmethod
    def _host_row(host: str, state: str, text: str | None) -> dict:
        return {"name": "worker", "host": host, "state": state, "message": text}

    def _apply_hosts(self, kind: str, data: Any, text: str | None) -> None:
        if kind != OK:
            self.hosts_message = f"worker hosts: {text}"
            data = []
        else:
            self.hosts_message = None
        names = [h["name"] for h in data]
        for name in list(self.host_rows):
            if name not in names:
                self.host_rows.pop(name)
                self._remove_poller(f"host:{name}")
        self.hosts = data
        for host in data:
            source = f"host:{host['name']}"
            if source not in self.pollers:
                self.host_rows.setdefault(host["name"], [self._host_row(host["name"], "waiting", "")])
                # a worker rewrites its heartbeat every stage.heartbeat_s (2 s): reading it
                # over SSH every refresh would only repeat the same answer
                self._add_poller(source, self._host_fetch(host), every=2)
        self._render_stages()

    def _host_fetch(self, host: dict) -> Callable:
        timeout = self.settings.source_timeout_s
        return lambda: self.sources.host_stages(self.root, host, timeout)

    def _host(self, name: str) -> dict:
        return next((h for h in self.hosts if h["name"] == name), {"name": name})
