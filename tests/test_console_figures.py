"""What the panels' figures say, and that they agree with each other and with the CLI: one
unit per rate column and no rate on a stage that does not run; a held-back queue says why and
when it moves next (also in `imageselector status`); the backups panel uses the CLI's words
and shows every column at 160 columns; CPU and memory per stage row."""
from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time

import pytest

from console.adapters import Sources, local_stages
from console.app import ConsoleApp
from console.history import QueueHistory
from console.panel_feed import running_rates
from console.widgets.backups_panel import BackupsTable, target_rows
from console.widgets.queues_panel import QueuesPanel, running_text
from console.widgets.stages_panel import StagesTable, table_row
from imageselector.commands.backup import backup_lines
from pipeline.core.db import open_db, set_image_state, transaction
from pipeline.core.stage_control import start_detached
from pipeline.status.proc_usage import ProcessUsage
from pipeline.status.queue_reasons import queue_reasons
from tests.console_support import (PYTHON, PanelApp, label_text, load_fixture, make_root,
                                   run_selftest_once, seed_images, stop_if_running, wait_until)

pytestmark = pytest.mark.timeout(120)


def move_images(root, n: int, state: str, start: int = 1) -> None:
    """Seed n images and walk them to `state` the way the stages do."""
    seed_images(root, n, start)
    keys = [(i, i) for i in range(start, start + n)]
    path = ["downloaded", "batched", "embedded"]
    conn = open_db(root)
    try:
        with transaction(conn):
            for step in path[:path.index(state) + 1]:
                extra = {"batch_id": 1} if step == "batched" else {}
                if step == "embedded":
                    for row, key in enumerate(keys):
                        set_image_state(conn, [key], step, shard=0, shard_row=row,
                                        global_row=start + row)
                    continue
                set_image_state(conn, keys, step, **extra)
    finally:
        conn.close()


def add_config(root, text: str) -> None:
    with open(root.config_path, "a") as fh:
        fh.write(text)


def row(name: str, state: str, rate=None, host: str = "local", **extra) -> dict:
    return {"name": name, "host": host, "state": state, "rate": rate, **extra}


# ---------------------------------------------------------------------------------- rates
def test_a_paused_or_stopped_stage_shows_no_rate_and_rates_are_per_minute():
    running = table_row(row("download", "running", 4.8, pid=10), False)
    assert running["rate"] == "288/min"
    for state in ("paused", "pausing", "blocked", "stopped", "stale"):
        assert table_row(row("download", state, 4.8, pid=10), False)["rate"] == "", state
    rows = [row("sync", "running", 0.5), row("download", "paused", 4.8),
            row("worker", "running", 2.0, host="mbp"), row("worker", "running", 1.0, host="pc"),
            row("orchestrate", "running", None), row("tar", "stopped", 3.0)]
    # each running stage that moves images, summed over hosts; a running one without a rate
    # is there (idle), a paused or stopped one is not
    assert running_rates(rows) == {"sync": 0.5, "orchestrate": None, "worker": 3.0}
    # a stage at work without a rate yet is not called idle beside its busy row
    assert running_text({"worker": None, "sync": 0.0}) == "running: worker no rate yet · sync idle"


def test_queue_flows_use_one_unit_and_agree_with_the_running_line():
    history = QueueHistory(600)
    t0 = 1_000_000.0
    for i in range(5):        # discovered grew, then stopped moving
        history.add(t0 + 30 * i, {"discovered": 100 + 60 * min(i, 2), "downloaded": 7 * i,
                                  "batched": 0, "embedded": 0, "tarred": 0, "failed": 0,
                                  "dead": 0})
    # the net flow is over the last minute: discovered stopped a minute ago, so no growth
    assert history.net_rate("discovered") == 0
    running = running_rates([row("download", "running", 0.25), row("sync", "paused", 2.3)])

    def show(app):
        app.query_one(QueuesPanel).show(history, running)

    async def scenario() -> tuple[dict, str]:
        app = PanelApp(QueuesPanel, show)
        async with app.run_test(size=(100, 16)) as pilot:
            await pilot.pause()
            flows = {state: label_text(app.query_one(f"#queue-{state} .queue-flow"))
                     for state in ("discovered", "downloaded", "failed")}
            return flows, label_text(app.query_one("#queues-throughput"))

    flows, line = asyncio.run(scenario())
    assert flows == {"discovered": "0/min out 15/min", "downloaded": "+14/min", "failed": "0/min"}
    assert line == "running: download 15/min"           # the paused sync is not moving
    assert not any(re.search(r"/s\b", text) for text in [*flows.values(), line])


