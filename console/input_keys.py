"""Keys typed into a text box (the search box, the log search, a table filter, the command
palette) are applied in the order they were typed, and Escape leaves any text box.

Why: Textual applies a printable key in the box's own message queue, but a key the box binds
(backspace, delete, arrows, enter) only after the key event has bubbled through every parent's
queue up to the app. A fast burst (typing, ten backspaces, typing: a paste, tmux send-keys, a
quick typist over SSH) then had the later letters inserted before the backspaces ran, so the
box ended up with the wrong text. Here the app applies each key for a focused text box at
once, in its own queue, which takes the keys in the order the terminal sent them."""
from __future__ import annotations

from textual import events
from textual.widgets import Input


class InputKeys:
    """Mixed into ConsoleApp (before App): on_event for keys while a text box has focus."""

    async def on_event(self, event) -> None:
        if isinstance(event, events.Key) and isinstance(self.focused, Input) \
                and await self._input_key(self.focused, event):
            return
        await super().on_event(event)

    async def _input_key(self, field: Input, event: events.Key) -> bool:
        """True when the key was applied here; False leaves it to Textual's usual path."""
        # Textual internals (8.x): _check_bindings walks the same binding chain a bubbled key
        # reaches (priority bindings first, then the box's own, its parents', the screen's
        # and the app's), and Input._on_key is where a box inserts a printable key.
        if await self._check_bindings(event.key, priority=True):
            return True
        if event.is_printable:
            await field._on_key(event)
            return True
        if await self._check_bindings(event.key):
            return True
        if event.key == "escape" and not self.screen.is_modal:
            self.leave_input(field)
            return True
        return False

    def leave_input(self, field: Input) -> None:
        """Escape in a text box of the main screen: the box (or its panel) closes it if it is
        a transient one (log search, table filter); else the focus goes back to where the
        keys act (focus_home)."""
        owner = field
        while owner is not None and not hasattr(owner, "input_left"):
            owner = owner.parent
        if owner is not None and owner.input_left(field):
            return
        self.focus_home()
