"""The locks panel's source: who holds the DB, cheap enough to poll every second.

pipeline.core.locks.LockTracker reads /proc/locks (writers and readers) at every poll and runs the
descriptor scan (or, on macOS, the F_GETLK helper process) only every `open_scan_s`. The
since-times are shared with `imageselector locks` and `status` through run/locks_seen.json
(each merges what the others wrote, the earliest wins, and writes it only when a holder comes
or goes), so the panel's "held" and the CLI's agree.
"""
from __future__ import annotations

from pathlib import Path


class LockView:
    def __init__(self, seen_path: Path | None = None, open_scan_s: float = 5.0):
        from pipeline.core.locks import LockTracker

        self.tracker = LockTracker(seen_path, open_scan_s=open_scan_s, persist=True)

    def holders(self, db_path: Path, now: float) -> list[dict]:
        return [h.as_json() for h in self.tracker.holders(db_path, now=now)]