# ---------------------------------------------------------------------------------- reasons
def test_queue_reasons_name_the_batch_the_tar_and_the_stopped_consumer():
    now = 1_795_600_000.0
    depths = {"discovered": 0, "downloaded": 38, "batched": 0, "embedded": 56, "tarred": 0}
    stages = [row("download", "running", 0.5), row("orchestrate", "running"),
              row("worker", "running", 2.0, host="mbp"), row("tar", "stopped")]
    why = queue_reasons(depths, stages, batch_size=50, per_tar=100, now=now)
    assert why["downloaded"]["reason"] == "waits for a full batch of 50: 38 of 50"
    assert why["downloaded"]["next_at"] == now + 12 / 0.5          # 12 more at the download rate
    assert why["embedded"]["reason"] == "waits for a full tar of 100: 56 of 100; tar is stopped"
    assert why["embedded"]["next_at"] == now + 44 / 2.0            # at the workers' rate
    assert "discovered" not in why and "tarred" not in why

    stopped = queue_reasons(depths, [row("download", "paused", 4.8), row("orchestrate", "running"),
                                     row("tar", "running")], 50, 100, now)
    assert stopped["downloaded"]["next_at"] is None
    assert stopped["downloaded"]["next"] == "download is not adding any"
    # the weekly run's drain asked for the last partial batch: not held back
    assert "downloaded" not in queue_reasons(depths, stages, 50, 100, now, flush=True)
    blocked = queue_reasons({"downloaded": 500}, [row("orchestrate", "blocked",
                                                      blocked_reason="disk low")], 50, 100, now)
    assert blocked["downloaded"]["reason"] == "orchestrate is blocked: disk low"


