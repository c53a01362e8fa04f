"""Backup, mirror, verification and scheduled-job failures reach the operator over real SMTP
(loopback, STARTTLS + AUTH), sent by the part that knows, once per fault: a second identical
failure within alerts.dedupe_s is recorded but not sent, and the runner / `schedule run` do
not repeat a failure the backup stage already alerted."""
from __future__ import annotations

import os
import shutil
import time

import pytest

from pipeline.core import db
from pipeline.core.alerts import SMS_CHARS, local_host
from pipeline.core.fsutil import read_json_or_none
from pipeline.core.schedule import run_job, get_job
from pipeline.stages.backup.generations import generations
from tests.alerts_support import SMTPServer, alert_config
from tests.archive_support import add_images, write_config, write_shard
from tests.support import run_cli

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def smtp(tmp_path):
    with SMTPServer(tmp_path) as server:
        yield server


def _root(tmp_root, smtp, tmp_path, extra: str, images: int = 12, shard: bool = True):
    root = write_config(tmp_root, alert_config(tmp_root, smtp, tmp_path / "smtp_password")
                        + "[stage]\nheartbeat_s = 0.2\npoll_s = 0.1\n" + extra)
    add_images(root, images)
    if shard:
        write_shard(root, images)
    return root


def _alerts(root, kind=None):
    conn = db.open_db(root)
    try:
        rows = conn.execute("SELECT kind, text, sent, error FROM alerts ORDER BY alert_id").fetchall()
    finally:
        conn.close()
    return [r for r in rows if kind is None or r[0] == kind]


def _mails(smtp, kind):
    return [m for m in smtp.messages if f" {kind}: " in m["subject"]]


def _first_line(text: str) -> str:
    return text.splitlines()[0]


def _assert_once(root, smtp, kind, *named):
    """Two identical failures: two recorded alerts, one mail; its first line fits an SMS and
    names the thing, the host and the fix."""
    rows = _alerts(root, kind)
    assert len(rows) == 2, rows
    assert rows[0][2] == 1 and rows[1][2] == 0 and "duplicate" in rows[1][3]
    mails = _mails(smtp, kind)
    assert len(mails) == 1, [m["subject"] for m in smtp.messages]
    first = _first_line(rows[0][1])
    assert len(first) <= SMS_CHARS and f" on {local_host()}: " in first and "; fix: " in first
    for word in named:
        assert word in first, first
    assert mails[0]["body"].startswith(first)
    return rows[0][1]


# ---------------------------------------------------------------------------
# backup_failed
# ---------------------------------------------------------------------------
def test_backup_to_a_missing_volume_sends_backup_failed_once(tmp_root, smtp, tmp_path):
    volume = tmp_path / "HDD1TB"          # a plain folder where a volume should be mounted
    volume.mkdir()
    root = _root(tmp_root, smtp, tmp_path, f'[backup.targets.hdd]\nkind = "volume"\npath = "{volume}"\n')
    for _ in range(2):
        out = run_cli("run", "backup", "--once", root=root)
        assert out.returncode == 1, out.stderr[-2000:]
    text = _assert_once(root, smtp, "backup_failed", "backup hdd", str(volume), "mount")
    assert "not a mounted volume" in text
    assert list(volume.iterdir()) == []   # nothing written into the empty mount point
    # the stage says it alerted this failure itself: the runner and the schedule stay quiet
    hb = read_json_or_none(root.heartbeat_path("backup"))
    assert hb["exit"]["code"] == 1 and hb["info"]["alerted"] == ["backup_failed"]


def test_backup_to_an_unwritable_folder_sends_backup_failed(tmp_root, smtp, tmp_path):
    blocker = tmp_path / "not_a_folder"   # tests run as root: a path under a file refuses writes
    blocker.write_text("a file")
    dest = blocker / "backups"
    root = _root(tmp_root, smtp, tmp_path,
                 f'[backup.targets.usb]\nkind = "folder"\npath = "{dest}"\ncreate = true\n')
    for _ in range(2):
        assert run_cli("run", "backup", "--once", root=root).returncode == 1
    text = _assert_once(root, smtp, "backup_failed", "backup usb", str(dest), "writable")
    assert "cannot create" in text


