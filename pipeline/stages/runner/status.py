"""The weekly run's part of the status snapshot: its last summary and the recent alerts."""
from __future__ import annotations

from pipeline.status.registry import status_provider


@status_provider("runner", order=10)
def runner_section(root, conn, now, errors) -> dict | None:
    if conn is None:
        return None
    from pipeline.core.alerts import recent_alerts
    from pipeline.stages.runner.runner import summary_json

    last = summary_json(conn)
    return {"last_run": None if last is None else {k: last[k] for k in ("started", "ended", "killed", "summary")},
            "alerts": recent_alerts(conn, 20)}
