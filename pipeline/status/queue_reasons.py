"""Why a queue is not moving: the reason and, where one can be told, when it will move next.

A plain function over the queue depths, the stage rows (pipeline.core.stage_observe rows, any
host) and two numbers from the config, so `status` and the console say the same thing:
``downloaded`` waits for a full batch (orchestrate sends only whole batches of
orchestrate.batch_size, except in the weekly run's drain), ``embedded`` waits for a full tar
(a tar holds a whole range of archive.images_per_tar rows), and a queue whose consuming stage
is not running says so. The next action time is when the producing stage, at its current
rate, fills the batch or the tar.
"""
from __future__ import annotations

import time

from pipeline.core.fmt import hour_minute
from pipeline.status.registry import status_provider

# Which stage drains each queue and which one fills it.
CONSUMER = {"discovered": "download", "downloaded": "orchestrate", "batched": "worker",
            "embedded": "tar"}
PRODUCER = {"downloaded": "download", "embedded": "worker"}
# The stages that move images, in pipeline order (sync adds them; the others drain a queue).
IMAGE_STAGES = ("sync", "download", "orchestrate", "worker", "tar")
MOVING = "running"


def _rows_of(stages: list[dict], name: str) -> list[dict]:
    return [r for r in stages if r.get("name") == name]


def _running(stages: list[dict], name: str) -> list[dict]:
    return [r for r in _rows_of(stages, name) if r.get("state") == MOVING]


def _rate(stages: list[dict], name: str) -> float:
    """The stage's rate summed over its running rows (several worker hosts)."""
    return sum(float(r.get("rate") or 0) for r in _running(stages, name))


def _not_running(stages: list[dict], name: str) -> str | None:
    """'tar is stopped' when no row of the stage runs (None when one does, or when there is
    no row of it to tell)."""
    if _running(stages, name):
        return None
    rows = _rows_of(stages, name)
    if not rows:   # not known yet (the console's first poll): say nothing rather than guess
        return None
    if len(rows) > 1:   # one stage on several hosts (the workers)
        states = sorted({r.get("state") or "?" for r in rows})
        return f"no {name} is running ({', '.join(states)})"
    row = rows[0]
    if row.get("state") == "blocked" and row.get("blocked_reason"):
        return f"{name} is blocked: {row['blocked_reason']}"
    return f"{name} is {row.get('state') or 'not running'}"


def _fill(depth: int, size: int, what: str, producer: str, stages: list[dict],
          now: float, unknown: tuple) -> tuple[str, float | None, str | None]:
    """'waits for a full batch of 50: 38 of 50' and when the producer fills it."""
    reason = f"waits for a full {what} of {size:,}: {depth:,} of {size:,}"
    rate = _rate(stages, producer)
    if rate > 0:
        at = now + (size - depth) / rate
        return reason, at, f"full ~{hour_minute(at)} at the {producer} rate"
    if producer in unknown or not _rows_of(stages, producer):
        return reason, None, None
    return reason, None, f"{producer} is not adding any"


def queue_reasons(depths: dict, stages: list[dict], batch_size: int, per_tar: int,
                  now: float | None = None, flush: bool = False,
                  unknown: tuple = ()) -> dict[str, dict]:
    """{queue: {"reason", "next_at", "next"}} for each non-empty queue that is held back.

    ``stages``: rows with name, state, rate, blocked_reason (local and worker hosts).
    ``flush``: the running orchestrator was asked for the last partial batch (its heartbeat's
    info.flush), so a short batch is not held back. ``unknown``: stages whose rows are not
    all given (the workers of other hosts, for `status`): nothing is said of their state."""
    now = time.time() if now is None else now
    out: dict[str, dict] = {}
    for queue, consumer in CONSUMER.items():
        depth = depths.get(queue) or 0
        if depth <= 0:
            continue
        parts: list[str] = []
        next_at, next_text = None, None
        size, what = {"downloaded": (batch_size, "batch"), "embedded": (per_tar, "tar")}.get(
            queue, (0, ""))
        if size and depth < size and not (queue == "downloaded" and flush):
            reason, next_at, next_text = _fill(depth, size, what, PRODUCER[queue], stages, now,
                                               unknown)
            parts.append(reason)
        stopped = None if consumer in unknown else _not_running(stages, consumer)
        if stopped:
            parts.append(stopped)
        if parts:
            out[queue] = {"reason": "; ".join(parts), "next_at": next_at, "next": next_text}
    return out


def reasons_for_root(root, depths: dict, stages: list[dict], now: float | None = None,
                     unknown: tuple = ()) -> dict[str, dict]:
    """queue_reasons with the root's numbers: the running orchestrator's batch size (its
    heartbeat, which a --batch-size changes) or orchestrate.batch_size, and
    archive.images_per_tar."""
    orch = next((r for r in stages if r.get("name") == "orchestrate"
                 and r.get("host", "local") == "local"), None)
    info = (orch or {}).get("info") or {}
    live = bool(orch and orch.get("pid"))
    batch_size = int(info.get("batch_size") or 0) if live else 0
    batch_size = batch_size or int(root.config.get("orchestrate.batch_size"))
    per_tar = int(root.config.get("archive.images_per_tar"))
    return queue_reasons(depths, stages, batch_size, per_tar, now,
                         flush=live and bool(info.get("flush")), unknown=unknown)


@status_provider("queue_reasons", order=20)
def queue_reasons_section(root, conn, now, errors):
    """`status --json`'s queue_reasons (this host's stages; the console adds the workers')."""
    if conn is None:
        return None
    from pipeline.core.db import queue_depths
    from pipeline.core.stage_observe import stage_status

    stages = [stage_status(root, name, now) for name in ("download", "orchestrate", "tar")]
    # the workers run on other hosts too (reading them takes SSH): not judged here
    return reasons_for_root(root, queue_depths(conn), stages, now, unknown=("worker",))