# ---------------------------------------------------------------------------
# mirror_failed and backup_verify_failed (mirror) from the stage
# ---------------------------------------------------------------------------
needs_rsync = pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is not installed")


def _mirror_root(tmp_root, smtp, tmp_path, dest, extra=""):
    root = _root(tmp_root, smtp, tmp_path,
                 f'[backup.mirrors.ssd]\nkind = "folder"\ndest = "{dest}"\ncreate = true\n'
                 f'sources = ["images/imageprimary"]\njob = "mirror-data"\n' + extra)
    (root.primary_dir / "imageprimary_00000.tar").write_bytes(os.urandom(20000))
    return root


@needs_rsync
def test_mirror_whose_destination_refuses_writes_sends_mirror_failed(tmp_root, smtp, tmp_path):
    blocker = tmp_path / "SSD500GB"
    blocker.write_text("a file where the mirror's volume should be")
    dest = blocker / "imageselector"
    root = _mirror_root(tmp_root, smtp, tmp_path, dest)
    for _ in range(2):
        assert run_cli("run", "backup", "--once", "--job", "mirror-data", root=root).returncode == 1
    _assert_once(root, smtp, "mirror_failed", "mirror ssd", str(dest))
    assert not _alerts(root, "backup_failed") and not _alerts(root, "backup_verify_failed")


@needs_rsync
def test_mirror_that_fails_its_verification_sends_backup_verify_failed(tmp_root, smtp, tmp_path):
    dest = tmp_path / "mirror"
    # rsync told to leave the tars out: the copy "succeeds", the verification finds it short
    root = _mirror_root(tmp_root, smtp, tmp_path, dest,
                        '[backup]\nrsync_args = ["-a", "--exclude", "*.tar"]\n')
    for _ in range(2):
        assert run_cli("run", "backup", "--once", root=root).returncode == 1
    text = _assert_once(root, smtp, "backup_verify_failed", "mirror ssd", str(dest))
    assert "imageprimary_00000.tar" in text
    assert not _alerts(root, "mirror_failed")


# ---------------------------------------------------------------------------
# backup_verify_failed (snapshot): `backup verify`
# ---------------------------------------------------------------------------
def test_corrupt_snapshot_file_sends_backup_verify_failed(tmp_root, smtp, tmp_path):
    target = tmp_path / "bk"
    root = _root(tmp_root, smtp, tmp_path, f'[backup.targets.main]\nkind = "folder"\npath = "{target}"\n'
                                          f'create = true\n')
    assert run_cli("run", "backup", "--once", root=root).returncode == 0
    assert not _alerts(root, "backup_failed")
    gen = generations(target)[-1]
    victim = gen / "data/embeddings/shard_0000/clip_vitb32.faiss"
    os.chmod(victim, 0o644)
    data = bytearray(victim.read_bytes())
    data[100] ^= 0xFF                     # same size, other bytes: only the checksum sees it
    victim.write_bytes(bytes(data))
    for _ in range(2):
        out = run_cli("backup", "verify", root=root)
        assert out.returncode == 1 and "FAILED" in out.stdout
    text = _assert_once(root, smtp, "backup_verify_failed", "backup main", str(target))
    assert gen.name in text and "checksum" in text


