"""The stages of one worker host, seen and controlled from the DB host (for the console).

``host_stage_rows`` gives rows shaped like ``pipeline.core.stage_observe.stage_status`` for the stages
that run on worker hosts, built from the host's ``run/<stage>.json`` read over SFTP and
``derive_state(alive=None)`` (a fresh heartbeat counts as alive: the pid cannot be checked
from here). A host that does not answer gives one row per stage in state "unreachable" with
the error text.

The console polls every second, so each host keeps one SSH connection (one SSHTransport,
reused, re-made when it fails) instead of a new one per poll. Every call returns within its
``timeout_s``: the SSH work runs in a daemon thread that the caller stops waiting for (the
transport's own watchdog ends that work soon after). Light imports only; paramiko is
imported when a host is first used.
"""
from __future__ import annotations

import json
import os
import threading
import time
from typing import Any, Callable

from pipeline.core.errors import UserError
from pipeline.core.stage import PIPELINE_ORDER, STAGES, StageState, spec
from pipeline.core.stage_observe import derive_state, status_row

HOST_STAGES = [name for name in PIPELINE_ORDER if STAGES[name].where == "worker"]
LIVE = {s.value for s in (StageState.RUNNING, StageState.PAUSING, StageState.PAUSED,
                          StageState.BLOCKED, StageState.STOPPING, StageState.STALE)}


def heartbeat_relpath(stage: str) -> str:
    return f"run/{stage}.json"


def log_relpath(stage: str) -> str:
    return f"logs/{stage}.log"


# ---------------------------------------------------------------------------
# One cached connection per host
# ---------------------------------------------------------------------------
class _HostLink:
    """A host's transport and the lock that keeps its calls one at a time (a paramiko
    connection runs one command at a time anyway; waiting on the lock is bounded)."""

    def __init__(self, ident: tuple, transport):
        self.ident = ident          # (Host, known_hosts, settings): a change makes a new link
        self.transport = transport
        self.lock = threading.Lock()

    def close(self) -> None:
        # In a thread: a call in flight holds the connection's lock until its watchdog fires.
        threading.Thread(target=_quiet_close, args=(self.transport,), daemon=True,
                         name="hoststages-close").start()


def _quiet_close(transport) -> None:
    try:
        transport.close()
    except Exception:
        pass


_links: dict[tuple[str, str, float], _HostLink] = {}
_links_lock = threading.Lock()


def _new_transport(root, hosts, host, settings):
    """The transport of a host (tests replace this)."""
    from remote.transport import transport_for

    return transport_for(host, hosts.known_hosts, settings, local_root=root.path)


def _hosts(root):
    """hosts.toml, a problem in it as UserError."""
    from remote.errors import HostsConfigError
    from remote.hosts import load_hosts

    try:
        return load_hosts(root.hosts_path)
    except HostsConfigError as exc:
        raise UserError(str(exc)) from None


def _host(root, host_name: str):
    from remote.errors import HostsConfigError

    hosts = _hosts(root)
    try:
        return hosts, hosts.get(host_name)
    except HostsConfigError as exc:
        raise UserError(str(exc)) from None


def _settings(root, timeout_s: float):
    from pipeline.core.hosts import ssh_settings

    return ssh_settings(root, cap_s=timeout_s)


def _link(root, host_name: str, timeout_s: float) -> _HostLink:
    hosts, host = _host(root, host_name)
    settings = _settings(root, timeout_s)
    ident = (host, str(hosts.known_hosts), settings)
    # Per time limit too: the console uses one (its source timeout) for every call.
    key = (str(root.path), host_name, float(timeout_s))
    with _links_lock:
        link = _links.get(key)
        if link is None or link.ident != ident:   # first use, or hosts.toml changed
            if link is not None:
                link.close()
            link = _HostLink(ident, _new_transport(root, hosts, host, settings))
            _links[key] = link
        return link


def close_all() -> None:
    """Close every cached connection (tests; the console at exit)."""
    with _links_lock:
        links = list(_links.values())
        _links.clear()
    for link in links:
        link.close()


