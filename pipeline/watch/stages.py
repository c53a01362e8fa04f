"""stage_stale: a stage that should be running has no fresh heartbeat.

- a local stage whose state is ``stale`` (alive, heartbeat stopped), ``crashed`` (gone
  without recording its exit) or ``unreachable``;
- a worker host (the snapshot's ``workers``): while the orchestrator is running, a worker
  that is unreachable (e.g. the host went to sleep) or answers with an error; at any time, a
  worker whose own heartbeat is stale or crashed.
"""
from __future__ import annotations

from pipeline.core.fmt import duration
from pipeline.core.stage import LIVE_STATES
from pipeline.watch.conditions import Condition
from pipeline.watch.context import WatchContext

KIND = "stage_stale"
BAD_STATES = ("stale", "crashed", "unreachable")
_LIVE = {s.value for s in LIVE_STATES} - {"stale"}


def _stage_condition(ctx: WatchContext, st: dict) -> Condition:
    name, state = st["name"], st["state"]
    age = st.get("heartbeat_age_s")
    if state == "stale":
        problem = f"stale: alive, heartbeat {duration(age)} old"
        fix = f"imageselector stop {name} --force, then imageselector start {name}"
    elif state == "crashed":
        problem = f"crashed (pid {st.get('last_pid')} gone, heartbeat {duration(age)} old)"
        fix = f"read logs/{name}.log, then imageselector start {name}"
    else:
        problem = "unreachable: its host does not answer"
        fix = "wake the host or check its network, then start the stage again"
    return Condition(KIND, f"stage {name}", ctx.host, problem, fix,
                     f"log: {st.get('log')}")


def _worker_condition(w: dict, orchestrating: bool) -> Condition | None:
    stage_state, state = w.get("stage_state"), w.get("state")
    if stage_state in ("stale", "crashed"):
        problem = f"worker {stage_state}: {w.get('last_error') or 'no fresh heartbeat'}"
    elif orchestrating and state in ("unreachable", "error"):
        problem = f"worker {state}: {w.get('last_error') or 'no answer'}"
    else:
        return None
    fix = f"wake the host, then imageselector hosts check {w['name']}"
    detail = f"host: {w.get('host')}"
    if orchestrating:
        detail += "\nthe orchestrator is running and waits for this worker"
    return Condition(KIND, "worker", w["name"], problem, fix, detail)


def _own_root_workers(ctx: WatchContext) -> set[str]:
    """Local worker hosts whose root is this root: the "worker" stage row covers them."""
    from pathlib import Path

    from pipeline.core.hosts import worker_hosts

    _, hosts = worker_hosts(ctx.root, bool(ctx.cfg("orchestrate.implicit_local_worker")))
    mine = Path(ctx.root.path).resolve()
    return {h.name for h in hosts if h.local and (h.root is None or Path(h.root).resolve() == mine)}


def check_stages(ctx: WatchContext) -> list[Condition] | None:
    """This root's stages (the snapshot's ``stages``: heartbeat files and /proc)."""
    stages = ctx.snap.get("stages")
    if stages is None:
        return None
    return [_stage_condition(ctx, st) for st in stages if st["state"] in BAD_STATES]


def check_workers(ctx: WatchContext) -> list[Condition] | None:
    """The worker hosts (the snapshot's ``workers``; a local worker is the "worker" stage row,
    so only the other hosts are judged here)."""
    workers = ctx.snap.get("workers")
    if workers is None or any(e.startswith("workers:") for e in ctx.snap.get("errors", [])):
        return None
    stages = ctx.snap.get("stages") or []
    orchestrating = any(st["name"] == "orchestrate" and st["state"] in _LIVE for st in stages)
    own = _own_root_workers(ctx)
    out = []
    for w in workers:
        if w.get("local") and w["name"] in own:
            continue
        cond = _worker_condition(w, orchestrating)
        if cond is not None:
            out.append(cond)
    return out
