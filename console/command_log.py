"""The record of what the console itself did (starts, stops, signals, pauses, SSH commands):
shown in its panel and appended to logs/console_commands.log, so it survives the console."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


@dataclass(frozen=True)
class CommandEntry:
    at: float
    text: str
    level: str = "info"   # info, ok, error, refused

    def line(self) -> str:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.at))
        return f"{stamp} [{self.level}] {self.text}"


class CommandLog:
    def __init__(self, path: Path | None, clock: Callable[[], float] = time.time, keep: int = 500):
        self.path = path
        self.clock = clock
        self.keep = keep
        self.entries: list[CommandEntry] = []
        self.write_error: str | None = None
        self._lock = threading.Lock()  # actions log from their threads

    def add(self, text: str, level: str = "info") -> CommandEntry:
        with self._lock:
            entry = CommandEntry(self.clock(), text, level)
            self.entries.append(entry)
            del self.entries[:-self.keep]
            self._append(entry)
        return entry

    def _append(self, entry: CommandEntry) -> None:
        if self.path is not None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.path, "a", encoding="utf-8") as fh:
                    fh.write(entry.line() + "\n")
            except OSError as exc:  # the panel still shows it
                self.write_error = f"{self.path}: {exc.strerror}"