def _within(timeout_s: float, what: str, fn: Callable[[], Any]) -> Any:
    """fn() in a daemon thread; RemoteTimeout if it has not answered within timeout_s."""
    from remote.errors import RemoteTimeout

    box: dict[str, Any] = {}
    done = threading.Event()

    def work() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=work, name=f"hoststages-{what}", daemon=True).start()
    if not done.wait(timeout_s):
        raise RemoteTimeout(f"{what}: no answer within {timeout_s:g}s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _on_link(root, host_name: str, timeout_s: float, what: str, op: Callable) -> Any:
    """op(transport) on the host's cached connection, one call at a time, within timeout_s.
    A failed call drops the connection, so the next one connects afresh."""
    from remote.errors import ConnectionLost, RemoteError, RemoteTimeout

    deadline = time.monotonic() + timeout_s
    link = _link(root, host_name, timeout_s)

    def call():
        if not link.lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise RemoteTimeout(f"{host_name}: still busy with an earlier call after "
                                f"{timeout_s:g}s")
        try:
            return op(link.transport)
        except (ConnectionLost, RemoteTimeout, OSError):
            link.transport.close()
            raise
        except RemoteError:
            raise
        finally:
            link.lock.release()

    return _within(timeout_s, f"{host_name}: {what}", call)


# ---------------------------------------------------------------------------
# Rows
# ---------------------------------------------------------------------------
def _row(root, host, stage: str, hb: dict | None, kill_present: bool, now: float) -> dict:
    state = derive_state(hb, None, kill_present=kill_present, pause_present=False,
                         paused_present=False, now=now,
                         stale_after_s=float(root.config.get("stage.stale_after_s")))
    alive = state.value in LIVE and state != StageState.STALE
    return {**status_row(stage, host.name, hb, state, alive, now, log_relpath(stage)), "error": None}


def unreachable_rows(host_name: str, text: str) -> list[dict]:
    return [{"name": stage, "host": host_name, "state": StageState.UNREACHABLE.value,
             "pid": None, "uptime_s": None, "heartbeat_age_s": None, "rate": None,
             "current": None, "last_exit": None, "error": text, "message": text}
            for stage in HOST_STAGES]


def _parse_heartbeat(text: str | None) -> dict | None:
    if not text:
        return None
    try:
        hb = json.loads(text)
    except ValueError:
        return None   # a torn or foreign file reads as no heartbeat, as locally
    return hb if isinstance(hb, dict) else None


def _read_root_text(transport, relpath: str) -> str | None:
    """ROOT/RELPATH over SFTP (no process is started on the host, which matters at one read
    a second); None when the file does not exist, RemoteFileMissing when the root does not."""
    from remote.errors import RemoteFileMissing

    try:
        return transport.read_bytes(transport.join(relpath), 1 << 20).decode("utf-8", "replace")
    except RemoteFileMissing:
        if not transport.exists(transport.root):
            raise RemoteFileMissing(f"{transport.name}: root {transport.root} does not exist "
                                    f"on that host") from None
        return None


def _kill_present(transport, stage: str) -> bool:
    return transport.exists(transport.join(spec(stage).kill_file))


def host_stage_rows(root, host_name: str, timeout_s: float, now: float | None = None
                    ) -> list[dict]:
    """One row per worker-host stage on HOST_NAME (a worker of hosts.toml). A host that does
    not answer within timeout_s (or refuses us) gives rows in state "unreachable" with the
    error text in "error" and "message". A hosts.toml problem raises UserError."""
    from remote.errors import RemoteError

    _, host = _host(root, host_name)
    if host.local:
        return _local_rows(root, host, now)

    def look(transport) -> tuple[float, list[tuple[str, dict | None, bool]], dict]:
        out = []
        for stage in HOST_STAGES:
            hb = _parse_heartbeat(_read_root_text(transport, heartbeat_relpath(stage)))
            finished = not hb or hb.get("state") == StageState.STOPPED.value
            # the kill file matters only while the stage is up ("stopping")
            out.append((stage, hb, False if finished else _kill_present(transport, stage)))
        return transport.clock_offset_s(), out, _serve_heartbeats(transport)

    try:
        offset, seen, serving = _on_link(root, host_name, timeout_s, "stage status", look)
    except RemoteError as exc:
        return unreachable_rows(host_name, str(exc))
    now = time.time() if now is None else now
    # the heartbeats carry the host's clock: age them by it
    rows = [_row(root, host, stage, hb, kill, now + offset) for stage, hb, kill in seen]
    rows += _serve_rows(root, host.name, serving, now + offset)
    return [{**r, "clock_offset_s": round(offset, 3)} for r in rows]


def _serve_heartbeats(transport) -> dict[str, dict | None]:
    """The re-embed servers' heartbeats on the host, by model: one folder listing, and a read
    per model only where a re-embed has run there."""
    from pipeline.reembed.serve import HEARTBEAT_NAME, SERVE_DIR, serve_relpath
    from remote.errors import RemoteFileMissing

    try:
        models = transport.list_dir(transport.join(SERVE_DIR))
    except RemoteFileMissing:
        return {}
    return {m: _parse_heartbeat(_read_root_text(transport, serve_relpath(m, HEARTBEAT_NAME)))
            for m in models}


def _serve_rows(root, host_name: str, serving: dict[str, dict | None], now: float) -> list[dict]:
    from pipeline.reembed.serve_rows import serve_row

    stale_after_s = float(root.config.get("stage.stale_after_s"))
    rows = [serve_row(host_name, model, hb, now, stale_after_s) for model, hb in sorted(serving.items())]
    return [r for r in rows if r is not None]


def _local_rows(root, host, now: float | None) -> list[dict]:
    """A `local = true` worker: its root is a folder here (no SSH)."""
    from pipeline.core.stage_observe import stage_status

    worker_root = _local_root(root, host)
    rows = [{**stage_status(worker_root, stage, now), "host": host.name, "error": None}
            for stage in HOST_STAGES]
    return rows + _serve_rows(root, host.name, _local_serving(worker_root),
                              time.time() if now is None else now)


def _local_root(root, host):
    from pipeline.core.root import Root

    path = host.root or str(root.path)
    return root if path == str(root.path) else Root(path)


def _local_serving(worker_root) -> dict[str, dict | None]:
    from pipeline.core.fsutil import read_json_or_none
    from pipeline.reembed.serve import HEARTBEAT_NAME, SERVE_DIR

    try:
        models = sorted(os.listdir(worker_root.path / SERVE_DIR))
    except (FileNotFoundError, NotADirectoryError):
        return {}
    beats = {m: read_json_or_none(worker_root.path / SERVE_DIR / m / HEARTBEAT_NAME) for m in models}
    return {m: hb if isinstance(hb, dict) else None for m, hb in beats.items()}


def local_serve_rows(root, now: float | None = None) -> list[dict]:
    """The re-embed servers of this machine's `local = true` workers, as rows of host
    "local" (the console shows a local worker's stages as its local rows) whose "log" is the
    full path of that root's logs/reembed-serve.log. A hosts.toml problem raises UserError."""
    from pipeline.reembed.serve import LOG_NAME

    local = [h for h in _hosts(root) if h.local]
    now = time.time() if now is None else now
    rows, seen = [], set()
    for host in local:
        worker_root = _local_root(root, host)
        if str(worker_root.path) in seen:
            continue
        seen.add(str(worker_root.path))
        for row in _serve_rows(root, "local", _local_serving(worker_root), now):
            rows.append({**row, "log": str(worker_root.log_path(LOG_NAME))})
    return rows


# ---------------------------------------------------------------------------
# Start, stop, log
# ---------------------------------------------------------------------------
def _check_stage(stage: str, host_name: str) -> None:
    if spec(stage).where != "worker":
        raise UserError(f"stage {stage} does not run on worker hosts such as {host_name} "
                        f"(worker stages: {', '.join(HOST_STAGES)})")


def _command_timeout(root) -> float:
    return float(root.config.get("remote.command_timeout"))


def start_remote(root, host_name: str, stage: str, timeout_s: float | None = None) -> str:
    """`imageselector start STAGE` on the host (it detaches there and waits for the stage's
    heartbeat). Runs on a connection of its own, so the status polls of that host go on
    meanwhile. timeout_s: the configured remote.command_timeout unless given."""
    from remote.errors import RemoteFileMissing

    _check_stage(stage, host_name)
    timeout_s = _command_timeout(root) if timeout_s is None else float(timeout_s)
    hosts, host = _host(root, host_name)
    if host.local:
        from pipeline.core.root import Root
        from pipeline.core.stage_control import start_detached

        status = start_detached(Root(host.root) if host.root else root, stage)
        return f"start {stage} on {host_name}: {status['state']} (pid {status['pid']})"
    transport = _new_transport(root, hosts, host, _settings(root, timeout_s))

    def start():
        try:
            return transport.start_stage(stage, timeout=timeout_s)
        finally:
            transport.close()

    result = _within(timeout_s, f"{host_name}: start {stage}", start)
    from remote.commands import ROOT_MISSING

    if result.exit_status == ROOT_MISSING:
        raise RemoteFileMissing(f"{host_name}: root {host.root} does not exist on that host")
    if not result.ok:
        last = (result.stderr.strip().splitlines() or [f"exit status {result.exit_status}"])[-1]
        raise UserError(f"start {stage} on {host_name}: {last}")
    said = (result.stdout.strip().splitlines() or ["started"])[-1]
    return f"start {stage} on {host_name}: {said}"


def stop_remote(root, host_name: str, stage: str, timeout_s: float | None = None) -> str:
    """Write the stage's kill file on the host (no signals: they reach local stages only).
    Nothing is written when the stage is not running there (a kill file left behind would
    refuse the next start)."""
    _check_stage(stage, host_name)
    timeout_s = _command_timeout(root) if timeout_s is None else float(timeout_s)
    kill_file = spec(stage).kill_file
    _, host = _host(root, host_name)
    if host.local:
        from pipeline.core.root import Root
        from pipeline.core.stage_control import request_stop

        status = request_stop(Root(host.root) if host.root else root, stage)
        return f"stop {stage} on {host_name}: {status['state']}"

    def stop(transport) -> str:
        hb = _parse_heartbeat(_read_root_text(transport, heartbeat_relpath(stage)))
        if not hb or hb.get("state") == StageState.STOPPED.value:
            return f"stop {stage} on {host_name}: not running"
        transport.stop(kill_file, f"stop requested by the console at {time.time():.0f}")
        hb = _parse_heartbeat(_read_root_text(transport, heartbeat_relpath(stage)))
        if not hb or hb.get("state") == StageState.STOPPED.value:
            # it exited between the look and the write: leave no kill file behind
            transport.remove(transport.join(kill_file))
            return f"stop {stage} on {host_name}: it had just exited"
        return (f"stop {stage} on {host_name}: {kill_file} written, waiting for it to exit "
                f"(pid {hb.get('pid')})")

    return _on_link(root, host_name, timeout_s, f"stop {stage}", stop)


def host_log_tail(root, host_name: str, stage: str, lines: int,
                  timeout_s: float | None = None) -> list[str]:
    """The last lines of the stage's log on the host (or of its re-embed servers': stage
    "reembed", the name of their rows)."""
    from pipeline.reembed.serve import LOG_NAME
    from pipeline.reembed.serve_rows import ROW_NAME

    if stage != ROW_NAME:
        _check_stage(stage, host_name)
    relpath = log_relpath(LOG_NAME if stage == ROW_NAME else stage)
    timeout_s = _command_timeout(root) if timeout_s is None else float(timeout_s)
    _, host = _host(root, host_name)
    if host.local:
        from pipeline.core.root import Root
        from pipeline.core.stage_control import tail_lines

        worker_root = Root(host.root) if host.root else root
        return tail_lines(worker_root.path / relpath, int(lines))
    text = _on_link(root, host_name, timeout_s, f"{stage} log",
                    lambda t: t.tail_root_file(relpath, int(lines)))
    if text is None:
        raise UserError(f"{host_name}: no log yet at {host.root}/{relpath}")
    return text.splitlines()
