"""Scale-out in the console (issue 21 item 3): a Ray worker is a row of the stages table with
its own detail line (address, actors, nodes, GPUs, batches, retries, rate, draining), its keys
say it follows the orchestrator, and a re-embed in progress is one line under the queues,
gone when none runs. Fed from recorded `status --json` dicts, and once through the pollers
and the real adapters (a hosts.toml with a Ray worker and no orchestrator running)."""
from __future__ import annotations

import asyncio
import copy
import time
from pathlib import Path

import pytest

from console.adapters import Sources
from console.app import ConsoleApp
from console.widgets.stages_panel import StagesTable
from tests.console_support import FIXED_NOW, fixed_clock, load_fixture, make_root, wait_until

pytestmark = pytest.mark.timeout(60)

RAY = {"name": "rented", "host": "rented (ray ray://127.0.0.1:10001, 4 actor(s) of 1 GPU)",
       "local": False, "state": "running", "kind": "ray", "stage_state": "running", "pid": None,
       "busy": True, "batch": 17, "batches_in_flight": 7, "images_in_flight": 700,
       "images_per_s": 20.57, "imported_images": 12000, "last_error": None,
       "seen_by_orchestrator": True, "disk_low": None,
       "ray": {"actors": 4, "actors_ready": 3, "actors_starting": 0, "nodes": 2,
               "gpus_per_actor": 1.0, "cpus_per_actor": 4.0, "queued": 5, "running": 2,
               "retried": 1, "address": "ray://127.0.0.1:10001", "stopping": False}}
# an hour in, a third of the rows: two hours to go at the same rate
REEMBED = {"model": "dinov2_large", "column_id": "c1", "fingerprint": "f",
           "started": FIXED_NOW - 3600,
           "slices_done": 12, "slices_total": 40, "rows_done": 1_000_000, "rows_total": 3_000_000,
           "switched": False}


def text_of(app, selector: str) -> str:
    widget = app.query_one(selector)
    return str(widget.content) if widget.display else ""


def test_ray_worker_row_draining_and_reembed_line(tmp_path):
    root = make_root(tmp_path / "root")
    app = ConsoleApp(root, clock=fixed_clock, poll=False, image_class=None)
    refused: list[str] = []
    app.refuse = refused.append

    async def scenario() -> None:
        async with app.run_test(size=(160, 50)) as pilot:
            snap = load_fixture("status_busy.json")
            snap.update(workers=[copy.deepcopy(RAY)], reembed=[dict(REEMBED)])
            app.feed_status(snap)
            await pilot.pause()
            table = app.query_one(StagesTable)
            assert table.cell_text("rented/worker", "state") == "running"
            assert table.cell_text("rented/worker", "rate") == "1,234/min"
            assert table.cell_text("rented/worker", "current") == \
                "ray 3/4 actors · 2 running, 5 queued"
            assert table.keys()[-1] == "rented/worker"   # after the local rows and SSH hosts
            assert text_of(app, "#queues-message") == ""   # its row costs the queues nothing
            assert text_of(app, "#stages-ray") == (
                "rented ray://127.0.0.1:10001: 3/4 actors on 2 nodes, 1 GPU each · batches "
                "2 running, 5 queued · 1 retried · 1,234/min")
            since = time.strftime("%H:%M", time.localtime(FIXED_NOW - 3600))
            assert text_of(app, "#queues-reembed") == (
                f"reembed dinov2_large: 12 of 40 slices, 1,000,000 of 3,000,000 rows, "
                f"since {since}, ~2.0h left")

            # a graceful stop of the orchestrator: the actors finish their batches
            snap["workers"][0]["ray"]["stopping"] = True
            snap["reembed"] = []
            app.feed_status(snap)
            await pilot.pause()
            assert table.cell_text("rented/worker", "state") == "draining"
            assert text_of(app, "#stages-ray").endswith("· 1 retried · 1,234/min · draining")
            assert text_of(app, "#queues-reembed") == ""   # none runs: no line at all
            assert not app.query_one("#queues-reembed").display

            # its keys say where it is stopped; stop all leaves it to the orchestrator
            table.focus()
            table.move_cursor(row=table.keys().index("rented/worker"))
            await pilot.pause()
            app.action_stop_stage()
            assert refused and "Ray cluster" in refused[-1] and "orchestrator" in refused[-1]
            assert "rented/worker" not in app.stopping

            snap["workers"] = []
            app.feed_status(snap)
            await pilot.pause()
            assert "rented/worker" not in table.keys()
            assert text_of(app, "#stages-ray") == ""

    asyncio.run(scenario())


def test_pollers_show_an_unseen_ray_worker_and_no_reembed(tmp_path):
    """The real adapters: hosts.toml names a Ray cluster, no orchestrator runs, no re-embed."""
    root = make_root(tmp_path / "root")
    (root.path / "hosts.toml").write_text(
        '[workers.rented]\nkind = "ray"\naddress = "ray://127.0.0.1:10001"\nactors = 2\n'
        'num_gpus = 1\n')
    app = ConsoleApp(root, sources=Sources(), image_class=None)

    async def scenario() -> None:
        async with app.run_test(size=(160, 50)) as pilot:
            table = app.query_one(StagesTable)
            await wait_until(pilot, lambda: table.cell_text("rented/worker", "state") ==
                             "unreachable", what="the Ray worker's row")
            assert "not seen" in table.cell_text("rented/worker", "current")
            assert text_of(app, "#stages-ray") == (
                "rented (ray ray://127.0.0.1:10001, 2 actor(s) of 1 CPU, 1 GPU): "
                "not seen by the orchestrator")
            await wait_until(pilot, lambda: app.pollers["reembed"].last_kind == "ok",
                             what="the reembed poll")
            assert text_of(app, "#queues-reembed") == ""

            # its batches are the orchestrator's work: selecting it follows the orchestrator's log
            orch_log = Path(app.row("local/orchestrate")["log"])
            orch_log.parent.mkdir(parents=True, exist_ok=True)
            orch_log.write_text("rented: connected to the Ray cluster at ray://127.0.0.1:10001\n")
            table.focus()
            table.move_cursor(row=table.keys().index("rented/worker"))
            await wait_until(pilot, lambda: any("connected to the Ray cluster" in line.text for
                                                line in app.query_one("#log-view").lines),
                             what="the orchestrator's log under the Ray worker")

    asyncio.run(scenario())
