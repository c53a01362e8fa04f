"""Helpers shared by the spine's tests: run the CLI, wait for a condition."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

PYTHON = sys.executable


def run_cli(*args, root=None, check=False, timeout=120, env_extra=None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("IMAGESELECTOR_ROOT", None)
    if env_extra:
        env.update(env_extra)
    argv = [PYTHON, "-m", "imageselector"]
    if root is not None:
        argv += ["--root", str(getattr(root, "path", root))]
    proc = subprocess.run(argv + [str(a) for a in args], capture_output=True, text=True,
                          timeout=timeout, env=env, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise AssertionError(f"imageselector {' '.join(map(str, args))} exited {proc.returncode}:\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


def run_cli_here(capsys, *args, root=None) -> subprocess.CompletedProcess:
    """The command line run in this process (the same parser, command and output), for tests
    that run many commands: it saves a Python start and the model imports per call. Use
    run_cli where the process itself matters (exit on signals, imports, detaching)."""
    from imageselector.cli import main

    argv = ["--root", str(getattr(root, "path", root))] if root is not None else []
    capsys.readouterr()
    code = main(argv + [str(a) for a in args])
    out = capsys.readouterr()
    return subprocess.CompletedProcess(argv, code, out.out, out.err)


def cli_json(*args, root=None):
    proc = run_cli(*args, "--json", root=root, check=True)
    return json.loads(proc.stdout)


def wait_for(predicate, timeout=20.0, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
