"""Each worker's state for `status` and the console: what the running orchestrator last saw
(its heartbeat's ``info.workers``) joined with a fresh look at each host's ``run/worker.json``
(over SSH with short limits, in parallel, so one dead host costs one timeout, not one each).

Light imports only (no torch, faiss); paramiko is imported only when a host uses SSH.
"""
from __future__ import annotations

import os
import threading
import time

from pipeline.status.registry import status_provider

HEARTBEAT = "run/worker.json"
STATES = ("running", "stopped", "unreachable", "error")


def _look(root, hosts, host, timeout_s: float, now: float) -> dict:
    """This host's worker heartbeat: {'stage_state', 'pid', 'heartbeat_age_s', 'error', ...}."""
    from pipeline.core.stage import StageState
    from pipeline.core.stage_observe import derive_state

    if host.local:
        from pipeline.core.root import Root
        from pipeline.core.stage_observe import stage_status

        path = host.root or str(root.path)
        if not os.path.isdir(path):
            return {"stage_state": None, "kind": "error",
                    "error": f"{host.name}: root {path} does not exist"}
        try:
            st = stage_status(root if path == str(root.path) else Root(path), "worker", now)
        except Exception as exc:   # a broken worker root is that worker's error
            return {"stage_state": None, "error": f"{host.name}: {exc}", "kind": "error"}
        return {"stage_state": st["state"], "pid": st["pid"], "info": st.get("info") or {},
                "heartbeat_age_s": st["heartbeat_age_s"], "error": None}
    from pipeline.core.hosts import make_transport, ssh_settings
    from remote.errors import HostKeyError, AuthFailed, RemoteError, RemoteFileMissing

    transport = None
    try:
        transport = make_transport(root, hosts, host, ssh_settings(root, cap_s=timeout_s))
        text = transport.read_root_file(HEARTBEAT)
        now += transport.clock_offset_s()   # the heartbeat carries the host's clock
    except (HostKeyError, AuthFailed, RemoteFileMissing) as exc:
        return {"stage_state": None, "error": str(exc), "kind": "error"}
    except RemoteError as exc:
        return {"stage_state": None, "error": str(exc), "kind": "unreachable"}
    finally:
        if transport is not None:
            transport.close()
    import json

    try:
        hb = json.loads(text) if text else None
    except ValueError:
        hb = None
    state = derive_state(hb, None, kill_present=False, pause_present=False,
                         paused_present=False, now=now,
                         stale_after_s=float(root.config.get("stage.stale_after_s")))
    alive = state not in (StageState.STOPPED, StageState.CRASHED, StageState.STALE)
    return {"stage_state": state.value, "pid": (hb or {}).get("pid") if alive else None,
            "info": (hb or {}).get("info") or {},
            "heartbeat_age_s": round(now - float(hb["heartbeat"]), 1) if hb and hb.get("heartbeat") else None,
            "error": None}


def workers_status(root, timeout_s: float | None = None, now: float | None = None,
                   look: bool = True) -> list[dict]:
    """One dict per worker: name, host, local, state (running, stopped, unreachable, error),
    stage_state (the worker stage's own state there), pid, busy, batches_in_flight,
    images_per_s, last_error, seen_by_orchestrator.

    ``look=False``: no SSH connection, only what the running orchestrator last saw of the SSH
    hosts (for a display refreshed every second; such a host is "unreachable" if unseen).
    Local workers are always looked at (a file read)."""
    from pipeline.core.hosts import worker_hosts
    from pipeline.core.stage_observe import is_live, stage_status

    now = time.time() if now is None else now
    cfg = root.config
    timeout_s = float(cfg.get("orchestrate.status_timeout_s")) if timeout_s is None else timeout_s
    orch = stage_status(root, "orchestrate", now)
    views = {}
    if is_live(orch):
        views = {v.get("name"): v for v in (orch.get("info") or {}).get("workers", []) or []}
    hosts, workers = worker_hosts(root, bool(cfg.get("orchestrate.implicit_local_worker")),
                                  include_ray=True)
    looks: dict[str, dict] = {}

    def look_at(h):
        try:
            looks[h.name] = _look(root, hosts, h, timeout_s, now)
        except Exception as exc:
            looks[h.name] = {"stage_state": None, "error": f"{h.name}: {exc}", "kind": "error"}

    if not look or any(h.ray for h in workers):
        # a Ray worker is never joined from a status (heavy, and a second driver): it is
        # what the running orchestrator last saw, like an SSH host with look=False
        for h in workers:
            if h.local or (look and not h.ray):
                continue                      # a file read: always looked at
            seen = views.get(h.name)
            if seen is None:
                looks[h.name] = {"stage_state": None, "kind": "unreachable",
                                 "error": f"{h.name}: not seen (the orchestrator is not running)"}
            else:
                looks[h.name] = {"stage_state": "running" if seen.get("state") == "running" else "stopped",
                                 "pid": seen.get("pid"), "info": {"batch": seen.get("in_hand")},
                                 "error": None}
    for h in workers:
        if h.local:
            look_at(h)                        # a file read: a thread would cost more than it
    workers_to_look = [h for h in workers if look and not h.local and not h.ray]
    threads = [threading.Thread(target=look_at, args=(h,), daemon=True) for h in workers_to_look]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout_s * 3 + 1
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    out = []
    for h in workers:
        seen = views.get(h.name) or {}
        lk = looks.get(h.name) or {"stage_state": None, "kind": "unreachable",
                                   "error": f"{h.name}: no answer within {timeout_s:g}s"}
        if lk.get("error"):
            state, error = lk.get("kind", "error"), lk["error"]
        elif seen.get("state") in ("error", "unreachable"):
            state, error = seen["state"], seen.get("last_error")
        elif lk["stage_state"] == "stale":
            state = "error"
            error = f"{h.name}: worker heartbeat is {lk.get('heartbeat_age_s')} s old"
        elif lk["stage_state"] in (None, "stopped", "crashed"):
            state, error = "stopped", seen.get("last_error")
        else:
            state, error = "running", seen.get("last_error")
        out.append({
            "name": h.name, "host": h.describe(), "local": bool(h.local), "state": state,
            "kind": h.kind, "ray": seen.get("ray"),
            "stage_state": lk.get("stage_state"), "pid": lk.get("pid"),
            "busy": bool((lk.get("info") or {}).get("batch")),
            "batch": (lk.get("info") or {}).get("batch"),
            "batches_in_flight": seen.get("batches_in_flight", 0),
            "images_in_flight": seen.get("images_in_flight", 0),
            "images_per_s": seen.get("images_per_s"),
            "imported_images": seen.get("imported_images"),
            "last_error": error, "seen_by_orchestrator": bool(seen),
            # its worker waits below a disk floor (pipeline/core/diskfloor.py INFO_KEY)
            "disk_low": ((lk.get("info") or {}).get("disk_low") if lk.get("stage_state") == "blocked"
                         else None) or seen.get("disk_low"),
        })
    return out


@status_provider("workers", order=20)
def workers_section(root, conn, now, errors) -> list[dict]:
    """Each worker host as the orchestrator last saw it (look=False: no SSH from a status)."""
    return workers_status(root, look=False)
