"""The locks panel's source: who holds the DB, cheap enough to poll every second.

pipeline.locks.LockTracker reads /proc/locks (one read: writers and readers) and also scans
every process's descriptors for the DB (the holders that merely have it open). With ~400
processes that scan costs ~10 ms of CPU, so here it runs only every `open_scan_s`, while the
writer and the readers are read at every poll. On macOS (no /proc/locks) the whole probe,
a helper process, runs at that slower pace too. The since-times start from the CLI's
run/locks_seen.json and are kept in memory: the console writes no file while it watches.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path


class LockView:
    def __init__(self, seen_path: Path | None = None, open_scan_s: float = 5.0):
        self.open_scan_s = open_scan_s
        self.first_seen: dict[str, float] = {}
        if seen_path is not None:
            try:
                self.first_seen = json.loads(Path(seen_path).read_text())
            except (OSError, ValueError):
                self.first_seen = {}
        self._open: set[int] = set()
        self._scanned_at: float | None = None
        self._probe_result: list[dict] = []

    def _scan_due(self) -> bool:
        now = time.monotonic()
        if self._scanned_at is None or now - self._scanned_at >= self.open_scan_s:
            self._scanned_at = now
            return True
        return False

    def holders(self, db_path: Path, now: float) -> list[dict]:
        from pipeline import locks

        if not os.path.exists("/proc/locks"):
            if self._scan_due():  # the F_GETLK helper process: not every second
                tracker = locks.LockTracker(None)
                tracker.first_seen = self.first_seen
                self._probe_result = [h.as_json() for h in tracker.holders(db_path, now=now)]
                self.first_seen = tracker.first_seen
            return self._probe_result
        me = os.getpid()
        modes = locks.holders_from_proc_locks(db_path)
        if self._scan_due():
            self._open = locks.open_holders_from_proc(db_path, exclude={me})
        for pid in self._open:
            modes.setdefault(pid, "open")
        modes.pop(me, None)  # the console's own read connection is not news
        result = []
        live = set()
        for pid, mode in modes.items():
            info = locks.describe(pid)
            if not info["name"] and not info["cmdline"] and info["started"] is None:
                continue  # gone since the last scan
            key = f"{pid}:{mode}"
            live.add(key)
            since = self.first_seen.setdefault(key, now)
            result.append(locks.Holder(pid=pid, mode=mode, name=info["name"],
                                       cmdline=info["cmdline"], since=since,
                                       source="proc-locks").as_json())
        self.first_seen = {k: v for k, v in self.first_seen.items() if k in live}
        result.sort(key=lambda h: (locks.MODES.index(h["mode"]), h["pid"]))
        return result