# ---------------------------------------------------------------------------
# job_failed, and no double alert for a scheduled backup
# ---------------------------------------------------------------------------
def test_failing_scheduled_job_sends_job_failed_once(tmp_root, smtp, tmp_path):
    root = _root(tmp_root, smtp, tmp_path, '[schedule.jobs.nightly-copy]\ncron = "0 4 * * *"\n'
                                          'steps = [["run", "backup", "--once", "--target", "gone"]]\n')
    for _ in range(2):   # the command line cron and launchd run
        out = run_cli("schedule", "run", "nightly-copy", "--trigger", "cron", root=root)
        assert out.returncode == 1 and "failed" in out.stdout
    text = _assert_once(root, smtp, "job_failed", "job nightly-copy", "exit 2",
                        str(root.log_path("schedule")))
    assert "run it again: imageselector schedule run nightly-copy" in text
    conn = db.open_db(root)
    outcomes = [r[0] for r in conn.execute("SELECT outcome FROM schedule_runs WHERE job = 'nightly-copy'")]
    conn.close()
    assert outcomes == ["failed", "failed"]


def test_scheduled_backup_that_fails_alerts_backup_failed_not_job_failed(tmp_root, smtp, tmp_path):
    volume = tmp_path / "HDD1TB"
    volume.mkdir()
    root = _root(tmp_root, smtp, tmp_path, f'[backup.targets.hdd]\nkind = "volume"\npath = "{volume}"\n')
    result = run_job(root, get_job(root, "backup"), trigger="cron")
    assert result["outcome"] == "failed" and result["alerted_by_step"] == ["backup_failed"]
    assert [r[0] for r in _alerts(root)] == ["backup_failed"]
    assert len(smtp.messages) == 1


def test_a_job_that_died_is_reported_by_the_next_job(tmp_root, smtp, tmp_path):
    root = _root(tmp_root, smtp, tmp_path, '[schedule.jobs.hello]\ncron = "* * * * *"\n'
                                          'steps = [["status", "--json"]]\n', images=1)
    conn = db.open_db(root)
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)                   # a pid that no longer runs: the job's process died
    with db.transaction(conn):
        conn.execute("INSERT INTO schedule_runs(job, trigger, started_at, pid) VALUES "
                     "('mirror-tars', 'launchd', ?, ?)", (time.time() - 600, dead))
    conn.close()
    assert run_job(root, get_job(root, "hello"), trigger="cron")["outcome"] == "ok"
    rows = _alerts(root, "job_failed")
    assert len(rows) == 1 and rows[0][2] == 1
    assert "job mirror-tars" in _first_line(rows[0][1]) and "died before recording its end" in rows[0][1]


# ---------------------------------------------------------------------------
# the weekly run: the stage's backup_failed, not the runner's stage_failed, and no job_failed
# ---------------------------------------------------------------------------
def test_weekly_run_with_a_failing_backup_alerts_it_once(tmp_root, smtp, tmp_path):
    target = tmp_path / "small"
    root = _root(tmp_root, smtp, tmp_path, (
        f'[backup.targets.small]\nkind = "folder"\npath = "{target}"\ncreate = true\nmax_bytes = 1\n'
        '[runner]\ncheck_s = 0.1\nphase1 = ["selftest --once --work-s 0"]\ndriver = "selftest"\n'
        'phase2 = ["backup"]\n'
        '[schedule.jobs.weekly]\ncron = "0 21 * * 6"\nsteps = [["run", "pipeline"]]\n'),
        shard=False)                      # the fake shard is not one the search index can read
    result = run_job(root, get_job(root, "weekly"), trigger="launchd")
    assert result["outcome"] == "failed" and result["alerted_by_step"] == ["run_failed"]
    kinds = [r[0] for r in _alerts(root)]
    assert "backup_failed" in kinds and "run_failed" in kinds
    assert "stage_failed" not in kinds and "job_failed" not in kinds
    failed = _alerts(root, "backup_failed")[0][1]
    assert "backup small" in _first_line(failed) and "target full" in failed
    conn = db.open_db(root)
    steps = dict(conn.execute("SELECT step, outcome FROM runner_steps").fetchall())
    conn.close()
    assert steps["backup"] == "failed"
