"""The `pipeline` stage: the weekly run (pipeline/runner.py)."""
from __future__ import annotations


def run(ctx) -> int:
    from pipeline.runner import Runner

    return Runner(ctx).run()


def on_refused(root, reason: str) -> None:
    """A refused start (KILL_PIPELINE present, another runner alive) alerts the operator."""
    from pipeline.alerts import Alerter

    try:
        Alerter(root).send("run_refused", f"pipeline run refused: {reason}")
    except Exception:  # the refusal itself is what the operator must see; never mask it
        pass
