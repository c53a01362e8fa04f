"""The console's plain parts: formats, queue history and ETA, log search with context, the
classification of source outcomes, the command log file, refresh steps, and the adapters'
read-only DB access."""
from __future__ import annotations

import sqlite3
import threading
import time

import pytest

from pipeline.core import fmt
from console.adapters import (NotAvailable, SourceMessage, connect_read_only, read_backups,
                              read_db, runner_view, search_kwargs, worker_hosts)
from console.command_log import CommandLog
from console.history import QueueHistory
from console.logsearch import search_with_context
from console.polling import ERROR, MESSAGE, OK, UNAVAILABLE, Poller, run_source
from console.settings import next_refresh
from pipeline.core.errors import UserError
from tests.console_support import make_root, seed_images

pytestmark = pytest.mark.timeout(60)


def test_formats():
    assert fmt.duration(None) == "-" and fmt.duration(5) == "5s" and fmt.duration(600) == "10m"
    assert fmt.duration(3 * 3600) == "3.0h" and fmt.duration(3 * 86400) == "3.0d"
    assert fmt.count(1234567) == "1,234,567" and fmt.count(None) == "?"
    assert fmt.rate(0.5) == "30.0/min" and fmt.rate(2.25) == "2.2/s" and fmt.rate(38.2) == "38/s"
    assert fmt.size(48_200_000_000) == "48.2 GB" and fmt.size(512) == "512 B"
    assert fmt.shorten("abcdef", 4) == "abc…"


def test_queue_history_rates_and_eta():
    h = QueueHistory(window_s=100)
    assert h.net_rate("discovered") is None and h.eta_s("discovered") is None
    h.add(0, {"discovered": 1000, "tarred": 0})
    h.add(10, {"discovered": 900, "tarred": 50})
    h.add(10, {"discovered": 1, "tarred": 1})      # not newer: ignored
    h.add(20, {"discovered": 800, "tarred": 100})
    assert h.net_rate("discovered") == -10.0
    assert h.eta_s("discovered") == 80.0           # 800 left at 10/s
    assert h.eta_s("tarred") is None               # growing: no ETA
    assert h.series("discovered") == [1000.0, 900.0, 800.0]
    h.add(150, {"discovered": 700, "tarred": 100})  # the window drops old samples
    assert h.series("discovered") == [700.0]


def test_log_search_with_context_and_separators():
    lines = [f"l{i}" + (" hit" if i in (2, 3, 9) else "") for i in range(12)]
    found = search_with_context(lines, "HIT", context=1)
    shown = [None if x is None else (x.number, x.match) for x in found]
    assert shown == [(2, False), (3, True), (4, True), (5, False), None,
                     (9, False), (10, True), (11, False)]
    assert search_with_context(lines, "nothing", 2) == []
    assert len(search_with_context(lines, "", 2)) == 12


def test_run_source_classifies_every_outcome():
    from remote.errors import Unreachable

    def raises(exc):
        def fn():
            raise exc
        return fn

    assert run_source(lambda: 5) == (OK, 5, None)
    assert run_source(raises(NotAvailable("later")))[::2] == (UNAVAILABLE, "later")
    assert run_source(raises(SourceMessage("no DB")))[::2] == (MESSAGE, "no DB")
    assert run_source(raises(UserError("bad")))[::2] == (MESSAGE, "bad")
    assert run_source(raises(Unreachable("mbp: refused")))[::2] == (MESSAGE, "mbp: refused")
    assert run_source(raises(KeyError("x")))[::2] == (ERROR, "KeyError: 'x'")


def test_poller_never_overlaps_and_reports_overdue():
    gate = threading.Event()
    results = []
    poller = Poller("slow", lambda: gate.wait(10) and "done", timeout_s=0.05)
    assert poller.start(results.append) is True
    assert poller.start(results.append) is False     # one in flight at most
    time.sleep(0.1)
    assert poller.overdue_s(time.monotonic()) is not None
    gate.set()
    deadline = time.monotonic() + 5
    while not results and time.monotonic() < deadline:
        time.sleep(0.01)
    assert results and results[0].kind == OK and results[0].data == "done"
    poller.finished(results[0])
    assert poller.overdue_s(time.monotonic()) is None and poller.start(results.append)


