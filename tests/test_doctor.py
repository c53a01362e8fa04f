"""`imageselector doctor`: a sandbox root passes; a production root with everything in place
(the local Etsy API, loopback SMTP, a backup folder, the schedule in a crontab, a Hugging Face
cache laid out like `hf download` leaves it) passes; each problem planted on it alone is named,
with its fix, and makes the doctor exit 1; real sshd workers with a missing model and with a
changed host key."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from imageselector.cli import main
from pipeline.core.fsutil import atomic_write_bytes
from pipeline.core.root import Root
from pipeline.doctor.check import FAILURE, exit_code
from pipeline.doctor.runner import area_names, run_checks
from pipeline.models.registry import MODELS
from pipeline.sandbox import SANDBOX_ETSY_KEY, init_sandbox
from pipeline.sandbox.etsy_api import LocalEtsyAPI
from tests.alerts_support import SMTPServer, alert_config
from tests.sshd_support import SSHServer, find_sshd

pytestmark = pytest.mark.timeout(300)

KEY = "doctorkey1:doctorsecret2"
QPD = 5000
REPO = Path(__file__).resolve().parent.parent


# ---- the parts a production root needs -------------------------------------------------
@pytest.fixture(scope="module")
def api():
    with LocalEtsyAPI(listings=20, port=0, api_key=KEY, qpd=QPD) as server:
        yield server


@pytest.fixture(scope="module")
def smtp(tmp_path_factory):
    with SMTPServer(tmp_path_factory.mktemp("smtp")) as server:
        yield server


@pytest.fixture(scope="module")
def cron_daemon(tmp_path_factory):
    """A process named cron (a copy of sleep): what the doctor looks for on Linux to know
    the crontab's entries fire. Stopped by its pid."""
    exe = tmp_path_factory.mktemp("crond") / "cron"
    shutil.copy(shutil.which("sleep"), exe)
    proc = subprocess.Popen([str(exe), "3600"], stdin=subprocess.DEVNULL)
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def crontab_program(folder: Path) -> Path:
    """A `crontab` that keeps the table in a file (-l prints it, - replaces it)."""
    table = folder / "crontab.txt"
    prog = folder / "crontab"
    prog.write_text(f"""#!/bin/sh
case "$1" in
  -l) if [ -f '{table}' ]; then cat '{table}'; else echo "no crontab for $(id -un)" >&2; exit 1; fi ;;
  -) cat > '{table}.tmp' && mv '{table}.tmp' '{table}' ;;
  *) exit 2 ;;
esac
""")
    prog.chmod(0o755)
    return prog


def hf_cache(folder: Path, missing: tuple[str, ...] = ()) -> Path:
    """Every model's files where `hf download` leaves them (refs/main -> snapshots/REV/)."""
    for spec in MODELS:
        if spec.name in missing:
            continue
        repo = folder / ("models--" + spec.hf_repo.replace("/", "--"))
        rev = hashlib.sha1(spec.hf_repo.encode()).hexdigest()
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(rev)
        snap = repo / "snapshots" / rev
        snap.mkdir(parents=True, exist_ok=True)
        for group in spec.weight_files:
            (snap / group[0]).write_bytes(b"weights of " + spec.name.encode())
    return folder


def worker_config(folder: Path, missing: tuple[str, ...] = ()) -> str:
    """A production worker's models: the cache above and a custom background model file."""
    bg = folder / "u2net" / "furniture.onnx"
    bg.parent.mkdir(parents=True, exist_ok=True)
    bg.write_bytes(b"onnx")
    return (f'[models]\nhf_cache_dir = "{hf_cache(folder / "hf", missing)}"\n'
            f'bg_model = "u2net_custom"\nbg_model_path = "{bg}"\n'
            f'[disk]\nmin_free_gb = 0.001\nbackup_min_free_gb = 0.001\n')


def production_root(tmp_path: Path, api, smtp) -> Root:
    root = Root(tmp_path / "prod").ensure()
    key_file = tmp_path / "secrets" / "etsy.key"
    key_file.parent.mkdir(mode=0o700, exist_ok=True)
    atomic_write_bytes(key_file, KEY.encode(), mode=0o600)
    crontab = crontab_program(tmp_path)
    text = ('[root]\nprofile = "production"\n'
            f'[etsy]\nbase_url = "{api.base_url}"\nkey_file = "{key_file}"\n'
            f'[schedule]\ncrontab = "{crontab}"\n'
            f'[backup.targets.hdd]\nkind = "folder"\npath = "{tmp_path / "backups"}"\ncreate = true\n'
            + worker_config(tmp_path)
            + alert_config(root, smtp, tmp_path / "secrets" / "smtp.pw", timeout_s=3.0))
    (root.path / "imageselector.toml").write_text(text)
    root = Root(root.path).ensure()
    from pipeline.core.db import open_db
    from pipeline.core.schedule import install

    open_db(root).close()
    install(root, platform="linux")
    return root


