"""Worker hosts: a host that refuses or never answers shows as unreachable while the other
panels keep refreshing; a malformed hosts.toml is a message in place; deploy needs YES:GIT
typed exactly; a host that refuses us says why in its row."""
from __future__ import annotations

import asyncio
import threading

import pytest

from console.adapters import Sources
from console.app import ConsoleApp
from console.screens.typed_confirm_screen import TypedConfirmScreen
from console.widgets.stages_panel import StagesTable
from remote.errors import Unreachable
from tests.console_support import label_text, make_root, seed_images, wait_until

pytestmark = pytest.mark.timeout(90)

HOSTS = [{"name": "mbp", "describe": "mbp (is@10.0.0.2:22, posix)"},
         {"name": "deadhost", "describe": "deadhost"},
         {"name": "hanghost", "describe": "hanghost"}]


def depth(app, state: str) -> str:
    return label_text(app.query_one(f"#queue-{state} .queue-depth"))


def test_dead_and_hung_hosts_do_not_block_the_rest(tmp_path):
    root = make_root(tmp_path / "root", console={"source_timeout_s": 0.6})
    seed_images(root, 2)
    release = threading.Event()
    calls = {"hanghost": 0}

    def host_stages(root_, host, timeout_s):
        if host["name"] == "deadhost":
            raise Unreachable("deadhost (10.0.0.9:22): connection refused")
        if host["name"] == "hanghost":
            calls["hanghost"] += 1
            release.wait(60)  # never answers while the test runs
            return []
        return [{"name": "worker", "state": "running", "pid": 77, "uptime_s": 60.0,
                 "heartbeat_age_s": 1.0, "rate": 2.5, "current": "batch 3"}]

    sources = Sources(worker_hosts=lambda r: HOSTS, host_stages=host_stages)
    app = ConsoleApp(root, sources=sources)

    async def scenario() -> None:
        async with app.run_test(size=(140, 45)) as pilot:
            table = app.query_one(StagesTable)
            await wait_until(pilot, lambda: table.cell_text("mbp/worker", "state") == "running")
            await wait_until(pilot, lambda: table.cell_text("deadhost/worker", "state") ==
                             "unreachable", what="deadhost unreachable")
            assert "connection refused" in table.cell_text("deadhost/worker", "current")
            await wait_until(pilot, lambda: table.cell_text("hanghost/worker", "state") ==
                             "unreachable", what="hanghost unreachable")
            assert "no answer" in table.cell_text("hanghost/worker", "current")
            assert table.cell_class("hanghost/worker", "state") == "state--unreachable"
            # local first, then each host in hosts.toml order
            keys = table.keys()
            assert keys.index("local/sync") < keys.index("mbp/worker") < \
                keys.index("deadhost/worker") < keys.index("hanghost/worker")
            # the DB panel keeps refreshing while hanghost hangs
            seed_images(root, 9, start=100)
            await wait_until(pilot, lambda: depth(app, "discovered") == "11", what="queues live")
            assert calls["hanghost"] == 1  # polls of one source never pile up
            assert "hanghost" not in app.problems and "host:hanghost" in app.problems

    try:
        asyncio.run(scenario())
    finally:
        release.set()


def test_a_refused_host_says_why_and_deploy_needs_yes_git(tmp_path):
    root = make_root(tmp_path / "root")
    (root.path / "hosts.toml").write_text(
        '[workers.mbp]\naddress = "10.0.0.2"\nuser = "is"\nkey_file = "id_ed25519"\n'
        'root = "/home/is/root"\npython = "/home/is/venv/bin/python"\n')
    deployed = []
    app = ConsoleApp(root)
    app.sources.deploy = lambda r, host: deployed.append(host["name"]) or "git pull: up to date"

    async def scenario() -> None:
        async with app.run_test(size=(140, 45)) as pilot:
            table = app.query_one(StagesTable)
            # the real adapters: the key file is missing, so nothing is even dialled
            await wait_until(pilot, lambda: table.cell_text("mbp/worker", "state") ==
                             "unreachable")
            assert table.cell_text("mbp/worker", "current").startswith("mbp: key file ")
            assert "id_ed25519 does not exist" in app.host_rows["mbp"][0]["message"]
            table.focus()
            await pilot.press("ctrl+end")
            assert table.selected_key() == "mbp/worker"
            await pilot.press("s")
            await wait_until(pilot, lambda: any(e.text.startswith("start worker: ") and
                                                "does not exist" in e.text
                                                for e in app.command_log.entries))
            # deploy: a wrong phrase does nothing, YES:GIT deploys
            await pilot.press("D")
            await wait_until(pilot, lambda: isinstance(app.screen, TypedConfirmScreen))
            await pilot.press(*"yes", "enter")
            await pilot.pause(0.2)
            assert isinstance(app.screen, TypedConfirmScreen) and deployed == []
            assert "not YES:GIT" in label_text(app.screen.query_one("#typed-error"))
            await pilot.press(*"YES:GIT", "enter")
            await wait_until(pilot, lambda: deployed == ["mbp"], what="deploy called")
            await wait_until(pilot, lambda: any("git pull: up to date" in e.text
                                                for e in app.command_log.entries))

    asyncio.run(scenario())


def test_malformed_hosts_toml_is_a_message_in_place(tmp_path):
    root = make_root(tmp_path / "root")
    (root.path / "hosts.toml").write_text("[workers.mbp\naddress = ")
    app = ConsoleApp(root)

    async def scenario() -> None:
        async with app.run_test(size=(140, 45)) as pilot:
            message = app.query_one("#stages-message")
            await wait_until(pilot, lambda: "hosts.toml" in label_text(message))
            assert "not valid TOML" in label_text(message)
            table = app.query_one(StagesTable)
            assert "local/sync" in table.keys()

    asyncio.run(scenario())
