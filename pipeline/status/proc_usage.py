"""CPU and memory of this host's stage processes, for a display that polls (the console).

CPU % is the process's CPU time over the wall time since the previous sample of the same
process (100 = one core busy), so the first sample of a process has none. A process is the
same only while its start time matches (a reused pid starts again)."""
from __future__ import annotations

import threading
import time

import psutil


class ProcessUsage:
    def __init__(self):
        self._last: dict[int, tuple[float, float, float]] = {}  # pid -> (create, wall, cpu s)
        self._lock = threading.Lock()

    def sample(self, pid: int | None) -> dict:
        """{"cpu_pct": float | None, "rss_bytes": int | None} of a running process."""
        if not pid:
            return {"cpu_pct": None, "rss_bytes": None}
        try:
            proc = psutil.Process(int(pid))
            with proc.oneshot():
                created = proc.create_time()
                times = proc.cpu_times()
                rss = proc.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
            with self._lock:
                self._last.pop(int(pid), None)
            return {"cpu_pct": None, "rss_bytes": None}
        cpu_s = float(times.user + times.system)
        wall = time.monotonic()
        with self._lock:
            before = self._last.get(int(pid))
            self._last[int(pid)] = (created, wall, cpu_s)
        pct = None
        if before is not None and before[0] == created and wall > before[1]:
            pct = round(max(0.0, cpu_s - before[2]) / (wall - before[1]) * 100.0, 1)
        return {"cpu_pct": pct, "rss_bytes": int(rss)}

    def forget_others(self, pids: set[int]) -> None:
        """Drop the samples of processes no longer shown."""
        with self._lock:
            for pid in [p for p in self._last if p not in pids]:
                del self._last[pid]