def doctor_cli(capsys, root: Root, *args: str) -> tuple[int, list[dict]]:
    code = main(["--root", str(root.path), "doctor", "--json", *args])
    return code, json.loads(capsys.readouterr().out)


def named(checks, area: str, name: str) -> dict:
    rows = [c if isinstance(c, dict) else c.as_json() for c in checks]
    found = [c for c in rows if c["area"] == area and c["name"] == name]
    assert found, f"no check {area}/{name} in {[(c['area'], c['name']) for c in rows]}"
    return found[0]


def failures(checks) -> list[dict]:
    rows = [c if isinstance(c, dict) else c.as_json() for c in checks]
    return [c for c in rows if c["severity"] == FAILURE]


# ---- a sandbox root --------------------------------------------------------------------
def test_sandbox_root_has_only_the_sandbox_warnings(tmp_path, capsys):
    with LocalEtsyAPI(listings=20, port=0, api_key=SANDBOX_ETSY_KEY, qpd=QPD) as sandbox_api:
        root = init_sandbox(tmp_path / "sb", sandbox_api.port)
        code, checks = doctor_cli(capsys, root)
    assert code == 0, failures(checks)
    assert not failures(checks)
    accepted = named(checks, "etsy", "key accepted")
    assert accepted["ok"] and f"of {QPD:,} requests left today" in accepted["text"]
    assert named(checks, "volumes", "target sandbox")["ok"]
    assert named(checks, "workers", "local models")["ok"]
    # what a sandbox lacks on purpose: alerts, and (here) an installed schedule
    warned = {(c["area"], c["name"]) for c in checks if not c["ok"]}
    assert ("safety", "alerts off") in warned
    assert warned <= {("safety", "alerts off"), ("schedule", "crontab"),
                      ("schedule", "installed"), ("schedule", "loaded")}, warned
    assert {"area", "name", "ok", "severity", "text", "fix"} == set(checks[0])


def test_the_backup_stage_registers_the_volume_checks():
    assert {"etsy", "workers", "volumes", "alerts", "schedule", "safety"} <= set(area_names())


# ---- a production root -----------------------------------------------------------------
def test_production_root_with_everything_in_place_passes(tmp_path, capsys, api, smtp, cron_daemon):
    root = production_root(tmp_path, api, smtp)
    code, checks = doctor_cli(capsys, root, "--send-test-alert")
    assert code == 0, failures(checks)
    assert [c for c in checks if c["severity"] == "warning"] == []
    for model in MODELS:
        assert named(checks, "workers", f"local model {model.name}")["ok"]
    weekly = named(checks, "schedule", "pipeline-weekly")
    assert weekly["ok"] and "next" in weekly["text"]
    assert named(checks, "schedule", "loaded")["ok"] and str(cron_daemon) in \
        named(checks, "schedule", "loaded")["text"]
    assert named(checks, "alerts", "smtp login")["ok"]
    assert named(checks, "alerts", "test alert")["ok"]
    assert any("test_alert" in m["subject"] for m in smtp.messages)
    assert named(checks, "volumes", "target hdd space")["ok"]


def _plant_no_key(root, tmp_path):
    (tmp_path / "secrets" / "etsy.key").unlink()
    return "etsy", "key", "etsy.key_file"


def _plant_key_without_secret(root, tmp_path):
    atomic_write_bytes(tmp_path / "secrets" / "etsy.key", b"doctorkey1", mode=0o600)
    return "etsy", "key form", "shared secret"


def _plant_refused_key(root, tmp_path):
    atomic_write_bytes(tmp_path / "secrets" / "etsy.key", b"otherkey:othersecret", mode=0o600)
    return "etsy", "key accepted", "etsy.com/developers"


def _plant_missing_volume(root, tmp_path):
    (tmp_path / "HDD1TB").mkdir()       # an empty mount point: the volume is not mounted
    with open(root.config_path, "a") as f:
        f.write(f'[backup.targets.hdd1tb]\nkind = "volume"\npath = "{tmp_path / "HDD1TB"}"\n')
    return "volumes", "target hdd1tb", "mount the volume"


def _plant_refused_login(root, tmp_path):
    atomic_write_bytes(tmp_path / "secrets" / "smtp.pw", b"wrong password", mode=0o600)
    return "alerts", "smtp login", "password"


def _plant_no_schedule(root, tmp_path):
    subprocess.run([str(tmp_path / "crontab"), "-"], input=b"# someone else's table\n", check=True)
    return "schedule", "installed", "schedule install"


@pytest.mark.parametrize("plant", [_plant_no_key, _plant_key_without_secret, _plant_refused_key,
                                   _plant_missing_volume, _plant_refused_login, _plant_no_schedule],
                         ids=lambda f: f.__name__[len("_plant_"):])
