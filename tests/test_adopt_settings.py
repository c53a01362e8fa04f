"""`adopt settings`: the original's .env, qps_config.json, workers, SMTP/SMS settings, crontab
and mirrors adopted into a root, then used: the key against the local Etsy API, alerts to a
loopback SMTP server, the mirrors to their exact destinations with the original's excludes
(copying only what changed), the schedule's jobs. The original's folder never changes."""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
from pathlib import Path

import pytest

from pipeline.adopt.settings_cron import read_schedule
from pipeline.core.config import load_defaults
from pipeline.core.root import Root
from remote.hosts import load_hosts
from tests.alerts_support import SMTPServer
from tests.etsy_support import KEY, ServerProcess
from tests.original_support import ORIGINAL_QPS, tree_digest, write_original_settings
from tests.support import run_cli

pytestmark = pytest.mark.timeout(180)
needs_rsync = pytest.mark.skipif(shutil.which("rsync") is None,
                                 reason="rsync is not installed (apt-get install -y rsync)")


def _original(tmp_path, smtp_port=2525, **env):
    orig, vols, home = tmp_path / "original", tmp_path / "Volumes", tmp_path / "home"
    orig.mkdir()
    home.mkdir()
    pw = home / ".smtp_password"
    pw.write_text("s3cret")
    pw.chmod(0o600)
    cron = write_original_settings(orig, vols, pw, smtp_port, env=env or None)
    return orig, vols, cron


def _adopt(root_path, orig, *extra):
    return run_cli("adopt", "settings", orig, *extra, "--json", root=root_path)


