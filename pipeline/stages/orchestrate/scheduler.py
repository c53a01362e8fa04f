"""How many batches each worker holds, and who gets the next one: per-worker throughput.

A worker's rate is its own images/s over its recent batches (from the results' wall time);
its ship time is how long preparing and sending it a batch takes. It keeps one batch running
and enough queued that the next is there before the current ends: 1 + ceil((ship + poll) /
batch time), between min_in_flight and max_in_flight. When images are scarce, the next batch
goes to the worker that would finish it first.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class Throughput:
    rate: float | None = None        # images/s (EWMA)
    ship_s: float | None = None      # seconds to prepare and send a batch (EWMA)

    def add_rate(self, value: float | None, weight: float = 0.5) -> None:
        if value and value > 0:
            self.rate = value if self.rate is None else (1 - weight) * self.rate + weight * value

    def add_ship(self, seconds: float | None, weight: float = 0.5) -> None:
        if seconds is not None and seconds >= 0:
            self.ship_s = seconds if self.ship_s is None else (1 - weight) * self.ship_s + weight * seconds


def target_in_flight(t: Throughput, batch_size: int, poll_s: float, lo: int, hi: int) -> int:
    if not t.rate or t.ship_s is None:
        return lo
    batch_s = batch_size / t.rate
    return max(lo, min(hi, 1 + math.ceil((t.ship_s + poll_s) / batch_s)))


def effective_rate(t: Throughput, known: list[float], default: float) -> float:
    """A worker with no figure yet is assumed as fast as the fastest known (so it gets tried)."""
    if t.rate:
        return t.rate
    return max(known) if known else default


def choose(candidates: list[tuple[str, int, Throughput]], batch_size: int,
           default_rate: float) -> str | None:
    """``candidates``: (name, images in flight, throughput). The earliest finish wins."""
    if not candidates:
        return None
    known = [t.rate for _, _, t in candidates if t.rate]
    best = min(candidates, key=lambda c: ((c[1] + batch_size) / effective_rate(c[2], known, default_rate),
                                          c[1], c[0]))
    return best[0]
