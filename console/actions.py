"""What the console's keys do to stages, as plain functions run in action threads. Each
returns a line for the command log or raises (UserError: a clear one-line message)."""
from __future__ import annotations

from typing import Callable

LIVE = {"running", "pausing", "paused", "blocked", "stopping", "stale"}


def is_live(row: dict) -> bool:
    return row.get("state") in LIVE


def start_local(root, name: str) -> str:
    from pipeline.core.stage_control import start_detached

    status = start_detached(root, name)
    return f"start {name}: {status['state']} (pid {status['pid'] or status['last_pid']})"


def stop_local(root, name: str) -> str:
    from pipeline.core.stage_control import request_stop
    from pipeline.core.stage import spec

    status = request_stop(root, name)
    if status["state"] != "stopping":
        return f"stop {name}: not running ({status['state']})"
    return f"stop {name}: {spec(name).kill_file} written, waiting for it to exit (pid {status['pid']})"


def stop_all_order(rows: list[dict]) -> list[dict]:
    """Live rows in pipeline order: local stages of the pipeline first, then any other local
    stage, then each worker host's rows in host order."""
    from pipeline.core.stage import PIPELINE_ORDER

    local = [r for r in rows if r.get("host") == "local" and is_live(r)]
    rank = {name: i for i, name in enumerate(PIPELINE_ORDER)}
    local.sort(key=lambda r: rank.get(r["name"], len(rank)))
    remote = [r for r in rows if r.get("host") != "local" and is_live(r)]
    return local + remote


def escalate(root, name: str, pid: int, say: Callable[[str], None]) -> bool:
    """The stop ladder on one local stage: SIGTERM (handled like the kill file), wait
    stage.term_grace_s, then SIGKILL. The caller has shown the lock holders and had it
    confirmed (twice for the writer). True when the process is gone."""
    from pipeline.core.fsutil import read_json_or_none
    from pipeline.core.stage_control import signal_ladder
    from pipeline.core.stage import spec

    hb = read_json_or_none(root.heartbeat_path(name)) or {}
    proc_start = hb.get("proc_start") if hb.get("pid") == pid else None
    stopped = signal_ladder(pid, proc_start, float(root.config.get("stage.term_grace_s")),
                            allow_kill=True, say=say)
    kill = root.file(spec(name).kill_file)
    if stopped and kill.exists():  # killed before it saw its kill file
        kill.unlink(missing_ok=True)
    return stopped


def pause_all(root) -> str:
    from pipeline.core.stage import PAUSABLE
    from pipeline.core.stage_control import pause_stages

    written = pause_stages(root, list(PAUSABLE))
    return "pause requested: " + ", ".join(written)


def resume_all(root) -> str:
    from pipeline.core.stage import PAUSABLE
    from pipeline.core.stage_control import resume_stages

    resume_stages(root, list(PAUSABLE))
    return "resumed: " + ", ".join(PAUSABLE)
