"""Alerts over real SMTP (STARTTLS + AUTH on loopback) and the runner driving real stages."""
from __future__ import annotations

import json
import time

import pytest

from pipeline.core import db
from pipeline.core.alerts import Alerter
from pipeline.core.errors import UserError
from pipeline.core.fsutil import read_json_or_none
from pipeline.core.stage_observe import stage_status
from tests.alerts_support import SMTPServer, alert_config
from tests.support import run_cli, wait_for


@pytest.fixture
def smtp(tmp_path):
    with SMTPServer(tmp_path) as server:
        yield server


def _configure(root, smtp, tmp_path, runner: str = "", alerts_extra: dict | None = None,
               backed_up: bool = True) -> None:
    text = alert_config(root, smtp, tmp_path / "smtp_password", **(alerts_extra or {}))
    text += "[stage]\nheartbeat_s = 0.2\npoll_s = 0.1\n"
    text += "[runner]\ncheck_s = 0.1\n" + runner
    if backed_up:  # a configured target: the run's safe-default check is satisfied
        text += f'[backup.targets.folder]\nkind = "folder"\npath = "{tmp_path / "backups"}"\ncreate = true\n'
    root.config_path.write_text(text)


def _seed(root, n):
    conn = db.open_db(root)
    with db.transaction(conn):
        db.add_discovered_images(conn, [(i, i) for i in range(n)])
    conn.close()


def _alerts(root):
    conn = db.open_db(root)
    rows = conn.execute("SELECT kind, text, sent, error FROM alerts ORDER BY alert_id").fetchall()
    conn.close()
    return rows


def test_alert_goes_through_starttls_and_auth_and_is_recorded(tmp_root, smtp, tmp_path):
    _configure(tmp_root, smtp, tmp_path)
    alerter = Alerter(tmp_root)
    row = alerter.send("disk_low", "images/ has 3 GB free")
    assert row["sent"], row["error"]
    assert smtp.messages[0]["tls"] and "disk_low" in smtp.messages[0]["subject"]
    assert smtp.messages[0]["to"] == ["5551234567@sms.example.net"]
    # the same alert again is de-duplicated, but still recorded for the console
    again = alerter.send("disk_low", "images/ has 3 GB free")
    assert not again["sent"] and "duplicate" in again["error"]
    assert len(smtp.messages) == 1
    assert [r[0] for r in _alerts(tmp_root)] == ["disk_low", "disk_low"]


def test_rate_limit_caps_alerts_per_hour(tmp_root, smtp, tmp_path):
    _configure(tmp_root, smtp, tmp_path, alerts_extra={"max_per_hour": 2})
    alerter = Alerter(tmp_root)
    results = [alerter.send("stage_failed", f"failure {i}")["sent"] for i in range(4)]
    assert results == [True, True, False, False]
    assert len(smtp.messages) == 2


def test_failing_mail_server_never_raises(tmp_root, smtp, tmp_path):
    _configure(tmp_root, smtp, tmp_path, alerts_extra={"timeout_s": 3.0})
    (tmp_path / "smtp_password").write_text("wrong")
    row = Alerter(tmp_root).send("run_failed", "x")
    assert not row["sent"] and row["error"].startswith("SMTP")
    assert smtp.messages == []
    smtp.stop()
    row = Alerter(tmp_root).send("run_failed", "y")
    assert not row["sent"] and row["error"]


def test_world_readable_password_file_is_refused(tmp_root, smtp, tmp_path):
    _configure(tmp_root, smtp, tmp_path)
    (tmp_path / "smtp_password").chmod(0o644)
    with pytest.raises(UserError, match="readable by others"):
        Alerter(tmp_root)
    out = run_cli("run", "pipeline", root=tmp_root)
    assert out.returncode == 2 and "alerts.password_file" in out.stderr and "readable by others" in out.stderr


def test_malformed_alert_config_is_refused_with_the_key(tmp_root, smtp, tmp_path):
    _configure(tmp_root, smtp, tmp_path)
    tmp_root.config_path.write_text(tmp_root.config_path.read_text().replace(
        'to = ["5551234567@sms.example.net"]', 'to = ["not an address"]'))
    out = run_cli("run", "pipeline", root=tmp_root)
    assert out.returncode == 2 and "alerts.to" in out.stderr


