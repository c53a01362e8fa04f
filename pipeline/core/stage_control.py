"""Controlling a stage: start (detached), stop (kill file; the signal ladder only on --force),
pause and resume."""
from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Callable

from pipeline.core.errors import AlreadyRunning, UserError
from pipeline.core.fsutil import atomic_write_json, read_json_or_none
from pipeline.core.procs import pid_alive

from pipeline.core.stage import StageState, PAUSABLE, spec
from pipeline.core.stage_observe import is_live, stage_status


def run_argv(root, name: str, extra: list[str] | None = None, python: str | None = None) -> list[str]:
    return [python or sys.executable, "-m", "imageselector", "--root", str(root.path), "run", name,
            *(extra or [])]


def start_detached(root, name: str, extra: list[str] | None = None, wait_s: float = 20.0) -> dict:
    """Start a stage detached from this process (new session, stdin /dev/null, output to its
    log) and wait until its heartbeat shows it running. Returns its status."""
    stage = spec(name)
    current = stage_status(root, name)
    if is_live(current):
        raise AlreadyRunning(f"stage {name} is already running (pid {current['pid']})")
    if root.file(stage.kill_file).exists():
        raise UserError(f"{stage.kill_file} exists at {root.path}: remove it to start {name}")
    from pipeline.core.detach import spawn_detached

    root.logs_dir.mkdir(parents=True, exist_ok=True)
    pid = spawn_detached(run_argv(root, name, extra), root.log_path(name), cwd=root.path)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        hb = read_json_or_none(root.heartbeat_path(name))
        if hb and hb.get("pid") == pid:
            return stage_status(root, name)
        if not pid_alive(pid):
            break
        time.sleep(0.05)
    hb = read_json_or_none(root.heartbeat_path(name))
    if hb and hb.get("pid") == pid:  # it ran and already finished (e.g. --once)
        return stage_status(root, name)
    tail = tail_lines(root.log_path(name), 5)
    if pid_alive(pid):
        raise UserError(f"stage {name} (pid {pid}) did not write its heartbeat within {wait_s:.0f} s; "
                        f"see {root.log_path(name)}")
    raise UserError(f"stage {name} exited at once; last log lines:\n" + "\n".join(tail))


def tail_lines(path: Path, n: int, max_bytes: int = 64 * 1024) -> list[str]:
    """The last ``n`` lines of a log (read from its last ``max_bytes``); [] when missing."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            return fh.read().decode("utf-8", "replace").splitlines()[-n:]
    except FileNotFoundError:
        return []


def request_stop(root, name: str) -> dict:
    """Write the kill file of a running stage. Returns its status (state 'stopping')."""
    stage = spec(name)
    status = stage_status(root, name)
    if not is_live(status):
        return status
    kill = root.file(stage.kill_file)
    atomic_write_json(kill, {"requested_by": os.getpid(), "at": time.time()})
    status = stage_status(root, name)
    if not is_live(status):
        # it exited between the check and the write: leave no stale kill file behind
        kill.unlink(missing_ok=True)
    return status


def wait_stopped(root, name: str, pid: int, timeout_s: float, poll_s: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(poll_s)
    return not pid_alive(pid)


def signal_ladder(pid: int, proc_start: float | None, term_grace_s: float,
                  allow_kill: bool, say: Callable[[str], None]) -> bool:
    """SIGTERM (handled like the kill file), wait, then SIGKILL if allowed. Only the pid we
    were given, and only while it is still the same process (start time checked)."""
    if not pid_alive(pid, proc_start):
        return True
    say(f"sending SIGTERM to pid {pid}")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + term_grace_s
    while time.monotonic() < deadline:
        if not pid_alive(pid, proc_start):
            return True
        time.sleep(0.1)
    if not allow_kill:
        say(f"pid {pid} is still running after SIGTERM; not sending SIGKILL")
        return False
    if not pid_alive(pid, proc_start):
        return True
    say(f"sending SIGKILL to pid {pid}")
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if not pid_alive(pid, proc_start):
            return True
        time.sleep(0.05)
    return False


def pause_stages(root, names: list[str]) -> list[str]:
    """Ask stages to pause (create PAUSE_<tag>). Returns the pause files written."""
    written = []
    for name in names:
        stage = spec(name)
        if not stage.pause_file:
            raise UserError(f"stage {name} has no pause protocol")
        path = root.file(stage.pause_file)
        if not path.exists():
            atomic_write_json(path, {"requested_by": os.getpid(), "at": time.time()})
        written.append(stage.pause_file)
    return written


def resume_stages(root, names: list[str]) -> None:
    for name in names:
        stage = spec(name)
        if not stage.pause_file:
            raise UserError(f"stage {name} has no pause protocol")
        root.file(stage.pause_file).unlink(missing_ok=True)
        if not is_live(stage_status(root, name)):
            root.file(stage.paused_file).unlink(missing_ok=True)  # a dead stage's acknowledgement is stale


def pause_acknowledged(root, name: str) -> bool | None:
    """True when the stage acknowledged (PAUSED_<tag>), None when it is not running."""
    status = stage_status(root, name)
    if not is_live(status):
        return None
    return status["state"] == StageState.PAUSED.value


def all_writers_paused(root) -> bool:
    """The gate for a mirror of the DB: every live pausable stage has acknowledged."""
    return all(pause_acknowledged(root, name) in (True, None) for name in PAUSABLE)
