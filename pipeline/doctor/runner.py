"""Run the doctor's checks: ``run_checks(root)`` is what `imageselector doctor` prints and what
a console panel can show (same list, same lines)."""
from __future__ import annotations

import time

from pipeline.core.errors import UserError
from pipeline.doctor.check import Check, problem
from pipeline.doctor.context import DoctorContext
from pipeline.doctor.registry import areas as registered_areas


def area_names() -> list[str]:
    return [a.name for a in registered_areas()]


def run_checks(root, host: str | None = None, send_test_alert: bool = False,
               areas: list[str] | None = None, now: float | None = None) -> list[Check]:
    """Every check of every area (or of ``areas``), in order. An area that cannot finish is
    one failure line naming why; the other areas still run."""
    ctx = DoctorContext(root, host=host, send_test_alert=send_test_alert,
                        now=time.time() if now is None else now)
    known = registered_areas()
    if areas is not None:
        unknown = sorted(set(areas) - {a.name for a in known})
        if unknown:
            raise UserError(f"unknown doctor area(s) {', '.join(unknown)} "
                            f"(areas: {', '.join(a.name for a in known)})")
    out: list[Check] = []
    for area in known:
        if areas is not None and area.name not in areas:
            continue
        try:
            out.extend(area.fn(ctx))
        except UserError as exc:
            out.append(problem(area.name, "configuration", str(exc),
                               f"correct it in {ctx.config_path}"))
        except Exception as exc:  # a bug in one area must not hide the others
            out.append(problem(area.name, "check failed", f"{type(exc).__name__}: {exc}",
                               "report this; the other areas were checked"))
    return out
