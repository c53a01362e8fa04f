"""Cron expressions: parsing, fire times before and after a moment (local time), and the
longest gap between fires (what "overdue" is measured against). Pure functions, cached where
a refresh loop calls them."""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from pipeline.core.errors import UserError

_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day", 1, 31), ("month", 1, 12), ("weekday", 0, 7))
ALIASES = {"@hourly": "0 * * * *", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
            "@weekly": "0 0 * * 0", "@monthly": "0 0 1 * *", "@yearly": "0 0 1 1 *"}


@dataclass(frozen=True)
class Cron:
    text: str
    minutes: frozenset
    hours: frozenset
    days: frozenset
    months: frozenset
    weekdays: frozenset          # 0 = Sunday
    day_any: bool
    weekday_any: bool

    def matches_day(self, d: datetime) -> bool:
        if d.month not in self.months:
            return False
        dom = d.day in self.days
        dow = (d.isoweekday() % 7) in self.weekdays
        if self.day_any and self.weekday_any:
            return True
        if self.day_any:
            return dow
        if self.weekday_any:
            return dom
        return dom or dow  # cron: both restricted -> either matches


# pure, and a Cron is frozen: the status snapshot parses every job's cron on each refresh
@functools.lru_cache(maxsize=512)
def parse_cron(text: str) -> Cron:
    expr = ALIASES.get(text.strip(), text.strip())
    parts = expr.split()
    if len(parts) != 5:
        raise UserError(f"cron expression {text!r}: needs 5 fields (minute hour day month weekday)")
    sets = []
    for (name, lo, hi), part in zip(_FIELDS, parts):
        values: set[int] = set()
        for item in part.split(","):
            m = re.fullmatch(r"(\*|\d+(?:-\d+)?)(?:/(\d+))?", item)
            if not m:
                raise UserError(f"cron expression {text!r}: bad {name} field {part!r}")
            rng, step = m.group(1), int(m.group(2) or 1)
            if step < 1:
                raise UserError(f"cron expression {text!r}: bad step in {part!r}")
            if rng == "*":
                a, b = lo, hi
            elif "-" in rng:
                a, b = map(int, rng.split("-"))
            else:
                a = b = int(rng)
                if m.group(2):
                    b = hi
            if a < lo or b > hi or a > b:
                raise UserError(f"cron expression {text!r}: {name} {item!r} outside {lo}-{hi}")
            values.update(range(a, b + 1, step))
        sets.append(values)
    weekdays = {0 if v == 7 else v for v in sets[4]}
    return Cron(text, frozenset(sets[0]), frozenset(sets[1]), frozenset(sets[2]),
                frozenset(sets[3]), frozenset(weekdays), parts[2] == "*", parts[4] == "*")


def prev_fire(cron: Cron, at: float) -> float | None:
    """The latest scheduled time <= ``at`` (local time), within the last 400 days."""
    t = datetime.fromtimestamp(at).replace(second=0, microsecond=0)
    day = t.replace(hour=0, minute=0)
    for back in range(400):
        d = day - timedelta(days=back)
        if not cron.matches_day(d):
            continue
        for h in sorted(cron.hours, reverse=True):
            for mnt in sorted(cron.minutes, reverse=True):
                cand = d.replace(hour=h, minute=mnt)
                if cand <= t:
                    return cand.timestamp()
    return None


def next_fire(cron: Cron, after: float) -> float | None:
    """The first scheduled time > ``after`` (local time), within the next 400 days."""
    t = datetime.fromtimestamp(after).replace(second=0, microsecond=0)
    day = t.replace(hour=0, minute=0)
    for fwd in range(400):
        d = day + timedelta(days=fwd)
        if not cron.matches_day(d):
            continue
        for h in sorted(cron.hours):
            for mnt in sorted(cron.minutes):
                cand = d.replace(hour=h, minute=mnt)
                if cand.timestamp() > after:
                    return cand.timestamp()
    return None


def next_fire_cached(cron_text: str, after: float) -> float | None:
    """next_fire for a refresh loop: fires fall on whole minutes, so the first fire after any
    moment of a minute is the first after that minute's start; kept per (cron text, minute)."""
    return _next_fire_after_minute(cron_text, int(after // 60))


@functools.lru_cache(maxsize=512)
def _next_fire_after_minute(cron_text: str, minute: int) -> float | None:
    return next_fire(parse_cron(cron_text), minute * 60.0)


@functools.lru_cache(maxsize=512)
def job_interval(cron_text: str) -> float:
    """The longest gap between consecutive runs over a reference fortnight: what "overdue"
    is measured against. A pure function of the cron text, so it is computed once per text
    (it walks a fortnight of fire times: it was most of every status snapshot)."""
    cron = parse_cron(cron_text)
    t = datetime(2024, 1, 1).timestamp()
    end = t + 15 * 86400
    fires = []
    while t < end and len(fires) < 400:
        n = next_fire(cron, t)
        if n is None:
            break
        fires.append(n)
        t = n
    if len(fires) < 2:
        return 366 * 86400.0
    return max(b - a for a, b in zip(fires, fires[1:]))
