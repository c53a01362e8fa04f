"""What every check gets: the root, one status snapshot, the DB, the clock, this host, and
since when the watch has been watching (a slot before that is not judged)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class WatchContext:
    root: object
    snap: dict                  # pipeline.status.snapshot.snapshot(root, now=now)
    conn: object | None         # the state DB (None when it cannot be opened)
    now: float
    host: str
    since: float                # the first watch run on this root

    def cfg(self, key: str):
        return self.root.config.get(key)

    def section_failed(self, name: str) -> bool:
        """The snapshot could not fill ``name`` (its provider raised, or the DB is unreadable):
        a check on it must not clear anything."""
        if self.conn is None or self.snap.get(name) is None:
            return True
        return any(err.startswith(f"{name}:") for err in self.snap.get("errors", []))
