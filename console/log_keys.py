"""The log panel's keys (the panel focused): / search, n / N next and previous match,
f follow on/off, w wrap, z or Enter full screen."""
from __future__ import annotations


class LogKeys:
    """Mixed into ConsoleApp: the log actions, done by the logs panel."""

    def action_log_search(self) -> None:
        self.panels.logs.open_search()

    def action_log_next_match(self) -> None:
        self._log_match(1)

    def action_log_previous_match(self) -> None:
        self._log_match(-1)

    def _log_match(self, step: int) -> None:
        reason = self.panels.logs.next_match(step)
        if reason:
            self.notify(reason, severity="warning")

    def action_log_follow(self) -> None:
        self.panels.logs.toggle_follow()

    def action_log_wrap(self) -> None:
        self.panels.logs.toggle_wrap()

    def action_log_full_screen(self) -> None:
        self.panels.logs.toggle_full_screen()
