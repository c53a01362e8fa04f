"""Short text forms of ages, rates, counts and sizes (pure functions; CLI and console)."""
from __future__ import annotations

import time


def duration(seconds) -> str:
    """12s, 5m, 3.2h, 2.1d; '-' for unknown."""
    if seconds is None:
        return "-"
    seconds = max(0.0, float(seconds))
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def count(n) -> str:
    return "?" if n is None else f"{int(n):,}"


def rate(per_s) -> str:
    """Items per second, or per minute when slow."""
    if per_s is None:
        return "-"
    per_s = float(per_s)
    if per_s == 0:
        return "0/s"
    if abs(per_s) < 1:
        return f"{per_s * 60:.1f}/min"
    if abs(per_s) >= 10:
        return f"{per_s:.0f}/s"
    return f"{per_s:.1f}/s"


def per_minute(per_s, signed: bool = False) -> str:
    """Items per minute, always in that unit (a column of rates shows one unit): 2,292/min,
    82/min, 1.4/min; '+' on growth when ``signed``; '-' for unknown."""
    if per_s is None:
        return "-"
    value = float(per_s) * 60
    sign = "+" if signed and value > 0 else ""
    if value == 0:
        return "0/min"
    if abs(value) < 10:
        return f"{sign}{value:.1f}/min"
    return f"{sign}{value:,.0f}/min"


def size(n_bytes) -> str:
    if n_bytes is None:
        return "-"
    value = float(n_bytes)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


def clock_time(ts) -> str:
    """Local wall-clock time of a timestamp, HH:MM:SS."""
    if ts is None:
        return "-"
    return time.strftime("%H:%M:%S", time.localtime(float(ts)))


def hour_minute(ts) -> str:
    """Local wall-clock time of a timestamp, HH:MM (a forecast: seconds would be false
    precision)."""
    if ts is None:
        return "-"
    return time.strftime("%H:%M", time.localtime(float(ts)))


def date_time(ts) -> str:
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(float(ts)))


def eta(seconds) -> str:
    if seconds is None:
        return "-"
    return "~" + duration(seconds)


def shorten(text, width: int) -> str:
    text = "" if text is None else str(text)
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"
