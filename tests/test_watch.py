"""The watch job (`imageselector watch --once`): each condition reaches a real loopback SMTP
server once, is not sent again while it lasts, and sends one "ok again" when it clears; the
open conditions live in the DB, so separate processes remember them."""
from __future__ import annotations

import json
import os
import plistlib
import time

import pytest

from pipeline.core import db
from pipeline.core.procs import process_start_time
from pipeline.core.root import Root
from pipeline.core.schedule import get_job, install, launchd_plists, load_jobs, run_job
from pipeline.watch.conditions import SMS_CHARS, sms_line
from pipeline.watch.job import watch_once
from tests.alerts_support import SMTPServer, alert_config
from tests.support import run_cli

OTHER_JOBS = ("archive", "mirror-data", "backup", "mirror-tars", "mirror-data-nightly",
              "sync-daily", "housekeeping")


@pytest.fixture
def smtp(tmp_path):
    with SMTPServer(tmp_path) as server:
        yield server


def configure(root, smtp, tmp_path, extra: str = "", watch: str = "", disk: str = "") -> Root:
    """Alerts to the loopback server; no disk floors unless a test sets one. The alerter's own
    de-duplication is off (dedupe_s = 0): only the watch's memory keeps an alert from going
    out twice."""
    text = alert_config(root, smtp, tmp_path / "smtp_password", dedupe_s=0.0)
    text += "[disk]\nmin_free_gb = 0.0\nbackup_min_free_gb = 0.0\n" + disk + "[watch]\n" + watch
    root.config_path.write_text(text + extra)
    return Root(root.path)


def watch_cli(root) -> dict:
    proc = run_cli("watch", "--once", "--json", root=root)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def first_line(message: dict) -> str:
    return message["body"].splitlines()[0]


def kinds(smtp) -> list[str]:
    return [m["subject"].split()[1].rstrip(":") for m in smtp.messages]


def backup_target(path: str = "backups") -> str:
    return f'[backup.targets.t1]\nkind = "folder"\npath = "{path}"\ncreate = true\njob = "backup"\n'


def record_good_snapshot(root) -> None:
    """What a successful backup leaves in the DB (the backup stage's own row)."""
    conn = db.open_db(root)
    now = time.time()
    with db.transaction(conn):
        conn.execute("INSERT INTO backups(target, kind, started_at, finished_at, ok, verified, path) "
                     "VALUES ('t1', 'snapshot', ?, ?, 1, 1, ?)", (now - 5, now, str(root.path / "backups")))
    conn.close()


def test_backup_overdue_is_sent_once_and_ok_again_once_across_processes(tmp_root, smtp, tmp_path):
    root = configure(tmp_root, smtp, tmp_path, backup_target())
    result = watch_cli(root)
    assert [c["kind"] for c in result["conditions"]] == ["backup_overdue"]
    assert kinds(smtp) == ["backup_overdue"]
    line = first_line(smtp.messages[0])
    host = result["host"]
    assert len(line) <= SMS_CHARS
    assert line.startswith(f"backup t1 on {host}: no good snapshot yet")
    assert "fix: imageselector run backup --once --job backup" in line

    watch_cli(root)                                      # a second process: still open, not sent
    assert len(smtp.messages) == 1

    record_good_snapshot(root)
    result = watch_cli(root)
    assert result["conditions"] == []
    assert kinds(smtp) == ["backup_overdue", "condition_cleared"]
    ok = first_line(smtp.messages[1])
    assert ok.startswith(f"ok again: backup t1 on {host} (backup_overdue since ") and len(ok) <= SMS_CHARS

    watch_cli(root)                                      # cleared stays cleared: nothing more
    assert len(smtp.messages) == 2

    # status --json says when each kind was last sent
    proc = run_cli("status", "--json", root=root)
    last = json.loads(proc.stdout)["alerts_last_sent"]
    assert set(last) >= {"backup_overdue", "condition_cleared", "disk_low", "stage_stale",
                         "schedule_missed", "run_not_started"}
    conn = db.open_db(root)
    sent_at = dict(conn.execute("SELECT kind, at FROM alerts WHERE sent = 1").fetchall())
    conn.close()
    assert last["backup_overdue"] == sent_at["backup_overdue"]
    assert last["condition_cleared"] == sent_at["condition_cleared"]
    assert last["disk_low"] is None and last["stage_stale"] is None


