"""`/` search in a log: the matching lines with context lines around them, like grep -C."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LogLine:
    number: int          # 1-based, within the lines searched
    text: str
    match: bool


SEPARATOR = None  # between two groups that are not adjacent


def search_with_context(lines: list[str], needle: str, context: int = 2) -> list[LogLine | None]:
    """Case-insensitive substring search. Returns LogLines in order, with None between groups."""
    if not needle:
        return [LogLine(i + 1, text, False) for i, text in enumerate(lines)]
    needle_lower = needle.lower()
    hits = [i for i, text in enumerate(lines) if needle_lower in text.lower()]
    keep: set[int] = set()
    for i in hits:
        keep.update(range(max(0, i - context), min(len(lines), i + context + 1)))
    hit_set = set(hits)
    out: list[LogLine | None] = []
    previous = None
    for i in sorted(keep):
        if previous is not None and i != previous + 1:
            out.append(SEPARATOR)
        out.append(LogLine(i + 1, lines[i], i in hit_set))
        previous = i
    return out
