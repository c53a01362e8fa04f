"""Keys: one command list feeds the bindings (with ids), the help screen and the palette; a
keymap in the config changes a key everywhere; a bad keymap is one clear error; a terminal
that is too small says so."""
from __future__ import annotations

import asyncio

import pytest

from console.app import ConsoleApp
from console.commands import COMMANDS, bindings
from console.screens.help_screen import HelpScreen, help_rows
from console.settings import ConsoleSettings
from console.widgets.too_small import TooSmall
from pipeline.core.errors import UserError
from tests.console_support import label_text, make_root, seed_images, wait_until

pytestmark = pytest.mark.timeout(60)


def test_every_command_is_a_binding_with_a_unique_id():
    ids = [b.id for b in bindings()]
    assert len(ids) == len(set(ids)) == len(COMMANDS)
    assert all(ids)


def test_keymap_changes_the_key_in_bindings_help_and_palette(tmp_path):
    root = make_root(tmp_path / "root", console={"keymap": {"stop": "k", "help": "f1"}})
    seed_images(root, 1)
    app = ConsoleApp(root)

    async def scenario() -> None:
        async with app.run_test(size=(140, 45)) as pilot:
            await pilot.pause(0.2)
            active = {key: b.binding.action for key, b in app.active_bindings.items()}
            assert active.get("k") == "stop_stage"
            assert "x" not in active  # the old key is gone
            # help opens on its new key and shows the new keys, from the command list
            await pilot.press("f1")
            await wait_until(pilot, lambda: isinstance(app.screen, HelpScreen))
            rows = {row[4]: row for row in help_rows(app.keymap, lambda k: k) if row[4]}
            assert rows["stop"][1] == "k" and rows["start"][1] == "s"
            assert set(rows) == {c.id for c in COMMANDS}
            await pilot.press("escape")
            # the palette lists the same commands, with the current key
            await pilot.press("ctrl+p")
            await pilot.press(*"stop stage")
            palette = app.screen

            def found():
                from textual.widgets import OptionList

                options = palette.query_one(OptionList)
                return [str(options.get_option_at_index(i).prompt)
                        for i in range(options.option_count)]

            await wait_until(pilot, lambda: any("Stop stage" in p for p in found()),
                             what="palette hit")
            assert any("(k)" in p for p in found() if "Stop stage" in p)
            await pilot.press("escape")

    asyncio.run(scenario())


@pytest.mark.parametrize("keymap, message", [
    ({"stopp": "z"}, "unknown binding id 'stopp'"),
    ({"stop": ""}, "console.keymap.stop must be a key name"),
])
def test_bad_keymap_is_one_clear_error(tmp_path, keymap, message):
    root = make_root(tmp_path / "root", console={"keymap": keymap})
    with pytest.raises(UserError, match=message):
        ConsoleSettings.from_config(root.config)


def test_bad_refresh_and_thumbnails_settings(tmp_path):
    root = make_root(tmp_path / "root", console={"thumbnails": "sixel"})
    with pytest.raises(UserError, match="console.thumbnails must be one of"):
        ConsoleSettings.from_config(root.config)
    root = make_root(tmp_path / "root2", console={"refresh_s": 0.0})
    with pytest.raises(UserError, match="console.refresh_s must be above 0"):
        ConsoleSettings.from_config(root.config)


def test_terminal_too_small_says_so_and_recovers(tmp_path):
    root = make_root(tmp_path / "root")
    app = ConsoleApp(root)

    async def scenario() -> None:
        async with app.run_test(size=(60, 18)) as pilot:
            await pilot.pause(0.1)
            notice = app.query_one(TooSmall)
            assert notice.display
            assert "terminal too small: 60x18" in label_text(notice)
            await pilot.resize_terminal(120, 40)
            await wait_until(pilot, lambda: not notice.display, what="notice hidden")

    asyncio.run(scenario())
