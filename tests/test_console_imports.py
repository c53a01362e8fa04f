"""Import hygiene (harlequin's test_import_hygiene): pipeline/ and remote/ never load
Textual, and the console's start-up, status, stop and locks never load the heavy model
libraries."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.console_support import make_root

pytestmark = pytest.mark.timeout(120)
HEAVY = ("torch", "open_clip", "transformers", "faiss")


def run_python(code: str, *args) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                         text=True, timeout=100, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_pipeline_and_remote_import_no_textual():
    code = """
import importlib, json, pkgutil, sys
import remote
names = ["pipeline.status.snapshot", "pipeline.core.stage", "pipeline.core.locks", "pipeline.core.db", "pipeline.core.root"]
names += ["remote." + m.name for m in pkgutil.iter_modules(remote.__path__)]
for name in names:
    importlib.import_module(name)
print(json.dumps({"imported": names,
                  "ui": sorted(m for m in sys.modules if m.split(".")[0] in ("textual", "textual_image", "console"))}))
"""
    result = run_python(code)
    assert "remote.hosts" in result["imported"]
    assert result["ui"] == []


def test_console_start_status_stop_and_locks_load_no_model_libraries(tmp_path):
    root = make_root(tmp_path / "root")
    code = """
import asyncio, contextlib, io, json, sys
from imageselector.cli import main
root = sys.argv[1]
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    codes = [main(["--root", root, "status", "--json"]), main(["--root", root, "locks"]),
             main(["--root", root, "stop", "selftest"])]
cli_loaded_textual = "textual" in sys.modules  # the CLI's status/locks/stop never need it
from pipeline.core.root import Root
from console.app import ConsoleApp

async def run_console():
    app = ConsoleApp(Root(root), image_class=None)
    async with app.run_test(size=(120, 40)) as pilot:
        for _ in range(100):
            await pilot.pause(0.05)
            if app.local_rows and app.history.samples:
                break
    return bool(app.local_rows)

shown = asyncio.run(run_console())
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"torch", "open_clip", "transformers", "faiss"})
print(json.dumps({"codes": codes, "shown": shown, "heavy": heavy, "cli_textual": cli_loaded_textual,
                  "textual": "textual" in sys.modules}))
"""
    result = run_python(code, root.path)
    assert result["codes"] == [0, 0, 0]
    assert result["cli_textual"] is False
    assert result["shown"] and result["textual"]
    assert result["heavy"] == []
