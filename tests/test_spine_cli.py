"""Root, config and CLI: bad input gets one clear line and a non-zero exit, nothing is overwritten."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest

from pipeline.core import db
from pipeline.core.config import Config, read_secret
from pipeline.core.errors import UserError
from tests.support import cli_json, run_cli

HEAVY = ("torch", "open_clip", "transformers", "faiss", "rembg", "onnxruntime", "textual")


def test_missing_root_is_created_with_the_seed_layout(tmp_path):
    root = tmp_path / "new" / "root"
    out = run_cli("status", "--json", root=root, check=True)
    snap = json.loads(out.stdout)
    assert snap["queues"]["discovered"] == 0
    for sub in ("data/db", "data/embeddings", "images/imagedownload", "images/imageall_new",
                "images/imageall_tars", "images/imageprimary", "logs", "run"):
        assert (root / sub).is_dir(), sub
    # the committed defaults are copied into the new root
    cfg = json.loads((root / "data/db/furniture_taxonomy_config.json").read_text())
    assert cfg["taxonomies"][0]["id"] == 967 and len(cfg["taxonomies"][0]["price_breaks"]) == 126
    assert json.loads((root / "data/db/qps_config.json").read_text())["qps"] == 5


def test_root_from_environment(tmp_path):
    root = tmp_path / "envroot"
    out = run_cli("status", "--json", env_extra={"IMAGESELECTOR_ROOT": str(root)})
    assert out.returncode == 0 and json.loads(out.stdout)["root"] == str(root)


def test_unwritable_root_is_refused(tmp_path):
    mnt = tmp_path / "ro"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a read-only tmpfs here (needs root)")
    try:
        out = run_cli("status", root=mnt)
        assert out.returncode == 2
        assert out.stderr.strip() == f"imageselector: root {mnt} is not writable"
        out = run_cli("status", root=mnt / "sub")
        assert out.returncode == 2 and "cannot create" in out.stderr
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_root_that_is_a_file_is_refused(tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    out = run_cli("status", root=f)
    assert out.returncode == 2 and "afile" in out.stderr and "Traceback" not in out.stderr


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_corrupt_db_gives_one_line_and_stays_untouched(tmp_root):
    tmp_root.db_path.write_bytes(b"garbage" * 4096)
    before = _sha(tmp_root.db_path)
    out = run_cli("status", root=tmp_root)
    assert out.returncode != 0
    assert "corrupt or not an SQLite database" in out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    assert _sha(tmp_root.db_path) == before
    run = run_cli("run", "selftest", "--once", root=tmp_root)
    assert run.returncode != 0 and "corrupt" in run.stderr and "Traceback" not in run.stderr
    assert _sha(tmp_root.db_path) == before


def test_newer_schema_db_gives_one_line(tmp_root):
    import sqlite3

    conn = sqlite3.connect(tmp_root.db_path)
    conn.execute("PRAGMA user_version = 999")
    conn.commit()
    conn.close()
    before = _sha(tmp_root.db_path)
    out = run_cli("status", "--json", root=tmp_root)
    snap = json.loads(out.stdout)
    assert any("newer than this program" in e for e in snap["errors"])
    assert _sha(tmp_root.db_path) == before


def test_malformed_config_names_the_file(tmp_root):
    tmp_root.config_path.write_text("[stage\nheartbeat_s = 1\n")
    out = run_cli("status", root=tmp_root)
    assert out.returncode == 2
    line = out.stderr.strip()
    assert "\n" not in line and str(tmp_root.config_path) in line and "malformed TOML" in line


def test_wrong_type_in_config_names_the_key(tmp_root):
    tmp_root.config_path.write_text('[stage]\nheartbeat_s = "often"\n')
    out = run_cli("status", root=tmp_root)
    assert out.returncode == 2
    assert "stage.heartbeat_s must be a number" in out.stderr and str(tmp_root.config_path) in out.stderr


def test_config_precedence_flag_env_file_default(tmp_path):
    root = tmp_path / "r"
    root.mkdir()
    (root / "imageselector.toml").write_text("[stage]\npoll_s = 0.7\nheartbeat_s = 3\n")
    env = {"IMAGESELECTOR_STAGE_POLL_S": "0.3"}
    assert Config(root, environ={}).get("stage.poll_s") == 0.7
    assert Config(root, environ=env).get("stage.poll_s") == 0.3
    assert Config(root, {"stage.poll_s": 0.1}, environ=env).get("stage.poll_s") == 0.1
    assert Config(root, environ={}).get("stage.heartbeat_s") == 3.0  # int accepted as float
    assert Config(root, environ={}).get("stage.stale_after_s") == 30.0  # package default
    with pytest.raises(UserError, match=r"\$IMAGESELECTOR_STAGE_POLL_S: stage.poll_s must be a number"):
        Config(root, environ={"IMAGESELECTOR_STAGE_POLL_S": "soon"}).get("stage.poll_s")


def test_secret_file_readable_by_others_is_refused(tmp_path):
    secret = tmp_path / "key"
    secret.write_text("abc:def\n")
    secret.chmod(0o644)
    with pytest.raises(UserError, match="readable by others"):
        read_secret(secret, "Etsy API key")
    secret.chmod(0o600)
    assert read_secret(secret, "Etsy API key") == "abc:def"


def test_status_json_shape(tmp_root):
    conn = db.open_db(tmp_root)
    with db.transaction(conn):
        db.add_discovered_images(conn, [(1, i) for i in range(7)])
        db.set_image_state(conn, [(1, 0), (1, 1)], db.DOWNLOADED)
    conn.close()
    snap = cli_json("status", root=tmp_root)
    assert set(snap) >= {"queues", "stages", "locks", "backups"}
    assert snap["queues"]["discovered"] == 5 and snap["queues"]["downloaded"] == 2
    names = [s["name"] for s in snap["stages"]]
    assert names[:4] == ["sync", "download", "orchestrate", "tar"]
    for stage in snap["stages"]:
        assert {"name", "host", "state", "pid"} <= set(stage)
    assert isinstance(snap["locks"], list) and snap["backups"] == []


@pytest.mark.parametrize("argv", [["status", "--json"], ["locks", "--json"], ["stop", "selftest"],
                                  ["pause", "selftest"], ["resume", "selftest"]])
def test_light_commands_import_no_heavy_libraries(tmp_root, argv):
    script = (
        "import sys, io, contextlib\n"
        "from imageselector.cli import main\n"
        f"with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    code = main(['--root', {str(tmp_root.path)!r}, *{argv!r}])\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print(code, heavy)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    code, heavy = out.stdout.strip().split(" ", 1)
    assert heavy == "[]", f"{argv} imported {heavy}"


def test_pipeline_and_remote_never_import_textual():
    script = ("import sys, pkgutil, importlib\n"
              "import pipeline, remote\n"
              "for pkg in (pipeline, remote):\n"
              "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
              "        if m.name.endswith('lockprobe') or m.name.endswith('detach'):\n"
              "            continue\n"
              "        importlib.import_module(m.name)\n"
              "print(sorted(m for m in sys.modules if m == 'textual' or m.startswith('textual.')))\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_requeue_moves_only_failed_images(tmp_root):
    conn = db.open_db(tmp_root)
    with db.transaction(conn):
        db.add_discovered_images(conn, [(1, i) for i in range(4)])
        db.set_image_state(conn, [(1, 0)], db.FAILED, reason="truncated")
        db.set_image_state(conn, [(1, 1)], db.FAILED, reason="timeout after 3 tries")
        db.set_image_state(conn, [(1, 2)], db.DEAD, reason="404")
    out = run_cli("requeue", "--reason", "timeout", root=tmp_root, check=True)
    assert "requeued 1 failed" in out.stdout
    states = dict(conn.execute("SELECT image_id, state FROM image_status").fetchall())
    assert states == {0: "failed", 1: "discovered", 2: "dead", 3: "discovered"}
    assert db.queue_depths(conn) == db.count_states_slowly(conn)


def test_sandbox_init_writes_a_sandbox_root_and_never_converts_production(tmp_path):
    out = run_cli("sandbox", "init", tmp_path / "sb", "--port", "18765", check=True)
    assert "18765" in out.stdout
    snap = cli_json("status", root=tmp_path / "sb")
    assert snap["profile"] == "sandbox"
    key = tmp_path / "sb" / "secrets" / "etsy_api_key"
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    prod = tmp_path / "prod"
    prod.mkdir()
    (prod / "imageselector.toml").write_text('[root]\nprofile = "production"\n')
    refused = run_cli("sandbox", "init", prod)
    assert refused.returncode == 2 and "not a sandbox root" in refused.stderr
    assert (prod / "imageselector.toml").read_text() == '[root]\nprofile = "production"\n'