def test_command_log_appends_to_its_file(tmp_path):
    log = CommandLog(tmp_path / "logs" / "console_commands.log", clock=lambda: 0.0)
    log.add("start sync")
    log.add("stop sync: KILL_SD written", "ok")
    lines = (tmp_path / "logs" / "console_commands.log").read_text().splitlines()
    assert len(lines) == 2 and lines[1].endswith("[ok] stop sync: KILL_SD written")


def test_refresh_steps():
    assert next_refresh(1.0, faster=True) == 0.5 and next_refresh(1.0, faster=False) == 2.0
    assert next_refresh(0.25, faster=True) == 0.25 and next_refresh(30.0, faster=False) == 30.0
    assert next_refresh(1.5, faster=True) == 1.0


def test_read_db_is_read_only_and_reports_states(tmp_path):
    root = make_root(tmp_path / "root")
    with pytest.raises(SourceMessage, match="no DB yet"):
        read_db(root, time.time())
    seed_images(root, 4)
    assert read_db(root, time.time())["queues"]["discovered"] == 4
    backups = read_backups(root, time.time())
    assert backups["backups"] == [] and backups["backup_jobs"] == []
    conn = connect_read_only(root.db_path, 1.0)
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        conn.execute("DELETE FROM image_status")
    conn.close()
    view = runner_view(root, time.time())
    assert set(view["pause"]) >= {"sync", "download", "orchestrate", "tar"}
    assert view["db_error"] is None


def test_locked_db_is_a_message_not_a_hang(tmp_path):
    root = make_root(tmp_path / "root")
    seed_images(root, 1)
    holder = sqlite3.connect(root.db_path, isolation_level=None)
    holder.execute("PRAGMA journal_mode=DELETE")  # rollback journal: EXCLUSIVE blocks readers
    holder.execute("BEGIN EXCLUSIVE")
    try:
        t0 = time.monotonic()
        with pytest.raises(SourceMessage, match="locked"):
            read_db(root, time.time(), timeout_s=0.2)
        assert time.monotonic() - t0 < 5
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_hosts_file_problems_are_messages(tmp_path):
    root = make_root(tmp_path / "root")
    assert worker_hosts(root) == []
    (root.path / "hosts.toml").write_text("[workers.mbp]\naddress = 'x'\n")
    with pytest.raises(SourceMessage, match="workers.mbp.user is missing"):
        worker_hosts(root)


def test_search_query_forms(tmp_path):
    image = tmp_path / "chair.jpg"
    image.write_bytes(b"x")
    assert search_kwargs("walnut table") == {"text": "walnut table"}
    assert search_kwargs("listing:42") == {"listing": 42}
    assert search_kwargs(str(image)) == {"image": str(image)}
    with pytest.raises(SourceMessage):
        search_kwargs("listing:x")
    with pytest.raises(SourceMessage, match="does not exist"):
        search_kwargs(str(tmp_path / "missing.png"))


def test_queue_history_buckets_make_a_steady_time_axis():
    h = QueueHistory(window_s=60)
    for t in range(0, 61, 2):
        h.add(1000 + t, {"q": 100 - t})
    buckets = h.buckets("q", n=6)
    assert buckets == [90.0, 80.0, 70.0, 60.0, 50.0, 40.0]  # the depth at each 10 s mark
    # a steady depth gives the same buckets poll after poll (nothing to redraw)
    steady = QueueHistory(window_s=60)
    steady.add(0, {"q": 7})
    steady.add(1, {"q": 7})
    first = steady.buckets("q", 6)
    steady.add(2, {"q": 7})
    assert steady.buckets("q", 6) == first == [7.0, 7.0]


def test_a_worker_clock_off_ours_gets_one_line_per_host():
    from console.widgets.stages_panel import clock_messages

    rows = [{"host": "local", "name": "sync"},
            {"host": "sleight", "name": "worker", "clock_offset_s": -120.4},
            {"host": "sleight", "name": "other", "clock_offset_s": -120.4},
            {"host": "mbp", "name": "worker", "clock_offset_s": 0.8},
            {"host": "imac2", "name": "worker", "clock_offset_s": 9.0}]
    assert clock_messages(rows) == [
        "sleight: clock 2m behind this machine's (set up time sync there)",
        "imac2: clock 9s ahead of this machine's (set up time sync there)"]
