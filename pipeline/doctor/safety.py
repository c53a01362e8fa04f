"""The safe defaults (pipeline/core/safety.py): a production root without a backup target or
with alerts off is a failure; a sandbox root, a warning."""
from __future__ import annotations

from pipeline.doctor.check import Check, passed, problem
from pipeline.doctor.context import DoctorContext
from pipeline.doctor.registry import doctor_check

AREA = "safety"


@doctor_check(AREA, order=60)
def safety_checks(ctx: DoctorContext) -> list[Check]:
    from pipeline.core.safety import safety_problems

    found = safety_problems(ctx.root)
    if not found:
        return [passed(AREA, "safe defaults", "a backup target is configured and alerts are on")]
    out = []
    for p in found:
        # the safety text is "what: why (fix)": the fix goes on its own line
        what, _, rest = p.text.partition(": ")
        why, _, fix = rest.partition(" (")
        out.append(problem(AREA, p.key, why or p.text, fix.rstrip(")") or f"see {ctx.config_path}",
                           p.severity))
    return out
