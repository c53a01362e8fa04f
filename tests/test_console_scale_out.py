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


def _serve_heartbeat(root_path: Path, model: str, **values) -> None:
    import json
    import os

    folder = root_path / "reembed" / model
    folder.mkdir(parents=True, exist_ok=True)
    hb = {"pid": os.getpid(), "model": model, "state": "busy", "beat": 9, "fingerprint": "f",
          "slice": "s000003", "slices": 2, "error": None, "t": time.time(), **values}
    (folder / "serve.json").write_text(json.dumps(hb))


def test_reembed_servers_on_a_worker_are_rows_of_that_host(tmp_path):
    """A re-embed's servers (reembed-serve, one per model) on a worker show as rows: under
    the host for an SSH worker (host_stage_rows, the host poll; over SSH in
    test_reembed_hosts.py), under local for a `local = true` worker (the real adapter); their
    keys say what starts and stops them, stop all leaves them, the Logs panel shows their log."""
    from console.polling import OK
    from pipeline.core.hoststages import host_stage_rows

    root = make_root(tmp_path / "root")
    worker = tmp_path / "worker"
    worker.mkdir()
    (root.path / "hosts.toml").write_text(f'[workers.imac]\nlocal = true\nroot = "{worker}"\n')
    _serve_heartbeat(worker, "dinov2_large")
    _serve_heartbeat(worker, "clip_vitb32", state="ready", slice=None, slices=7)
    _serve_heartbeat(worker, "clip_vitl14", state="stopped")          # ended: no row
    rows = host_stage_rows(root, "imac", 5.0)
    serving = {r["model"]: r for r in rows if r.get("kind") == "reembed-serve"}
    assert sorted(serving) == ["clip_vitb32", "dinov2_large"]
    assert serving["dinov2_large"]["current"] == "dinov2_large: slice s000003"
    assert serving["clip_vitb32"]["current"] == "clip_vitb32: ready, 7 slices done"

    app = ConsoleApp(root, clock=fixed_clock, poll=False, image_class=None)
    refused: list[str] = []
    app.refuse = refused.append

    async def scenario() -> None:
        async with app.run_test(size=(160, 50)) as pilot:
            app.feed_status(load_fixture("status_busy.json"))
            app._apply("serving", OK, app.sources.local_serving(root, time.time()), None)
            await pilot.pause()
            table = app.query_one(StagesTable)
            key = "local/reembed/dinov2_large"
            assert key in table.keys() and "local/reembed/clip_vitb32" in table.keys()
            assert table.cell_text(key, "stage") == "reembed"
            assert table.cell_text(key, "current") == "dinov2_large: slice s000003"
            table.focus()
            table.move_cursor(row=table.keys().index(key))
            await pilot.pause()
            for action in (app.action_stop_stage, app.action_start_stage, app.action_pause_stage,
                           app.action_restart_stage, app.action_force_stop):
                refused.clear()
                action()
                assert refused and "serves a re-embed" in refused[-1] and key in refused[-1]
            assert key not in app.stopping
            # the Logs panel follows it to the servers' log in that worker's root
            (worker / "logs").mkdir(exist_ok=True)
            (worker / "logs" / "reembed-serve.log").write_text("reembed-serve dinov2_large: ready\n")
            assert app._log_fetch(key)() == ["reembed-serve dinov2_large: ready"]
            # the server stopped: its row goes
            _serve_heartbeat(worker, "dinov2_large", state="stopped")
            app._apply("serving", OK, app.sources.local_serving(root, time.time()), None)
            await pilot.pause()
            assert key not in table.keys() and "local/reembed/clip_vitb32" in table.keys()

    asyncio.run(scenario())


def test_a_reembed_server_that_stopped_beating_is_stale_and_an_old_leftover_is_gone():
    from pipeline.reembed.serve_rows import GONE_AFTER_S, serve_row

    now = 1_000_000.0
    hb = {"pid": 42, "state": "busy", "slice": "s000001", "slices": 0, "t": now - 5}
    assert serve_row("w1", "m", hb, now, 30.0)["state"] == "running"
    stale = serve_row("w1", "m", {**hb, "t": now - 31}, now, 30.0)
    assert stale["state"] == "stale" and stale["pid"] is None and "died or froze" in stale["message"]
    assert serve_row("w1", "m", {**hb, "t": now - GONE_AFTER_S - 1}, now, 30.0) is None
    failed = serve_row("w1", "m", {**hb, "state": "error", "error": "m cannot load: no weights"}, now, 30.0)
    assert failed["state"] == "crashed" and failed["message"] == "m cannot load: no weights"
    assert serve_row("w1", "m", None, now, 30.0) is None
