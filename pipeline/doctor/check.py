"""One line of the doctor's verdict. ``severity``: ``ok`` (passed), ``note`` (not checked
here, with the reason), ``warning`` (worth fixing, the run works), ``failure`` (would stop or
spoil the run: the doctor exits 1)."""
from __future__ import annotations

from dataclasses import asdict, dataclass

OK, NOTE, WARNING, FAILURE = "ok", "note", "warning", "failure"
SEVERITIES = (OK, NOTE, WARNING, FAILURE)


@dataclass(frozen=True)
class Check:
    area: str
    name: str
    ok: bool
    severity: str
    text: str
    fix: str = ""

    def __post_init__(self):
        if self.severity not in SEVERITIES:
            raise ValueError(f"unknown severity {self.severity!r}")

    def as_json(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        mark = {OK: "ok  ", NOTE: "--  ", WARNING: "WARN", FAILURE: "FAIL"}[self.severity]
        text = f"{mark} {self.area}: {self.name}: {self.text}"
        return text + (f"\n       fix: {self.fix}" if self.fix and not self.ok else "")


def passed(area: str, name: str, text: str) -> Check:
    return Check(area, name, True, OK, text)


def noted(area: str, name: str, text: str) -> Check:
    return Check(area, name, True, NOTE, text)


def problem(area: str, name: str, text: str, fix: str, severity: str = FAILURE) -> Check:
    return Check(area, name, False, severity, text, fix)


def exit_code(checks: list[Check]) -> int:
    """0 when nothing would stop or spoil the run, else 1."""
    return 1 if any(c.severity == FAILURE for c in checks) else 0


def summary(checks: list[Check], verbose: bool = False) -> str:
    """The verdict's last line (the CLI and the console's doctor screen)."""
    failures = sum(c.severity == FAILURE for c in checks)
    problems = sum(not c.ok for c in checks)
    return (f"{len(checks)} checks: {len(checks) - problems} ok, {failures} would stop or spoil "
            f"the run, {problems - failures} warnings"
            + ("" if verbose else " (--verbose lists the ok ones)"))