def test_a_check_that_cannot_look_clears_nothing(tmp_root, smtp, tmp_path):
    root = configure(tmp_root, smtp, tmp_path, backup_target())
    watch_once(root)
    assert kinds(smtp) == ["backup_overdue"]
    # the backup config no longer parses: the overdue state is unknown, so no "ok again"
    root = configure(tmp_root, smtp, tmp_path, backup_target().replace('"folder"', '"tape"'))
    result = watch_once(root)
    assert any(e.startswith("backups:") for e in result["errors"])
    assert kinds(smtp) == ["backup_overdue"]
    conn = db.open_db(root)
    assert [r[0] for r in conn.execute("SELECT kind FROM watch_conditions")] == ["backup_overdue"]
    conn.close()


def test_disk_low_when_the_floor_is_above_free_space(tmp_root, smtp, tmp_path):
    root = configure(tmp_root, smtp, tmp_path, disk="floors_gb = { \"%s\" = 1000000000.0 }\n" % tmp_root.path)
    result = watch_once(root)
    assert [c["kind"] for c in result["conditions"]] == ["disk_low"]
    assert kinds(smtp) == ["disk_low"]
    line = first_line(smtp.messages[0])
    assert line.startswith("disk /") and f" on {result['host']}: " in line and "floor 1000000.0 TB (root)" in line
    assert "fix: free space there" in line and len(line) <= SMS_CHARS
    watch_once(root)
    assert kinds(smtp) == ["disk_low"]
    root = configure(tmp_root, smtp, tmp_path)         # the floor back under the free space
    watch_once(root)
    assert kinds(smtp) == ["disk_low", "condition_cleared"]
    assert first_line(smtp.messages[1]).startswith("ok again: disk /")


def _heartbeat(path, age_s: float) -> None:
    now = time.time()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pid": os.getpid(), "proc_start": process_start_time(os.getpid()),
                                "host": "test", "state": "running", "started": now - age_s - 60,
                                "heartbeat": now - age_s}))


def test_stale_worker_heartbeats_on_this_root_and_on_a_worker_host(tmp_root, smtp, tmp_path):
    other = tmp_path / "gpu1root"
    (tmp_root.path / "hosts.toml").write_text(
        f'[workers.here]\nlocal = true\n\n[workers.gpu1]\nlocal = true\nroot = "{other}"\n')
    root = configure(tmp_root, smtp, tmp_path)
    _heartbeat(root.heartbeat_path("worker"), 3600)       # alive, heartbeat an hour old
    _heartbeat(other / "run" / "worker.json", 3600)
    result = watch_once(root)
    keys = sorted(c["key"] for c in result["conditions"])
    host = result["host"]
    assert keys == [f"stage_stale:stage worker@{host}", "stage_stale:worker@gpu1"]
    lines = sorted(first_line(m) for m in smtp.messages)
    assert kinds(smtp) == ["stage_stale", "stage_stale"]
    assert lines[0].startswith(f"stage worker on {host}: stale: alive, heartbeat ")
    assert "fix: imageselector stop worker --force, then imageselector start worker" in lines[0]
    assert lines[1].startswith("worker on gpu1: worker stale") and "fix: wake the host" in lines[1]
    assert all(len(line) <= SMS_CHARS for line in lines)
    watch_once(root)
    assert len(smtp.messages) == 2
    _heartbeat(other / "run" / "worker.json", 0)          # gpu1 woke up; this root's stays stale
    watch_once(root)
    assert len(smtp.messages) == 3
    assert first_line(smtp.messages[2]).startswith("ok again: worker on gpu1 (stage_stale since ")


def _only_jobs(extra_jobs: str) -> str:
    return "".join(f"[schedule.jobs.{j}]\nenabled = false\n" for j in OTHER_JOBS) + extra_jobs


