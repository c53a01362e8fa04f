"""The `pipeline` stage: the weekly run (pipeline/stages/runner/runner.py)."""
from __future__ import annotations


def run(ctx) -> int:
    from pipeline.stages.runner.runner import Runner

    return Runner(ctx).run()


def on_refused(root, reason: str) -> None:
    """A refused start (KILL_PIPELINE present, another runner alive) alerts the operator."""
    from pipeline.core.alerts import Alerter

    try:
        Alerter(root).send("run_refused", f"pipeline run refused: {reason}")
    except Exception:  # the refusal itself is what the operator must see; never mask it
        pass
