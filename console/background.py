"""Actions in daemon threads: each outcome comes back to the UI as an ActionDone message and
is written to the command log, which can be added to from any thread."""
from __future__ import annotations

import threading
from typing import Any, Callable

from textual.message import Message

from console.command_log import CommandEntry
from console.polling import OK, UNAVAILABLE, run_source


class ActionDone(Message):
    """An action thread finished (start, stop, signals, search...)."""

    def __init__(self, label: str, kind: str, data: Any, text: str | None,
                 done: Callable | None, quiet: bool):
        super().__init__()
        self.label = label
        self.kind = kind
        self.data = data
        self.text = text
        self.done = done
        self.quiet = quiet


class CommandLogged(Message):
    def __init__(self, entry: CommandEntry):
        super().__init__()
        self.entry = entry


class BackgroundActions:
    """Mixed into ConsoleApp: background() and log_command() for every action."""

    def log_command(self, text: str, level: str = "info") -> None:
        """Record a command (callable from any thread)."""
        entry = self.command_log.add(text, level)
        if threading.get_ident() == self._thread_id:
            if self._showing():
                self.panels.commands.add(entry)
        else:
            self.post_message(CommandLogged(entry))

    def refuse(self, reason: str) -> None:
        """An action that was not done: said on screen and kept in the command log."""
        self.notify(reason, severity="warning")
        self.log_command(f"refused: {reason}", "refused")

    def on_command_logged(self, message: CommandLogged) -> None:
        if self._showing():
            self.panels.commands.add(message.entry)

    def background(self, label: str, fn: Callable[[], Any], done: Callable | None = None,
                   quiet: bool = False) -> None:
        """Run an action in a daemon thread; its outcome comes back as ActionDone."""
        def work() -> None:
            kind, data, text = run_source(fn)
            self.post_message(ActionDone(label, kind, data, text, done, quiet))

        threading.Thread(target=work, name=f"action-{label}", daemon=True).start()

    async def on_action_done(self, message: ActionDone) -> None:
        if not self._showing():
            return
        if message.kind == OK:
            if not message.quiet and isinstance(message.data, str):
                self.log_command(message.data, "ok")
        elif message.kind == UNAVAILABLE:
            self.log_command(f"{message.label}: {message.text}", "info")
            self.notify(message.text or "", title=message.label, severity="warning")
        else:
            self.log_command(f"{message.label}: {message.text}", "error")
            self.notify(message.text or "", title=f"{message.label} failed", severity="error")
        if message.done is not None:
            # done(kind, data): data is the result, or the error text when it failed
            result = message.done(message.kind,
                                  message.data if message.kind == OK else message.text)
            if hasattr(result, "__await__"):
                await result
