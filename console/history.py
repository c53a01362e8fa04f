"""Queue depth history: what the sparklines, the net flow per queue and the ETAs are made of.

Pure Python, fed one sample per poll of the DB; nothing here reads the DB."""
from __future__ import annotations

from collections import deque

# Which stage drains each queue (its rate is the queue's throughput): the queue reasons' table.
from pipeline.status.queue_reasons import CONSUMER as QUEUE_CONSUMER  # noqa: F401 (re-exported)

# The net flow and the ETA are over the last minute, like a stage's rate (its heartbeat's),
# so a queue that stopped moving shows no flow a minute later, not ten.
RECENT_S = 60.0


class QueueHistory:
    def __init__(self, window_s: float = 600.0, max_samples: int = 720):
        self.window_s = float(window_s)
        self.samples: deque[tuple[float, dict]] = deque(maxlen=max_samples)

    def add(self, at: float, depths: dict) -> None:
        if self.samples and at <= self.samples[-1][0]:
            return  # a clock that went backwards (or a repeated sample) adds nothing
        self.samples.append((float(at), dict(depths)))
        while self.samples and self.samples[0][0] < at - self.window_s:
            self.samples.popleft()

    def series(self, state: str) -> list[float]:
        return [float(d[state]) for _, d in self.samples if d.get(state) is not None]

    def buckets(self, state: str, n: int = 60) -> list[float]:
        """The depth at the end of each of n equal slices of the window, oldest first (a
        steady time axis for the sparkline; a slice with no sample repeats the one before).
        Unchanged depths give unchanged buckets, so an idle panel is not redrawn."""
        points = [(t, float(d[state])) for t, d in self.samples if d.get(state) is not None]
        if not points:
            return []
        end = points[-1][0]
        width = self.window_s / n
        out: list[float] = []
        i = 0
        last = points[0][1]
        for k in range(n):
            limit = end - self.window_s + (k + 1) * width
            while i < len(points) and points[i][0] <= limit + 1e-9:
                last = points[i][1]
                i += 1
            if limit >= points[0][0] - width:
                out.append(last)
        return out

    def latest(self, state: str):
        return self.samples[-1][1].get(state) if self.samples else None

    def net_rate(self, state: str, recent_s: float = RECENT_S) -> float | None:
        """Change of the depth per second over the last recent_s (negative: the queue
        drains), or between the last two samples when polls are further apart than that."""
        points = [(t, d[state]) for t, d in self.samples if d.get(state) is not None]
        if len(points) < 2:
            return None
        since = points[-1][0] - recent_s
        points = [p for p in points if p[0] >= since - 1e-9] if points[-2][0] >= since - 1e-9 \
            else points[-2:]
        if len(points) < 2 or points[-1][0] - points[0][0] <= 0:
            return None
        (t0, d0), (t1, d1) = points[0], points[-1]
        return (d1 - d0) / (t1 - t0)

    def eta_s(self, state: str) -> float | None:
        """Seconds until the queue is empty at the current net drain; None if not draining."""
        depth = self.latest(state)
        rate = self.net_rate(state)
        if depth is None or rate is None or rate >= 0:
            return None
        return depth / -rate
