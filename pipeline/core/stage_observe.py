"""Observing a stage: the state derivation used by status, the CLI and the console."""
from __future__ import annotations

import time

from pipeline.core.fsutil import read_json_or_none
from pipeline.core.procs import pid_alive

from pipeline.core.stage import StageState, spec, LIVE_STATES


def derive_state(hb: dict | None, alive: bool | None, kill_present: bool, pause_present: bool,
                 paused_present: bool, now: float, stale_after_s: float) -> StageState:
    """The one rule that turns a heartbeat file and the facts around it into a state.

    ``alive``: whether the heartbeat's process exists (None when it cannot be checked, as
    for a remote host: then a fresh heartbeat counts as alive)."""
    if hb is None:
        return StageState.STOPPED
    recorded = hb.get("state")
    finished = recorded == StageState.STOPPED.value
    age = now - float(hb.get("heartbeat") or 0)
    if alive is None:
        alive = not finished and age <= stale_after_s
        if not finished and not alive:
            return StageState.STALE
    if not alive:
        return StageState.STOPPED if finished else StageState.CRASHED
    if finished:  # exiting right now: the final heartbeat is written, the process not gone
        return StageState.STOPPING
    if kill_present:
        return StageState.STOPPING
    if recorded == StageState.PAUSED.value and paused_present:
        return StageState.PAUSED
    if pause_present:
        return StageState.PAUSING
    if age > stale_after_s:
        return StageState.STALE
    if recorded == StageState.BLOCKED.value:
        return StageState.BLOCKED
    return StageState.RUNNING


def stage_status(root, name: str, now: float | None = None) -> dict:
    """The local stage's state, pid and figures, from its heartbeat file and /proc."""
    stage = spec(name)
    now = time.time() if now is None else now
    hb = read_json_or_none(root.heartbeat_path(name))
    alive = bool(hb) and pid_alive(hb.get("pid"), hb.get("proc_start"))
    state = derive_state(
        hb, alive,
        kill_present=root.file(stage.kill_file).exists(),
        pause_present=bool(stage.pause_file) and root.file(stage.pause_file).exists(),
        paused_present=bool(stage.paused_file) and root.file(stage.paused_file).exists(),
        now=now, stale_after_s=float(root.config.get("stage.stale_after_s")))
    return status_row(name, "local", hb, state, alive, now, str(root.log_path(name)))


def status_row(name: str, host: str, hb: dict | None, state: StageState, alive: bool,
               now: float, log: str) -> dict:
    """A stage's row (status, console) from its heartbeat and derived state; ``now`` on the
    clock of the host that wrote the heartbeat."""
    hb = hb or {}
    return {
        "name": name,
        "host": host,
        "hostname": hb.get("host"),
        "state": state.value,
        "pid": hb.get("pid") if alive else None,
        "last_pid": hb.get("pid"),
        "started": hb.get("started"),
        "uptime_s": round(now - float(hb["started"]), 1) if alive and hb.get("started") else None,
        "heartbeat_age_s": round(now - float(hb["heartbeat"]), 1) if hb.get("heartbeat") else None,
        "rate": hb.get("rate") if alive else None,
        "cpu_pct": hb.get("cpu_pct") if alive else None,      # as of its last heartbeat
        "rss_bytes": hb.get("rss_bytes") if alive else None,
        "current": hb.get("current"),
        "counters": hb.get("counters", {}),
        "info": hb.get("info", {}),
        "blocked_reason": hb.get("blocked_reason") if state == StageState.BLOCKED else None,
        "progress_at": hb.get("progress_at"),
        "last_exit": hb.get("exit") if hb.get("exit") else hb.get("last_exit"),
        "log": log,
    }


def is_live(status: dict) -> bool:
    return status["state"] in {s.value for s in LIVE_STATES}
