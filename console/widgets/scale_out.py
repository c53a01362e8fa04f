"""Scale-out rows and lines: a Ray worker as a row of the stages table (its detail as a line
under the table), and a re-embed in progress as one line under the queues. Formatting only:
the data is `status`'s (pipeline/stages/orchestrate/status.py workers_status with its
``ray`` view, pipeline/reembed/status.py), through console/adapters.py."""
from __future__ import annotations

from pipeline.core import fmt

# workers_status's states, as the stages table's (an error keeps the crashed colour)
_STATES = {"running": "running", "stopped": "stopped", "unreachable": "unreachable",
           "error": "error"}
RAY_REFUSAL = ("{name} is a Ray cluster: its actors start with the orchestrator and drain "
               "when it stops (local/orchestrate)")
SERVE_REFUSAL = ("{key} serves a re-embed: it starts with `imageselector reembed MODEL --workers "
                 "HOST` and stops when that command stops (Ctrl-C) or sits idle")


def _actors(ray: dict) -> str:
    return f"{ray.get('actors_ready', 0)}/{ray.get('actors', 0)} actors"


def _batches(ray: dict) -> str:
    return f"{ray.get('running', 0)} running, {ray.get('queued', 0)} queued"


def ray_row(worker: dict) -> dict:
    """A Ray worker as a stages-table row (host = its name in hosts.toml, stage = worker)."""
    ray = worker.get("ray") or {}
    draining = bool(ray.get("stopping")) and worker.get("state") == "running"
    state = "stopping" if draining else _STATES.get(worker.get("state"), "unreachable")
    row = {"name": "worker", "host": worker["name"], "kind": "ray", "state": state,
           "label": "draining" if draining else None, "rate": worker.get("images_per_s"),
           "current": f"ray {_actors(ray)} · {_batches(ray)}" if ray else "",
           "ray": ray}
    if worker.get("last_error") and state != "running":
        row["message"] = worker["last_error"]
    return row


def ray_line(worker: dict) -> str:
    """'ray1 ray://10.0.0.5:10001: 3/4 actors on 2 nodes, 1 GPU each · batches 2 running,
    5 queued · 1 retried · 1,234/min · draining'."""
    ray = worker.get("ray")
    if not ray:
        return f"{worker.get('host') or worker['name']}: not seen by the orchestrator"
    gpus = ray.get("gpus_per_actor") or 0
    need = (f"{gpus:g} GPU each" if gpus else f"{ray.get('cpus_per_actor') or 0:g} CPU each")
    parts = [f"{worker['name']} {ray.get('address', '?')}: {_actors(ray)} on "
             f"{ray.get('nodes', 0)} node{'' if ray.get('nodes') == 1 else 's'}, {need}",
             f"batches {_batches(ray)}", f"{ray.get('retried', 0)} retried",
             fmt.per_minute(worker.get("images_per_s")) if worker.get("images_per_s")
             else "no rate yet"]
    if ray.get("actors_starting"):
        parts.insert(1, f"{ray['actors_starting']} starting")
    if ray.get("stopping"):
        parts.append("draining")
    return " · ".join(parts)


def reembed_line(job: dict, now: float) -> str:
    """'reembed dinov2_large: 12 of 40 slices, 123,456 of 5,300,000 rows, since 14:02,
    ~2h left' (the rate since it started)."""
    head = (f"reembed {job['model']}: {fmt.count(job['slices_done'])} of "
            f"{fmt.count(job['slices_total'])} slices, {fmt.count(job['rows_done'])} of "
            f"{fmt.count(job['rows_total'])} rows, since {fmt.hour_minute(job['started'])}")
    if job.get("switched"):
        return f"{head}, switched on for search"
    left = job["rows_total"] - job["rows_done"]
    if left <= 0:
        return f"{head}, every slice done, not switched on yet"
    elapsed = now - float(job["started"])
    if job["rows_done"] <= 0 or elapsed <= 0:
        return f"{head}, no estimate yet"
    return f"{head}, {fmt.eta(left / (job['rows_done'] / elapsed))} left"


def reembed_text(jobs: list[dict], now: float) -> str:
    """One line per re-embed in progress; empty when none runs."""
    return "\n".join(reembed_line(j, now) for j in jobs or [])
