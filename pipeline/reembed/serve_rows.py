"""A worker's re-embed servers (serve.py) as rows of the Stages panel and of `status`: an
operator re-embedding on the home lab sees which host holds which model and slice, and a
server that died or froze mid-slice, beside that host's worker stage.

A server is not a stage: it is started by the re-embed and ends with it (or after its idle
time), so its row has ``kind`` SERVE_KIND and the stage keys refuse it. A server that stopped
has no row; one whose heartbeat has not moved for stage.stale_after_s is "stale"; a heartbeat
untouched for GONE_AFTER_S is a leftover of an old re-embed and has no row either."""
from __future__ import annotations

from pipeline.core.stage import StageState

SERVE_KIND = "reembed-serve"
ROW_NAME = "reembed"          # the stage column's word (it is narrow); the model is in current
GONE_AFTER_S = 3600.0
STATE_OF = {"loading": StageState.RUNNING, "ready": StageState.RUNNING,
            "busy": StageState.RUNNING, "error": StageState.CRASHED}


def _current(model: str, hb: dict) -> str:
    state = hb.get("state")
    if state == "busy":
        return f"{model}: slice {hb.get('slice')}"
    if state == "loading":
        return f"{model}: loading the model"
    if state == "error":
        return f"{model}: {hb.get('error') or 'failed'}"
    return f"{model}: ready, {hb.get('slices') or 0} slices done"


def serve_row(host: str, model: str, hb: dict | None, now: float, stale_after_s: float
              ) -> dict | None:
    """The row of MODEL's server on HOST from its heartbeat (``now`` on the host's clock);
    None when there is nothing to show. Its log (serve.LOG_NAME) is the reader's to place:
    a local worker's full path, a host's through host_log_tail."""
    if not hb or hb.get("state") == "stopped" or hb.get("t") is None:
        return None
    age = now - float(hb["t"])
    if age > GONE_AFTER_S:
        return None
    state = STATE_OF.get(str(hb.get("state")), StageState.RUNNING)
    if state == StageState.RUNNING and age > stale_after_s:
        state = StageState.STALE
    message = (f"no heartbeat for {age:.0f} s: the server died or froze (the re-embed gives "
               f"its slice to another host)" if state == StageState.STALE else hb.get("error"))
    return {"name": ROW_NAME, "kind": SERVE_KIND, "model": model, "host": host,
            "state": state.value, "pid": hb.get("pid") if state == StageState.RUNNING else None,
            "last_pid": hb.get("pid"), "uptime_s": None, "heartbeat_age_s": round(age, 1),
            "rate": None, "current": _current(model, hb), "counters": {"slices": hb.get("slices") or 0},
            "info": {}, "last_exit": None, "log": None, "error": None, "message": message}