def test_each_planted_problem_is_named_with_its_fix(tmp_path, capsys, api, smtp, cron_daemon, plant):
    root = production_root(tmp_path, api, smtp)
    area, name, fix_words = plant(root, tmp_path)
    code, checks = doctor_cli(capsys, Root(root.path))
    assert code == 1
    assert failures(checks) == [named(checks, area, name)], failures(checks)
    found = named(checks, area, name)
    assert fix_words in found["fix"] and found["text"]
    if plant is not _plant_no_key:
        return
    # the plain output: the problem's line and its fix
    assert main(["--root", str(root.path), "doctor"]) == 1
    out = capsys.readouterr().out
    assert f"FAIL {area}: {name}:" in out and f"fix: {found['fix']}" in out


def test_stock_background_model_checked_against_rembgs_md5(tmp_path, monkeypatch, api, smtp):
    root = production_root(tmp_path, api, smtp)
    with open(root.config_path) as f:
        text = f.read().replace('bg_model = "u2net_custom"', 'bg_model = "u2net"')
    root.config_path.write_text(text)
    home = tmp_path / "u2net_home"
    home.mkdir()
    monkeypatch.setenv("U2NET_HOME", str(home))
    checks = run_checks(Root(root.path), areas=["workers"])
    missing = named(checks, "workers", "local background model")
    assert not missing["ok"] and "would download" in missing["text"] and "u2net.onnx" in missing["fix"]

    (home / "u2net.onnx").write_bytes(b"not the stock model")
    checks = run_checks(Root(root.path), areas=["workers"])
    wrong = named(checks, "workers", "local background model")
    assert not wrong["ok"] and exit_code(checks) == 1
    assert hashlib.md5(b"not the stock model").hexdigest() in wrong["text"]
    assert "rembg expects" in wrong["text"] and "delete" in wrong["fix"]


# ---- worker hosts over SSH -------------------------------------------------------------
@pytest.fixture
def two_sshd(tmp_path):
    if find_sshd() is None:
        pytest.fail("sshd is not installed: apt-get install openssh-server (make sysdeps)")
    servers = [SSHServer(tmp_path / "sshd-a").start(), SSHServer(tmp_path / "sshd-b").start()]
    try:
        yield servers
    finally:
        for s in servers:
            s.stop()


def test_ssh_workers_missing_model_and_changed_host_key(tmp_path, capsys, api, smtp, two_sshd):
    a, b = two_sshd
    root = production_root(tmp_path / "db", api, smtp)
    wroot = tmp_path / "wroot"
    wroot.mkdir()
    (wroot / "imageselector.toml").write_text(worker_config(tmp_path / "w", missing=("dinov2_large",)))
    lines = []
    for name, server in (("mbp", a), ("sleight", b)):
        h = server.host(name, root=str(wroot))
        lines.append(f'[workers.{name}]\naddress = "127.0.0.1"\nport = {server.port}\n'
                     f'user = "{h.user}"\nkey_file = "{h.key_file}"\nroot = "{wroot}"\n'
                     f'python = "{h.python}"\ncheckout = "{REPO}"\n')
    (root.path / "hosts.toml").write_text("\n".join(lines))
    # mbp's key is known; "sleight" is recorded with another host's key (an impostor)
    kind, b64 = a.host_key.with_name(a.host_key.name + ".pub").read_text().split()[:2]
    (root.path / "known_hosts").write_text(a.host_public_line()
                                           + f"[127.0.0.1]:{b.port} {kind} {b64}\n")

    checks = run_checks(Root(root.path), areas=["workers"])
    assert exit_code(checks) == 1
    assert named(checks, "workers", "mbp ssh")["ok"]
    assert named(checks, "workers", "mbp checkout")["ok"]
    assert named(checks, "workers", "mbp model dinov2_base")["ok"]
    lost = named(checks, "workers", "mbp model dinov2_large")
    assert not lost["ok"] and "hf download facebook/dinov2-large" in lost["fix"]
    assert named(checks, "workers", "mbp clock")["severity"] in ("ok", "warning")
    impostor = named(checks, "workers", "sleight ssh")
    assert not impostor["ok"] and "HOST KEY CHANGED" in impostor["text"]
    assert "hosts trust sleight" in impostor["fix"]
    assert {c["name"] for c in failures(checks)} == {"mbp model dinov2_large", "sleight ssh"}

    # --host limits the doctor to one worker
    code, only = doctor_cli(capsys, root, "--host", "sleight")
    assert code == 1
    assert not [c for c in only if c["area"] == "workers" and c["name"].startswith("mbp")]
    assert named(only, "workers", "sleight ssh")["severity"] == FAILURE