def test_full_run_phase1_and_phase2_summary_and_alerts(tmp_root, smtp, tmp_path):
    _configure(tmp_root, smtp, tmp_path, runner=(
        'phase1 = ["selftest --once --work-s 0.01 --batch 5"]\ndriver = "selftest"\n'
        'phase2 = ["selftest --units 2 --work-s 0"]\n'))
    _seed(tmp_root, 40)
    out = run_cli("run", "pipeline", root=tmp_root, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    kinds = [r[0] for r in _alerts(tmp_root)]
    assert kinds[0] == "run_started" and kinds[-1] == "run_finished"
    subjects = [m["subject"] for m in smtp.messages]
    assert any("run_started" in s for s in subjects) and any("run_finished" in s for s in subjects)
    conn = db.open_db(tmp_root)
    steps = conn.execute("SELECT step, phase, outcome, exit_code FROM runner_steps ORDER BY rowid").fetchall()
    assert steps == [("selftest", 1, "ok", 0), ("purge-dead", 2, "ok", None), ("search-index", 2, "ok", None),
                     ("selftest --units 2 --work-s 0", 2, "ok", 0)]
    assert db.queue_depths(conn)["discovered"] == 0  # the driver really drained its queue
    summary = json.loads(conn.execute("SELECT value FROM sync_state WHERE key='last_pipeline_run'").fetchone()[0])
    assert "selftest: ok (exit 0)" in summary["summary"]
    assert "queues: discovered 0, downloaded 40" in summary["summary"]
    finished = next(m for m in smtp.messages if "run_finished" in m["subject"])
    assert "selftest: ok (exit 0)" in finished["body"]


def test_kill_pipeline_during_phase1_stops_cleanly_and_skips_phase2(tmp_root, smtp, tmp_path):
    _configure(tmp_root, smtp, tmp_path, runner=(
        'phase1 = ["selftest --work-s 0.05"]\ndriver = "selftest"\nphase2 = ["selftest --units 1"]\n'))
    _seed(tmp_root, 10_000)
    run_cli("start", "pipeline", root=tmp_root, check=True)
    wait_for(lambda: stage_status(tmp_root, "selftest")["state"] == "running", what="selftest running")
    runner_pid = read_json_or_none(tmp_root.heartbeat_path("pipeline"))["pid"]
    tmp_root.file("KILL_PIPELINE").write_text("")
    wait_for(lambda: stage_status(tmp_root, "pipeline")["state"] == "stopped", timeout=60, what="runner exit")
    final = read_json_or_none(tmp_root.heartbeat_path("pipeline"))
    assert final["pid"] == runner_pid and final["exit"]["code"] == 0
    assert not tmp_root.file("KILL_PIPELINE").exists() and not tmp_root.file("KILL_SELFTEST").exists()
    assert read_json_or_none(tmp_root.heartbeat_path("selftest"))["exit"]["outcome"] == "stopped"
    conn = db.open_db(tmp_root)
    steps = conn.execute("SELECT step, phase, outcome FROM runner_steps ORDER BY rowid").fetchall()
    assert steps == [("selftest", 1, "stopped"), ("selftest --units 1", 2, "skipped")]
    assert db.queue_depths(conn) == db.count_states_slowly(conn)
    assert [r[0] for r in _alerts(tmp_root)][-1] == "run_killed"
    assert any("run_killed" in m["subject"] for m in smtp.messages)


def test_a_failing_stage_does_not_stop_the_run_and_is_named(tmp_root, smtp, tmp_path):
    _configure(tmp_root, smtp, tmp_path, runner=(
        'phase1 = ["selftest --once --work-s 0 --fail-after 1"]\ndriver = "selftest"\n'
        'phase2 = ["selftest --units 1 --work-s 0"]\n'))
    _seed(tmp_root, 5)
    out = run_cli("run", "pipeline", root=tmp_root, timeout=120)
    assert out.returncode == 1
    conn = db.open_db(tmp_root)
    steps = conn.execute("SELECT step, outcome FROM runner_steps ORDER BY rowid").fetchall()
    assert steps[0] == ("selftest", "failed") and steps[-1] == ("selftest --units 1 --work-s 0", "ok")
    alerts = _alerts(tmp_root)
    failed = [a for a in alerts if a[0] == "stage_failed"]
    assert failed and "failed on purpose" in failed[0][1] and "last lines of" in failed[0][1]
    assert alerts[-1][0] == "run_failed" and "selftest: failed (exit 1)" in alerts[-1][1]


def test_kill_pipeline_present_refuses_the_run_with_an_alert(tmp_root, smtp, tmp_path):
    _configure(tmp_root, smtp, tmp_path)
    tmp_root.file("KILL_PIPELINE").write_text("")
    out = run_cli("run", "pipeline", root=tmp_root)
    assert out.returncode == 2 and "KILL_PIPELINE exists" in out.stderr
    assert [r[0] for r in _alerts(tmp_root)] == ["run_refused"]
    assert "run_refused" in smtp.messages[0]["subject"]


def test_watchdog_fires_once_per_stall(tmp_root, smtp, tmp_path):
    _configure(tmp_root, smtp, tmp_path, alerts_extra={"dedupe_s": 0.0}, runner=(
        'phase1 = ["selftest --work-s 3"]\ndriver = "selftest"\nphase2 = []\nstall_s = 1.0\n'))
    _seed(tmp_root, 100)
    run_cli("start", "pipeline", root=tmp_root, check=True)
    # the first unit takes 3 s: one stall begins after 1 s and ends when the unit completes
    wait_for(lambda: any(a[0] == "watchdog_stall" for a in _alerts(tmp_root)), timeout=30, what="stall alert")
    time.sleep(0.8)  # ~8 more watchdog checks inside the same stall
    stalls_in_first = sum(1 for a in _alerts(tmp_root) if a[0] == "watchdog_stall")
    tmp_root.file("KILL_PIPELINE").write_text("")
    wait_for(lambda: stage_status(tmp_root, "pipeline")["state"] == "stopped", timeout=60, what="runner exit")
    assert stalls_in_first == 1



def test_backup_target_that_is_not_a_mounted_volume_is_refused(tmp_root, smtp, tmp_path):
    not_a_volume = tmp_path / "HDD1TB"
    not_a_volume.mkdir()
    _configure(tmp_root, smtp, tmp_path, runner=(
        'phase1 = ["selftest --once --work-s 0"]\ndriver = "selftest"\n'
        'phase2 = ["backup", "selftest --units 1 --work-s 0"]\n'), backed_up=False)
    with open(tmp_root.config_path, "a") as fh:
        fh.write(f'[backup.targets.hdd]\nkind = "volume"\npath = "{not_a_volume}"\n')
    out = run_cli("run", "pipeline", root=tmp_root, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    conn = db.open_db(tmp_root)
    steps = dict(conn.execute("SELECT step, outcome FROM runner_steps").fetchall())
    assert steps["backup"] == "skipped"
    assert steps["selftest --units 1 --work-s 0"] == "ok"  # the rest of phase 2 still ran
    missing = [a for a in _alerts(tmp_root) if a[0] == "volume_missing"]
    assert missing and "not a mounted volume" in missing[0][1]
    assert list(not_a_volume.iterdir()) == []  # nothing was written into the empty mount point


def test_one_missing_volume_of_two_targets_is_one_alert(tmp_root, smtp, tmp_path):
    """The folder target is backed up; the unmounted volume is named once (the backup's own
    backup_failed, with the fix), not also as volume_missing from the runner's preflight."""
    not_a_volume = tmp_path / "HDD1TB"
    not_a_volume.mkdir()
    _configure(tmp_root, smtp, tmp_path, runner=(
        'phase1 = ["selftest --once --work-s 0"]\ndriver = "selftest"\nphase2 = ["backup"]\n'))
    with open(tmp_root.config_path, "a") as fh:
        fh.write(f'[backup.targets.hdd]\nkind = "volume"\npath = "{not_a_volume}"\n')
    run_cli("run", "pipeline", root=tmp_root, timeout=120)
    conn = db.open_db(tmp_root)
    steps = dict(conn.execute("SELECT step, outcome FROM runner_steps").fetchall())
    assert steps["backup"] != "skipped"
    assert any((tmp_path / "backups").iterdir())      # the mounted target got its snapshot
    about_hdd = [a[0] for a in _alerts(tmp_root)
                 if a[0] not in ("run_started", "run_finished", "run_failed") and "hdd" in a[1]]
    assert about_hdd == ["backup_failed"], _alerts(tmp_root)
    assert list(not_a_volume.iterdir()) == []


SELFTEST_RUN = ('phase1 = ["selftest --once --work-s 0.01 --batch 5"]\ndriver = "selftest"\n'
                'phase2 = []\n')


def test_production_run_without_a_backup_target_fails_and_says_so(tmp_root, smtp, tmp_path):
    assert tmp_root.profile == "production"
    _configure(tmp_root, smtp, tmp_path, runner=SELFTEST_RUN, backed_up=False)
    _seed(tmp_root, 5)
    out = run_cli("run", "pipeline", root=tmp_root, timeout=120)
    assert out.returncode == 1  # every step ran and was ok, but nothing is backed up
    conn = db.open_db(tmp_root)
    steps = conn.execute("SELECT step, outcome FROM runner_steps ORDER BY rowid").fetchall()
    assert ("selftest", "ok") in steps and db.queue_depths(conn)["discovered"] == 0
    summary = json.loads(conn.execute("SELECT value FROM sync_state WHERE key='last_pipeline_run'").fetchone()[0])
    assert ": FAILED after" in summary["summary"].splitlines()[0]
    assert "FAILURE: not backed up: no backup target is configured" in summary["summary"]
    failed = next(m for m in smtp.messages if "run_failed" in m["subject"])
    assert "not backed up" in failed["body"]


def test_production_run_with_alerts_off_fails_and_says_so(tmp_root, smtp, tmp_path):
    _configure(tmp_root, smtp, tmp_path, runner=SELFTEST_RUN)
    tmp_root.config_path.write_text(tmp_root.config_path.read_text().replace(
        "enabled = true", "enabled = false"))
    _seed(tmp_root, 5)
    out = run_cli("run", "pipeline", root=tmp_root, timeout=120)
    assert out.returncode == 1
    conn = db.open_db(tmp_root)
    summary = json.loads(conn.execute("SELECT value FROM sync_state WHERE key='last_pipeline_run'").fetchone()[0])
    assert "FAILURE: alerts off" in summary["summary"] and "not backed up" not in summary["summary"]
    assert smtp.messages == []  # off means off: recorded, never sent
    assert conn.execute("SELECT COUNT(*) FROM alerts WHERE kind = 'run_failed'").fetchone()[0] == 1
