"""The log panel follows the selected row: a new selection points the log poller at that
stage's log (local file or over SSH) and polls it at once."""
from __future__ import annotations

from pathlib import Path
from typing import Callable


class LogFollow:
    """Mixed into ConsoleApp: selected_key and the "log" poller."""

    def _selection_changed(self, key: str | None) -> None:
        if key is None or key == self.selected_key:
            return
        self.selected_key = key
        self.panels.logs.set_title(f"Log: {key}")
        # title and lines change together: the previous stage's lines never sit under the
        # new title while the new log is read
        self.panels.logs.show_message(f"reading the log of {key}...")
        poller = self.pollers.get("log")
        if poller is not None:
            poller.generation += 1
            poller.fetch = self._log_fetch(key)
            if poller.in_flight_since is None:
                self._kick(poller)

    def _log_fetch(self, key: str | None) -> Callable:
        def fetch():
            from console.adapters import SourceMessage

            row = self.row(key) if key else None
            if row is None:
                raise SourceMessage("select a stage to see its log")
            if row.get("kind") == "ray":
                # a Ray worker's batches are shipped, retried and imported by the orchestrator
                row = next((r for r in self.local_rows if r["name"] == "orchestrate"), None)
                if row is None or not row.get("log"):
                    raise SourceMessage("a Ray worker logs in the orchestrator's log: none here")
            if row.get("host", "local") == "local":
                lines, _ = self.sources.local_log_tail(Path(row["log"]), self.settings.log_lines)
                return lines
            host = next(h for h in self.hosts if h["name"] == row["host"])
            return self.sources.host_log_tail(self.root, host, row["name"], self.settings.log_lines)
        return fetch
