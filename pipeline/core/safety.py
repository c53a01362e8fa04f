"""The safe-default checks: a root that runs without a backup target, or with alerts off, is
not safe to leave unattended. On a production root each is a failure of the weekly run (its
summary and exit status say so); on a sandbox root a warning. `status`, the console and
`doctor` show the same lines."""
from __future__ import annotations

from dataclasses import asdict, dataclass

FAILURE, WARNING = "failure", "warning"


@dataclass(frozen=True)
class SafetyProblem:
    key: str          # "not backed up", "alerts off"
    severity: str     # FAILURE on a production root, WARNING on a sandbox root
    text: str         # one line, with the fix

    def as_json(self) -> dict:
        return asdict(self)


def safety_problems(root) -> list[SafetyProblem]:
    severity = FAILURE if root.profile == "production" else WARNING
    where = root.config_path
    out = []
    targets = root.config.get("backup.targets") or {}
    if not targets:
        out.append(SafetyProblem(
            "not backed up", severity,
            f"not backed up: no backup target is configured (add a [backup.targets.NAME] table "
            f"with kind and path to {where})"))
    if not root.config.get("alerts.enabled"):
        out.append(SafetyProblem(
            "alerts off", severity,
            f"alerts off: nothing reaches the operator (set enabled = true, smtp_host and to in "
            f"the [alerts] table of {where}; then `imageselector doctor --send-test-alert`)"))
    return out