def test_a_short_batch_says_why_in_the_console_and_in_status(tmp_path):
    root = make_root(tmp_path / "root")
    add_config(root, "[orchestrate]\nbatch_size = 50\n[archive]\nimages_per_tar = 100\n")
    move_images(root, 38, "downloaded")
    move_images(root, 56, "embedded", start=1000)
    app = ConsoleApp(root)

    async def scenario() -> dict[str, str]:
        async with app.run_test(size=(160, 48)) as pilot:
            why = lambda state: label_text(app.query_one(f"#queue-{state} .queue-why"))  # noqa
            await wait_until(pilot, lambda: "orchestrate is stopped" in why("downloaded")
                             and "tar is stopped" in why("embedded"), what="the queue reasons")
            return {state: why(state) for state in ("downloaded", "embedded", "tarred")}

    shown = asyncio.run(scenario())
    assert shown["downloaded"].startswith("↳ waits for a full batch of 50: 38 of 50; "
                                          "orchestrate is stopped")
    assert shown["embedded"].startswith("↳ waits for a full tar of 100: 56 of 100; tar is stopped")
    assert shown["tarred"] == ""
    out = subprocess.run([PYTHON, "-m", "imageselector", "--root", str(root.path), "status"],
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    downloaded = next(line for line in out.stdout.splitlines() if line.strip().startswith("downloaded"))
    # the same words (the console adds the arrow; status does not judge the workers)
    assert shown["downloaded"].removeprefix("↳ ").split(" · ")[0] in downloaded
    snap = json.loads(subprocess.run(
        [PYTHON, "-m", "imageselector", "--root", str(root.path), "status", "--json"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL).stdout)
    assert snap["queue_reasons"]["embedded"]["reason"].startswith(
        "waits for a full tar of 100: 56 of 100")


# ---------------------------------------------------------------------------------- backups
def test_backups_use_the_cli_words():
    backups = load_fixture("status_busy.json")["backups"]
    for b, (key, cells) in zip(backups, target_rows(backups)):
        line = backup_lines(b)[0]
        status, _cls = cells["status"]
        for word in (cells["last_ok"], cells["size"], cells["verified"]):
            assert word in line, (key, word)
        if status != "ok":
            assert line.endswith(status), (key, status)   # OVERDUE, LAST FAILED, ...
    words = {k: c["status"][0] for k, c in target_rows(backups)}
    assert words["hdd1tb/snapshot"] == "OVERDUE"
    assert words["usb2tb/snapshot"] == "no longer configured"
    never = {**backups[0], "age_s": None, "last_success": None, "overdue": True,
             "size_bytes": None, "verified": False}
    (_, cells), = target_rows([never])
    assert cells["status"][0] == "OVERDUE" and cells["last_ok"] == "never"
    assert "never succeeded" not in json.dumps(target_rows(backups))


def test_backups_show_every_column_at_160(tmp_path):
    root = make_root(tmp_path / "root")
    app = ConsoleApp(root, poll=False, image_class=None)

    async def scenario() -> tuple[int, int]:
        async with app.run_test(size=(160, 48)) as pilot:
            app.feed_status(load_fixture("status_busy.json"))
            await pilot.pause()
            table = app.query_one(BackupsTable)
            return table.max_scroll_x, table.virtual_size.width - table.scrollable_content_region.width

    max_scroll_x, overflow = asyncio.run(scenario())
    assert max_scroll_x == 0 and overflow <= 0     # nothing behind a horizontal scroll


# ---------------------------------------------------------------------------------- cpu, memory
def test_process_usage_of_a_busy_process():
    busy = subprocess.Popen([PYTHON, "-c", "while True: pass"], stdin=subprocess.DEVNULL)
    try:
        usage = ProcessUsage()
        first = usage.sample(busy.pid)
        assert first["cpu_pct"] is None and first["rss_bytes"] > 0   # no interval yet
        time.sleep(0.3)
        assert usage.sample(busy.pid)["cpu_pct"] > 0
    finally:
        busy.kill()
        busy.wait()
    assert usage.sample(busy.pid) == {"cpu_pct": None, "rss_bytes": None}


def test_heartbeat_carries_cpu_and_memory(tmp_path):
    root = make_root(tmp_path / "root")
    run_selftest_once(root)
    hb = json.loads(root.heartbeat_path("selftest").read_text())
    assert hb["rss_bytes"] > 0
    assert hb["cpu_pct"] is not None and hb["cpu_pct"] >= 0   # the final heartbeat's interval
    # a worker host's row (pipeline.core.hoststages) carries them from its heartbeat
    from pipeline.core.stage import StageState
    from pipeline.core.stage_observe import status_row

    live = status_row("worker", "mbp", hb, StageState.RUNNING, True, hb["heartbeat"], "log")
    assert (live["cpu_pct"], live["rss_bytes"]) == (hb["cpu_pct"], hb["rss_bytes"])
    gone = status_row("worker", "mbp", hb, StageState.STOPPED, False, hb["heartbeat"], "log")
    assert (gone["cpu_pct"], gone["rss_bytes"]) == (None, None)


def test_stage_rows_show_cpu_and_memory(tmp_path):
    root = make_root(tmp_path / "root")
    seed_images(root, 50)
    start_detached(root, "selftest", ["--work-s", "0.1"])
    remote = {"name": "worker", "host": "mbp", "state": "running", "pid": 812, "rate": 4.1,
              "cpu_pct": 287.0, "rss_bytes": 5_400_000_000}   # from its heartbeat
    app = ConsoleApp(root, sources=Sources(
        worker_hosts=lambda r: [{"name": "mbp", "describe": "mbp"}],
        host_stages=lambda r, host, timeout_s: [remote]))

    async def scenario() -> dict[str, str]:
        async with app.run_test(size=(160, 48)) as pilot:
            table = app.query_one(StagesTable)
            await wait_until(pilot, lambda: table.cell_text("local/selftest", "cpu")
                             and table.cell_text("mbp/worker", "cpu"), what="the CPU cells")
            return {key: (table.cell_text(key, "cpu"), table.cell_text(key, "mem"))
                    for key in ("local/selftest", "mbp/worker", "local/sync")}

    try:
        cells = asyncio.run(scenario())
    finally:
        stop_if_running(root)
    cpu, mem = cells["local/selftest"]
    assert re.fullmatch(r"\d+%", cpu) and re.fullmatch(r"[\d.]+ (MB|GB)", mem)
    assert cells["mbp/worker"] == ("287%", "5.4 GB")
    assert cells["local/sync"] == ("", "")          # not running: nothing to show


def test_local_stages_source_samples_with_psutil(tmp_path):
    root = make_root(tmp_path / "root")
    seed_images(root, 50)
    start_detached(root, "selftest", ["--work-s", "0.1"])
    try:
        first = next(r for r in local_stages(root, time.time()) if r["name"] == "selftest")
        time.sleep(0.3)
        second = next(r for r in local_stages(root, time.time()) if r["name"] == "selftest")
    finally:
        stop_if_running(root)
    assert first["rss_bytes"] > 0 and second["rss_bytes"] > 0
    assert second["cpu_pct"] is not None


def test_sources_expose_the_new_parts():
    fields = Sources.__dataclass_fields__
    assert {"queue_reasons", "name_lock_holders", "doctor_areas", "doctor_checks"} <= set(fields)
