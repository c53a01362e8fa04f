"""What the console's keys do to stages, as plain functions run in action threads. Each
returns a line for the command log or raises (UserError: a clear one-line message)."""
from __future__ import annotations

from typing import Callable

# What stop all leaves running, and why: one rule for the CLI and the console.
from pipeline.core.stage import STOP_ALL_KEEPS

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
    stage, then each worker host's rows in host order; never those of STOP_ALL_KEEPS."""
    from pipeline.core.stage import PIPELINE_ORDER

    rows = [r for r in rows if is_live(r) and r["name"] not in STOP_ALL_KEEPS]
    local = [r for r in rows if r.get("host", "local") == "local"]
    rank = {name: i for i, name in enumerate(PIPELINE_ORDER)}
    local.sort(key=lambda r: rank.get(r["name"], len(rank)))
    remote = [r for r in rows if r.get("host", "local") != "local"]
    return local + remote


def stop_all_kept(rows: list[dict]) -> list[dict]:
    """The live rows stop all leaves running (STOP_ALL_KEEPS)."""
    return [r for r in rows if is_live(r) and r["name"] in STOP_ALL_KEEPS]


def stop_all_text(rows: list[dict], kept: list[dict]) -> str:
    """The stop-all dialog: what it stops, in the order it writes the kill files, and what it
    leaves running."""
    from pipeline.core.stage import spec

    lines = ["Kill files, one after the other in this order (each stage finishes its current "
             "unit, then exits):"]
    for i, r in enumerate(rows, 1):
        pid = f", pid {r['pid']}" if r.get("pid") else ""
        lines.append(f"  {i}. {r.get('host', 'local')}/{r['name']}  "
                     f"({spec(r['name']).kill_file}{pid})")
    for r in kept:
        why = STOP_ALL_KEEPS.get(r["name"], "not a pipeline stage")
        lines.append(f"Left running: {r.get('host', 'local')}/{r['name']}, {why} "
                     f"(x on its row stops it).")
    return "\n".join(lines)


def run_in_order(steps: list[tuple[str, Callable[[], str]]],
                 say: Callable[[str, str], None]) -> list[str]:
    """Run each (key, stop) in turn, saying each outcome; one that fails does not stop the
    rest. Returns the keys that failed."""
    failed = []
    for key, stop in steps:
        try:
            say(str(stop()), "ok")
        except Exception as exc:   # e.g. a worker host that does not answer
            failed.append(key)
            say(f"stop {key}: {exc}", "error")
    return failed


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


def pause_local(root, name: str) -> str:
    from pipeline.core.stage_control import pause_stages

    written = pause_stages(root, [name])
    return f"pause {name}: {', '.join(written)} written; it pauses after its current unit"


def resume_local(root, name: str) -> str:
    from pipeline.core.stage_control import resume_stages

    resume_stages(root, [name])
    return f"resume {name}: pause file removed"


def restart(label: str, stop: Callable[[], object], stopped: Callable[[], bool],
            start: Callable[[], str], wait_s: float, poll_s: float,
            say: Callable[[str], None]) -> str:
    """Stop, wait until it has exited (up to wait_s), then start. Run in an action thread;
    a stage that does not exit in time is left stopping and is not started again."""
    import time

    stop()
    say(f"restart {label}: stop requested, waiting for it to exit")
    deadline = time.monotonic() + wait_s
    while not stopped():
        if time.monotonic() > deadline:
            return (f"restart {label}: still running after {wait_s:.0f}s (stage.stop_wait_s); "
                    f"not started again (x to wait, F to force)")
        time.sleep(poll_s)
    return start()
