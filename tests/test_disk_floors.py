"""Disk floors (pipeline/core/diskfloor.py) in every stage that writes: with the floor set above
the free space (the root's config), each stage waits `blocked` with the reason "disk low: ...",
sends disk_low once to a real loopback SMTP server, writes nothing meanwhile, and goes on by
itself once the config lowers the floor (read again at each check: no restart). A backup or
mirror target below its floor fails with the reason instead of waiting."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from pipeline.core import db as dbm
from pipeline.core.diskfloor import DiskFloor, episode_key, floor_of, mount_of
from pipeline.core.root import Root
from pipeline.core.stage_runtime import run_stage
from tests.alerts_support import SMTPServer, alert_config
from tests.orchestrate_support import in_thread

HIGH = "[disk]\ncheck_s = 0.05\nmin_free_gb = 1000000000.0\nbackup_min_free_gb = 1000000000.0\n"
LOW = "[disk]\ncheck_s = 0.05\nmin_free_gb = 0.0\nbackup_min_free_gb = 0.0\n"
STAGE = "[stage]\nheartbeat_s = 0.1\npoll_s = 0.05\n"


@pytest.fixture
def smtp(tmp_path):
    with SMTPServer(tmp_path) as server:
        yield server


def configure(root, smtp, tmp_path, disk: str, extra: str = "") -> Root:
    """The whole imageselector.toml: alerts to the loopback server (the alerter's own
    de-duplication off, so only the episode keeps disk_low from going out twice)."""
    text = alert_config(root, smtp, tmp_path / "smtp_password", dedupe_s=0.0)
    root.config_path.write_text(text + STAGE + disk + extra)
    return Root(root.path).ensure()


def disk_lows(smtp) -> list[str]:
    return [m["body"] for m in smtp.messages if m["subject"].split()[1] == "disk_low:"]


def wait_for(what, pred, timeout_s: float = 30.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def heartbeat(root, stage: str) -> dict:
    try:
        return json.loads(root.heartbeat_path(stage).read_text())
    except (FileNotFoundError, ValueError):
        return {}


def wait_blocked(root, stage: str, smtp=None) -> dict:
    """The stage's heartbeat once it says blocked on disk (and, with ``smtp``, the alert came),
    then a few more heartbeats, so more floor checks happened while blocked."""
    hb = wait_for(f"{stage} blocked on disk", lambda: (lambda h: h if h.get("state") == "blocked"
                  and str(h.get("blocked_reason")).startswith("disk low: ") else None)(heartbeat(root, stage)))
    if smtp is not None:
        wait_for("the disk_low alert", lambda: disk_lows(smtp))
    first = hb["heartbeat"]
    wait_for("more heartbeats", lambda: heartbeat(root, stage).get("heartbeat", 0) > first + 0.5)
    return heartbeat(root, stage)


def run_in_thread(root, stage: str, once: bool = True, **kw):
    return in_thread(run_stage, Root(root.path), stage, once=once, install_signals=False, **kw)


def assert_reason(reason: str, path: Path) -> None:
    assert reason.startswith(f"disk low: {path} ") and " free, floor 1000000.0 TB" in reason


# ---- the module ------------------------------------------------------------------------
def test_floor_per_path_mount_or_default(tmp_root):
    root = tmp_root
    root.config_path.write_text(f'[disk]\nmin_free_gb = 3.0\nbackup_min_free_gb = 7.0\n'
                                f'floors_gb = {{ "{root.path / "images"}" = 5.0 }}\n')
    cfg = Root(root.path).config
    assert floor_of(cfg, root.download_dir).bytes == 5e9          # the nearest folder above it
    assert floor_of(cfg, root.download_dir).key == "disk.floors_gb"
    assert floor_of(cfg, root.run_dir).bytes == 3e9               # the default
    assert floor_of(cfg, root.path / "backups", backup=True).bytes == 7e9
    root.config_path.write_text(f'[disk]\nfloors_gb = {{ "{mount_of(root.path)}" = 9.0 }}\n'
                                '[backup]\nmin_free_bytes = 20000000000\n')
    cfg = Root(root.path).config
    assert floor_of(cfg, root.run_dir).bytes == 9e9                # its volume's mount point
    root.config_path.write_text('[disk]\nbackup_min_free_gb = 1.0\n[backup]\nmin_free_bytes = 20000000000\n')
    f = floor_of(Root(root.path).config, root.path / "backups", backup=True)
    assert (f.bytes, f.key) == (20_000_000_000, "backup.min_free_bytes")


def test_the_floor_is_read_again_when_the_config_changes(tmp_root):
    root = tmp_root
    root.config_path.write_text(HIGH)
    floor = DiskFloor(Root(root.path), [root.run_dir], stage="test")
    assert floor.check() is not None
    root.config_path.write_text(LOW)
    assert floor.check() is None


# ---- download ------------------------------------------------------------------------------
def test_download_blocks_alerts_once_and_resumes(tmp_root, smtp, tmp_path):
    import download_support as ds

    with ds.ImageServer() as server:
        rows = [(5, i, server.add(f"/f{i}", ds.jpeg_bytes(64, 48, seed=i))) for i in range(4)]
        root = configure(tmp_root, smtp, tmp_path, HIGH, "[download]\nidle_poll_s = 0.05\n")
        ds.seed(root, rows)
        handle = run_in_thread(root, "download")
        hb = wait_blocked(root, "download", smtp)
        assert_reason(hb["blocked_reason"], root.download_dir)
        assert hb["info"]["disk_low"]["floor"] == 10 ** 18
        assert server.requests == 0 and ds.disk_files(root) == {} and ds.temp_files(root) == []
        assert {r["state"] for r in ds.db_rows(root).values()} == {"discovered"}
        assert len(disk_lows(smtp)) == 1
        configure(root, smtp, tmp_path, LOW, "[download]\nidle_poll_s = 0.05\n")
        assert handle.result() == 0
    assert {r["state"] for r in ds.db_rows(root).values()} == {"downloaded"}
    ds.check_db_matches_disk(root)
    assert len(disk_lows(smtp)) == 1
    body = disk_lows(smtp)[0]
    assert body.startswith(f"disk {mount_of(root.download_dir)} on ") and "download waits" in body
    assert "fix: free space there, or lower disk.min_free_gb" in body.splitlines()[0]
    conn = dbm.open_db(root)
    try:   # the episode is shared with the watch (its key), and closed now that there is room
        row = conn.execute("SELECT sent_at, cleared_at FROM watch_conditions WHERE key = ?",
                           (episode_key(mount_of(root.download_dir), hb["host"].split(".")[0]),)).fetchone()
        assert row is not None and row[0] is not None and row[1] is not None
        assert conn.execute("SELECT COUNT(*) FROM alerts WHERE kind = 'disk_low'").fetchone()[0] == 1
    finally:
        conn.close()


# ---- tar and primary -------------------------------------------------------------------------
def test_tar_blocks_before_writing_a_tar_and_resumes(tmp_root, smtp, tmp_path):
    from tests.archive_support import add_images

    archive = "[archive]\nimages_per_tar = 10\nverify_sample = 3\n"
    root = configure(tmp_root, smtp, tmp_path, HIGH, archive)
    add_images(root, 20)
    handle = run_in_thread(root, "tar")
    hb = wait_blocked(root, "tar", smtp)
    assert_reason(hb["blocked_reason"], root.tars_dir)
    assert sorted(p.name for p in root.tars_dir.iterdir()) == []       # no tar, no partial
    assert len(list(root.bgremoved_dir.iterdir())) == 20
    configure(root, smtp, tmp_path, LOW, archive)
    assert handle.result() == 0
    assert sorted(p.name for p in root.tars_dir.glob("*.tar")) == ["imageall_00000.tar", "imageall_00001.tar"]
    assert len(disk_lows(smtp)) == 1 and "tar waits" in disk_lows(smtp)[0]
    assert heartbeat(root, "tar")["exit"]["outcome"] == "ok"


def test_primary_blocks_before_writing_and_resumes(tmp_root, smtp, tmp_path):
    from tests.archive_support import add_images

    root = configure(tmp_root, smtp, tmp_path, HIGH)
    add_images(root, 9)
    handle = run_in_thread(root, "primary")
    hb = wait_blocked(root, "primary", smtp)
    assert_reason(hb["blocked_reason"], root.primary_dir)
    assert list(root.primary_dir.iterdir()) == []
    configure(root, smtp, tmp_path, LOW)
    assert handle.result() == 0
    assert [p.name for p in root.primary_dir.glob("*.tar")] == ["imageprimary_00000.tar"]
    assert len(disk_lows(smtp)) == 1 and "primary waits" in disk_lows(smtp)[0]


# ---- orchestrate and worker --------------------------------------------------------------------
def _orch_toml() -> str:
    from tests.orchestrate_support import ROOT_TOML

    toml = ROOT_TOML.format(batch_size=4, lease_s=600.0, poll_s=0.1, start_retry_s=2.0,
                            start_workers="false", extra="")
    return toml.replace("[stage]\nheartbeat_s = 0.5\npoll_s = 0.1\nstale_after_s = 10.0\n", "")


def _orch_root(tmp_root, smtp, tmp_path, disk: str, worker_root: Path) -> Root:
    from tests.orchestrate_support import local_hosts, write_hosts

    root = configure(tmp_root, smtp, tmp_path, disk, _orch_toml())
    write_hosts(root, local_hosts(worker_root))
    dbm.open_db(root).close()
    return root


def test_orchestrate_blocks_before_a_batch_and_resumes(tmp_root, smtp, tmp_path):
    from tests.orchestrate_support import StubWorker, add_downloaded, batches, states

    worker_root = tmp_path / "worker_root"
    Root(worker_root).ensure().config_path.write_text(LOW)
    root = _orch_root(tmp_root, smtp, tmp_path, HIGH, worker_root)
    add_downloaded(root, 8)
    worker = StubWorker(worker_root).start()
    try:
        handle = run_in_thread(root, "orchestrate")
        hb = wait_blocked(root, "orchestrate", smtp)
        assert hb["blocked_reason"].startswith(f"disk low: {root.run_dir / 'orchestrate'} ")
        assert batches(root) == [] and states(root).get("downloaded") == 8
        assert not list((worker_root / "worker" / "inbox").glob("*"))
        configure(root, smtp, tmp_path, LOW, _orch_toml())
        assert handle.result() == 0
    finally:
        worker.stop()
    assert states(root).get("embedded") == 8
    assert len(disk_lows(smtp)) == 1 and "orchestrate waits" in disk_lows(smtp)[0]


def test_worker_blocks_in_its_heartbeat_and_the_orchestrator_alerts(tmp_root, smtp, tmp_path, monkeypatch):
    """The worker has no DB: its heartbeat says blocked (and why); the orchestrator, which
    polls it, sends disk_low once and ships it nothing more; the status and the watch carry it."""
    from pipeline.stages.orchestrate.status import workers_status
    from pipeline.stages.worker import entry as worker_entry
    from pipeline.watch.job import watch_once
    from tests.orchestrate_support import StubEmbedder, add_downloaded, states

    monkeypatch.setattr(worker_entry, "build_embedder", lambda root, batch_size=None: StubEmbedder())
    worker_root = tmp_path / "worker_root"
    wr = Root(worker_root).ensure()
    wr.config_path.write_text(STAGE + HIGH)
    root = _orch_root(tmp_root, smtp, tmp_path, LOW, worker_root)
    add_downloaded(root, 8)
    worker = run_in_thread(wr, "worker", once=False)
    wait_for("the worker running", lambda: heartbeat(wr, "worker").get("state") == "running")
    orch = run_in_thread(root, "orchestrate")
    wait_for("a batch in the worker's inbox", lambda: list((worker_root / "worker" / "inbox").glob("*")))
    hb = wait_blocked(wr, "worker")
    assert_reason(hb["blocked_reason"], worker_root / "worker" / "inbox")
    assert not list((worker_root / "worker" / "outbox").glob("*"))     # nothing half-written
    wait_for("the orchestrator's disk_low for the worker", lambda: disk_lows(smtp))
    assert "worker here waits" in disk_lows(smtp)[0]
    views = wait_for("the worker's block in the status", lambda: [
        w for w in workers_status(Root(root.path), look=False) if w.get("disk_low")])
    assert views[0]["disk_low"]["path"] == str(worker_root / "worker" / "inbox")
    result = watch_once(Root(root.path))     # the watch sees it too; the episode is alerted already
    assert "disk_low" in [c["kind"] for c in result["conditions"]]
    assert len(disk_lows(smtp)) == 1
    wr.config_path.write_text(STAGE + LOW)
    wait_for("every image embedded", lambda: states(root).get("embedded") == 8)
    from pipeline.core.stage import spec

    wr.file(spec("worker").kill_file).touch()
    assert orch.result() == 0 and worker.result() == 0
    assert len(disk_lows(smtp)) == 1


# ---- backup and mirrors: fail the target, never wait ----------------------------------------------
def test_backup_below_its_floor_fails_the_target_and_alerts_once(tmp_root, smtp, tmp_path):
    dest = tmp_path / "backups"
    targets = (f'[backup.targets.t1]\nkind = "folder"\npath = "{dest}"\ncreate = true\n'
               f'[backup.mirrors.m1]\nkind = "folder"\ndest = "{tmp_path / "mirror"}"\ncreate = true\n'
               'sources = ["images/imageprimary"]\n')
    disk_high = f'[disk]\ncheck_s = 0.05\nfloors_gb = {{ "{dest}" = 1000000000.0, "{tmp_path / "mirror"}" = 1000000000.0 }}\n'
    root = configure(tmp_root, smtp, tmp_path, disk_high, targets)
    assert run_stage(Root(root.path), "backup", once=True, install_signals=False) == 1
    conn = dbm.open_db(root)
    try:
        rows = conn.execute("SELECT target, ok, error FROM backups ORDER BY target").fetchall()
    finally:
        conn.close()
    assert [(r[0], r[1]) for r in rows] == [("m1", 0), ("t1", 0)]
    assert rows[1][2].startswith(f"backup target t1: disk low: {dest} ")
    assert rows[0][2].startswith(f"mirror m1: disk low: {tmp_path / 'mirror'} ")
    assert not list(dest.glob("data_*")) and not (tmp_path / "mirror" / "images").exists()
    assert len(disk_lows(smtp)) == 1                 # one volume, one episode
    # one fault, one alert: no backup_failed / mirror_failed beside the disk_low
    assert not [m for m in smtp.messages if "backup_failed" in m["subject"] or "mirror_failed" in m["subject"]]
    assert "backup fails" in disk_lows(smtp)[0]
    # a second scheduled run in the same episode: the targets fail again, disk_low is not resent
    assert run_stage(Root(root.path), "backup", once=True, install_signals=False) == 1
    assert len(disk_lows(smtp)) == 1
    root = configure(root, smtp, tmp_path, LOW, targets)
    assert run_stage(Root(root.path), "backup", once=True, install_signals=False) == 0
    assert len(list(dest.glob("data_*"))) == 1
    assert len(disk_lows(smtp)) == 1