def test_missed_job_and_weekly_run_not_started_then_ok_again(tmp_root, smtp, tmp_path):
    root = configure(tmp_root, smtp, tmp_path, _only_jobs(
        '[schedule.jobs.nightly]\ncron = "0 3 * * *"\nsteps = [["status"]]\n'))
    # the watch began eight days ago: every slot since then is judged
    first = watch_once(root, now=time.time() - 8 * 86400)
    assert first["conditions"] == [] and smtp.messages == []
    result = watch_once(root)
    assert sorted(c["kind"] for c in result["conditions"]) == ["run_not_started", "schedule_missed"]
    by_kind = {m["subject"].split()[1].rstrip(":"): first_line(m) for m in smtp.messages}
    host = result["host"]
    assert by_kind["schedule_missed"].startswith(f"job nightly on {host}: did not start at ")
    assert "fix: imageselector schedule install" in by_kind["schedule_missed"]
    assert by_kind["run_not_started"].startswith(f"weekly run on {host}: weekly run due ")
    assert "fix: imageselector start pipeline" in by_kind["run_not_started"]
    assert all(len(line) <= SMS_CHARS for line in by_kind.values())
    watch_once(root)
    assert len(smtp.messages) == 2

    # the job runs (through the schedule, as cron would run it) and the weekly run starts
    assert run_job(root, get_job(root, "nightly"), trigger="manual")["outcome"] == "ok"
    conn = db.open_db(root)
    with db.transaction(conn):
        conn.execute("INSERT INTO stage_runs(stage, host, pid, started_at) VALUES ('pipeline', 'test', 1, ?)",
                     (time.time(),))
    conn.close()
    watch_once(root)
    cleared = sorted(first_line(m) for m in smtp.messages[2:])
    assert kinds(smtp)[2:] == ["condition_cleared", "condition_cleared"]
    assert cleared[0].startswith(f"ok again: job nightly on {host} (schedule_missed since ")
    assert cleared[1].startswith(f"ok again: weekly run on {host} (run_not_started since ")
    watch_once(root)
    assert len(smtp.messages) == 4


def test_slots_before_the_watch_began_are_not_judged(tmp_root, smtp, tmp_path):
    root = configure(tmp_root, smtp, tmp_path, _only_jobs(
        '[schedule.jobs.nightly]\ncron = "0 3 * * *"\nsteps = [["status"]]\n'))
    result = watch_once(root)            # a schedule installed today has missed nothing yet
    assert result["conditions"] == [] and smtp.messages == []


def test_an_undelivered_alert_is_tried_again_and_then_sent_once(tmp_root, smtp, tmp_path):
    root = configure(tmp_root, smtp, tmp_path, backup_target())
    (tmp_path / "smtp_password").write_text("wrong")
    result = watch_once(root)
    assert [r["sent"] for r in result["report"]] == [False] and smtp.messages == []
    (tmp_path / "smtp_password").write_text(smtp.password)
    result = watch_once(root)
    assert [(r["action"], r["sent"]) for r in result["report"]] == [("alert", True)]
    watch_once(root)
    assert kinds(smtp) == ["backup_overdue"]


def test_schedule_installs_the_watch_every_15_minutes(tmp_root, tmp_path):
    job = load_jobs(tmp_root)["watch"]
    assert (job.cron, job.steps, job.enabled) == ("*/15 * * * *", [["watch", "--once"]], True)
    tab = tmp_path / "crontab"
    install(tmp_root, platform="linux", crontab_file=tab)
    lines = [line for line in tab.read_text().splitlines() if "schedule run watch " in line]
    assert len(lines) == 1 and lines[0].startswith("*/15 * * * * cd ")
    plists = {n: plistlib.loads(b) for n, b in launchd_plists(tmp_root, load_jobs(tmp_root)).items()}
    watch = next(p for n, p in plists.items() if n.endswith(".watch.plist"))
    assert watch["StartCalendarInterval"] == [{"Minute": m} for m in (0, 15, 30, 45)]
    assert watch["ProgramArguments"][-4:] == ["run", "watch", "--trigger", "launchd"]


def test_sms_line_keeps_thing_host_and_fix():
    line = sms_line("backup " + "x" * 40, "imac", "no good snapshot for " + "very " * 40 + "long",
                    "imageselector run backup --once --job backup")
    assert len(line) <= SMS_CHARS
    assert line.startswith("backup " + "x" * 40 + " on imac: no good snapshot")
    assert line.endswith("; fix: imageselector run backup --once --job backup")