def _inodes(folder: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, _, files in os.walk(folder):
        for f in files:
            p = Path(dirpath) / f
            st = p.stat()
            out[str(p.relative_to(folder))] = (st.st_ino, st.st_mtime_ns)
    return out


@needs_rsync
def test_settings_adopted_then_used(tmp_path):
    with SMTPServer(tmp_path) as smtp:
        orig, vols, cron = _original(tmp_path, smtp.port)
        # the original's mirrors as they stand at cutover: HDD1TB_mirror a faithful copy
        (vols / "HDD1TB" / "tars").mkdir()
        for i in range(5):
            (vols / "HDD1TB" / "tars" / f"imageall_{i:05d}.tar").write_bytes(os.urandom(4000 + i))
        shutil.copytree(vols / "HDD1TB", vols / "HDD3TB" / "HDD1TB_mirror", symlinks=True,
                        ignore=shutil.ignore_patterns(".Spotlight-V100"))
        (vols / "HDD3TB" / "HDD1TB_mirror" / ".Spotlight-V100").mkdir()
        (vols / "HDD3TB" / "HDD1TB_mirror" / ".Spotlight-V100" / "own.db").write_bytes(b"dest's own")
        (vols / "HDD3TB" / "HDD1TB_mirror" / "gone_from_source.txt").write_bytes(b"old")
        (vols / "SSD500GB" / "imageselector" / "data" / "db").mkdir(parents=True)
        (vols / "SSD500GB" / "notes.txt").write_text("on the data volume")
        before = tree_digest(orig)

        root_path = tmp_path / "root"
        proc = _adopt(root_path, orig, "--crontab", cron)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        report = json.loads(proc.stdout)
        assert report["ok"] is True
        assert tree_digest(orig) == before            # the original is only read

        root = Root(root_path)
        # the Etsy key: keystring:shared_secret, mode 600, named by etsy.key_file
        key_file = Path(root.config.get("etsy.key_file"))
        assert key_file.read_text() == KEY
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        # rates: the root's copy, which the client reads
        rates = json.loads((root.db_dir / "qps_config.json").read_text())
        assert {k: rates[k] for k in ("qps", "daily_floor", "slowdown_fraction")} == \
            {k: ORIGINAL_QPS[k] for k in ("qps", "daily_floor", "slowdown_fraction")}
        # the key works against the local Etsy API, at the original's rate
        from pipeline.etsy.client import EtsyClient

        with ServerProcess(listings=20, api_key=KEY) as server:
            used = Root(root_path, overrides={"etsy.base_url": server.base_url})
            client = EtsyClient.from_root(used)
            try:
                assert client.qps == float(ORIGINAL_QPS["qps"])
                assert client.taxonomy_nodes()
            finally:
                client.close()
        with ServerProcess(listings=20, api_key="another:key") as server:  # the key matters
            used = Root(root_path, overrides={"etsy.base_url": server.base_url,
                                              "etsy.max_attempts": 1})
            client = EtsyClient.from_root(used)
            from pipeline.etsy.errors import EtsyError

            with pytest.raises(EtsyError):
                client.taxonomy_nodes()
            client.close()

        # alerts: the original's password file, the e-mail and SMS gateway addresses
        assert root.config.get("alerts.password_file") == str(tmp_path / "home" / ".smtp_password")
        assert "s3cret" not in root.config_path.read_text()
        from pipeline.core.alerts import Alerter

        used = Root(root_path, overrides={"alerts.ca_file": str(smtp.cert)})
        result = Alerter(used).send("job_failed", "adopted settings: test alert")
        assert result.get("sent") is True, result
        assert smtp.messages and sorted(smtp.messages[-1]["to"]) == \
            ["5551234567@sms.example.net", "op@example.net"]
        assert smtp.messages[-1]["tls"]

        # workers -> hosts.toml
        hosts = load_hosts(root.hosts_path)
        assert hosts.get("imac").local
        mbp = hosts.get("macbook-pro")
        assert (mbp.address, mbp.user, mbp.checkout, mbp.python) == \
            ("mbp.local", "embed", "/Users/embed/imageselector", "/Users/embed/imageselector/venv/bin/python3")
        sl = hosts.get("sleight")
        assert sl.is_windows and sl.port == 2222
        assert sl.python == "C:\\Users\\embed\\imageselector\\venv\\Scripts\\python.exe"

        # the schedule shows the original's jobs at the original's times
        proc = run_cli("schedule", "show", "--json", root=root_path, check=True)
        jobs = {j["job"]: j for j in json.loads(proc.stdout)}
        assert jobs["pipeline-weekly"]["cron"] == "0 21 * * 6"
        assert jobs["archive"]["cron"] == "0 */12 * * *"
        assert jobs["backup"]["cron"] == "30 */6 * * *"
        assert jobs["mirror-data"]["cron"] == "15 * * * *"
        assert jobs["mirror-tars"]["cron"] == "0 4 * * *"
        assert jobs["mirror-data-nightly"]["cron"] == "0 6 * * *"

        # the mirrors run to their exact destinations with the excludes
        src_ino = _inodes(vols / "HDD1TB")
        dst = vols / "HDD3TB" / "HDD1TB_mirror"
        dst_before = _inodes(dst)
        changed = vols / "HDD1TB" / "tars" / "imageall_00004.tar"
        changed.write_bytes(b"changed since the last mirror" * 100)
        for job in ("mirror-tars", "mirror-data-nightly", "mirror-data"):
            proc = run_cli("run", "backup", "--once", "--job", job, root=root_path)
            assert proc.returncode == 0, (job, proc.stdout, proc.stderr,
                                          root.log_path("backup").read_text()[-2000:])
        after = _inodes(dst)
        unchanged = [r for r in src_ino if not r.startswith(".Spotlight") and "00004" not in r]
        assert unchanged and all(after[r] == dst_before[r] for r in unchanged)  # not copied again
        assert (dst / "tars" / "imageall_00004.tar").read_bytes() == changed.read_bytes()
        assert (dst / ".Spotlight-V100" / "own.db").read_bytes() == b"dest's own"  # excluded
        assert not (dst / "HDD1TB").exists()                      # exact: not dest/<basename>
        assert not (dst / "gone_from_source.txt").exists()        # rsync --delete, as the original
        # a destination identical to its source: no copies, no deletions (inode and mtime kept)
        settled = _inodes(dst)
        proc = run_cli("run", "backup", "--once", "--job", "mirror-tars", root=root_path)
        assert proc.returncode == 0, proc.stderr
        assert _inodes(dst) == settled
        assert (vols / "HDD500GB" / "notes.txt").read_text() == "on the data volume"
        assert (vols / "HDD500GB" / ".Spotlight-V100" / "store.db").read_bytes() == b"HDD500GB" * 10
        db_copy = vols / "SSD500GB" / "imageselector" / "data" / "db" / "etsy_data.db"
        conn = sqlite3.connect(f"file:{db_copy}?mode=ro", uri=True)
        assert conn.execute("PRAGMA quick_check").fetchone()[0] == "ok"
        conn.close()
        assert json.loads((db_copy.parent / "qps_config.json").read_text())["qps"] == 4
        assert tree_digest(orig) == before

        # again: nothing changes, nothing is reported as a conflict
        text = root.config_path.read_text()
        proc = _adopt(root_path, orig, "--crontab", cron)
        assert proc.returncode == 0, proc.stdout
        assert root.config_path.read_text() == text
        assert not [l for l in json.loads(proc.stdout)["lines"] if l["status"] == "kept"]


def test_no_shared_secret_is_one_line_and_no_key_file(tmp_path):
    orig, _, cron = _original(tmp_path, ETSY_KEYSTRING=None, ETSY_SHARED_SECRET=None,
                              ETSY_API_KEY="testkeystring1")
    proc = _adopt(tmp_path / "root", orig, "--crontab", cron)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    missing = [l for l in json.loads(proc.stdout)["lines"] if l["status"] == "missing"]
    assert len(missing) == 1 and missing[0]["part"] == "etsy"
    line = missing[0]["text"]
    assert "\n" not in line and "ETSY_API_KEY" in line and "no shared secret" in line
    assert "ETSY_SHARED_SECRET" in line
    root = Root(tmp_path / "root")
    assert not (root.path / "secrets" / "etsy_api_key").exists()
    assert str(root.config.get("etsy.key_file")) == ""
    # the rest was still adopted
    assert root.config.get("alerts.smtp_host") == "127.0.0.1"


def test_dry_run_writes_nothing_and_the_root_keeps_its_values(tmp_path):
    orig, _, cron = _original(tmp_path)
    root_path = tmp_path / "root"
    root_path.mkdir()
    (root_path / "imageselector.toml").write_text('[alerts]\nsmtp_host = "mail.example.net"\n')
    proc = _adopt(root_path, orig, "--crontab", cron, "--dry-run")
    assert proc.returncode == 0, proc.stdout
    assert (root_path / "imageselector.toml").read_text() == '[alerts]\nsmtp_host = "mail.example.net"\n'
    assert not (root_path / "hosts.toml").exists() and not (root_path / "secrets").exists()
    proc = _adopt(root_path, orig, "--crontab", cron)
    kept = [l["text"] for l in json.loads(proc.stdout)["lines"] if l["status"] == "kept"]
    assert any(t.startswith("alerts.smtp_host") for t in kept), kept
    assert Root(root_path).config.get("alerts.smtp_host") == "mail.example.net"
    assert list(root_path.glob("imageselector.toml.before-adopt-*"))


def test_volume_mirrors_from_the_seed_crontab():
    text = "\n".join([
        "0 4 * * * rsync -a --delete --exclude .Spotlight-V100/ /Volumes/HDD1TB/ /Volumes/HDD3TB/HDD1TB_mirror/",
        "0 6 * * * rsync -a --delete --exclude .Spotlight-V100/ /Volumes/SSD500GB/ /Volumes/HDD500GB/",
        "15 * * * * cd /Users/op/imageselector && rsync -a --delete data images/imageprimary /Volumes/SSD500GB/",
    ])
    defaults = load_defaults()["schedule"]["jobs"]
    found = read_schedule(text, Path("/Users/op/imageselector"), defaults)
    m = found.values["mirrors"]
    assert m["hdd1tb-to-hdd3tb"] == {
        "source": "/Volumes/HDD1TB", "dest": "/Volumes/HDD3TB/HDD1TB_mirror", "kind": "volume",
        "mount": "/Volumes/HDD3TB", "source_mount": "/Volumes/HDD1TB",
        "excludes": [".Spotlight-V100/"], "job": "mirror-tars"}
    assert m["ssd500gb-to-hdd500gb"]["dest"] == "/Volumes/HDD500GB"
    assert m["ssd500gb-to-hdd500gb"]["mount"] == "/Volumes/HDD500GB"
    # no trailing slash: rsync puts the folder itself inside the destination
    assert m["data-to-ssd500gb"]["source"] == "data"
    assert m["data-to-ssd500gb"]["dest"] == "/Volumes/SSD500GB/data"
    assert m["images-imageprimary-to-ssd500gb"]["dest"] == "/Volumes/SSD500GB/imageprimary"
    assert m["images-imageprimary-to-ssd500gb"]["job"] == "mirror-data"


@needs_rsync
def test_an_unmounted_source_volume_deletes_nothing(tmp_path):
    """An exact mirror of a volume whose mount point is empty must not empty the mirror."""
    from pipeline.core.db import connect, open_db
    from pipeline.stages.backup.mirror import mirror
    from pipeline.stages.backup.targets import load_mirrors

    src, dst = tmp_path / "not_mounted", tmp_path / "mirror"
    src.mkdir()
    dst.mkdir()
    (dst / "keep.bin").write_bytes(b"x")
    root = Root(tmp_path / "root").ensure()
    (root.path / "imageselector.toml").write_text(
        f'[backup.mirrors.vol]\nsource = "{src}"\ndest = "{dst}"\nsource_mount = "{src}"\n')
    root = Root(root.path)
    open_db(root).close()
    conn = connect(root.db_path)
    out = mirror(root, conn, load_mirrors(root)[0])
    conn.close()
    assert not out.ok and "not mounted" in out.error
    assert (dst / "keep.bin").exists()
