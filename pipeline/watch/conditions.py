"""A watched condition and its alert text: the first line fits an SMS (160 characters) and
names the thing, the host and the fix; further lines carry the detail."""
from __future__ import annotations

import time
from dataclasses import dataclass

# the SMS-length first line is shared with every other alert sender (pipeline/core/alerts.py)
from pipeline.core.alerts import SMS_CHARS, sms_line
from pipeline.core.alerts import cut_text as _cut

CLEARED_KIND = "condition_cleared"


@dataclass(frozen=True)
class Condition:
    """Something wrong now. ``key`` is stable from run to run while it stays wrong (it names
    the kind, the thing and the host, never a figure that changes)."""

    kind: str          # the alert kind (pipeline/core/alerts.py KINDS)
    thing: str         # what is wrong: "backup hdd1tb", "disk /Volumes/HDD1TB", "stage download"
    host: str
    problem: str       # short: what is wrong with it
    fix: str           # short: what the operator does
    detail: str = ""   # more lines, for e-mail

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.thing}@{self.host}"

    def text(self) -> str:
        first = sms_line(self.thing, self.host, self.problem, self.fix)
        return first + ("\n" + self.detail if self.detail else "")


def ok_again_text(kind: str, text: str, opened_at: float, now: float) -> str:
    """The one "ok again" alert for a condition that cleared (kind ``condition_cleared``)."""
    first = (text.splitlines() or [""])[0]
    what = first.split(": ", 1)[0]                       # "THING on HOST"
    since = time.strftime("%Y-%m-%d %H:%M", time.localtime(opened_at))
    line = _cut(f"ok again: {what} ({kind} since {since})", SMS_CHARS)
    return f"{line}\nwas: {first}\ncleared at {time.strftime('%Y-%m-%d %H:%M', time.localtime(now))}"
