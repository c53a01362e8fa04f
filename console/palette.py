"""The command palette (ctrl+p) provider: the console's commands, from the same list as the
bindings and the help screen, each with its current key; only those that act where the
console is (console/key_scope.py), as in the footer."""
from __future__ import annotations

from functools import partial

from textual.command import DiscoveryHit, Hit, Hits, Provider

from console.commands import COMMANDS, effective_key


class ConsoleCommands(Provider):
    def _entries(self):
        from console.key_scope import acts_now

        keymap = getattr(self.app, "keymap", {})
        for command in COMMANDS:
            if acts_now(self.app, command):
                yield command, f"{command.help} ({effective_key(command, keymap)})"

    async def discover(self) -> Hits:
        for command, help_text in self._entries():
            yield DiscoveryHit(command.title, partial(self.app.run_action, command.action),
                               help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for command, help_text in self._entries():
            score = matcher.match(command.title)
            if score > 0:
                yield Hit(score, matcher.highlight(command.title),
                          partial(self.app.run_action, command.action), help=help_text)
