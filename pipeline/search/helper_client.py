"""The console's side of the search helper (pipeline/search/helper.py): start it on the first
search, send it SearchRequests one at a time, start a new one when it has exited, stop it
(by the pid this client started) on quit. No model library is imported here."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable

from pipeline.core.errors import UserError
from pipeline.search.helper_query import request_to_json
from pipeline.search.request import SearchRequest
from pipeline.search.settings import SearchSettings


class HelperDied(UserError):
    """The helper exited while a request was in flight."""


class SearchHelperClient:
    """One helper process per client. ``search`` is safe from any thread: requests wait
    their turn (a request the pane gave up on still finishes first)."""

    def __init__(self, root, settings: SearchSettings | None = None, locate: str | None = None,
                 python: str = sys.executable):
        self.root = root
        self.settings = settings or SearchSettings.from_config(root.config)
        self.locate = locate
        self.python = python
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self._next_id = 0
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def search(self, req: SearchRequest,
               on_progress: Callable[[str], None] | None = None) -> tuple[dict, list[str]]:
        """(the answer: outcome, took_s, text_cached; notes about the helper itself)."""
        return self._ask({"op": "search", "request": request_to_json(req)}, on_progress)

    def stats(self) -> dict:
        """The helper's pid, the model libraries it holds, the texts it remembers, and the
        notes of this call (a restart)."""
        answer, notes = self._ask({"op": "stats"}, None)
        return {**answer, "notes": notes}

    def _ask(self, msg: dict, on_progress) -> tuple[dict, list[str]]:
        progress = on_progress or (lambda text: None)
        with self._lock:
            notes = self._ensure(progress)
            self._next_id += 1
            rid = self._next_id
            proc = self.proc
            try:
                proc.stdin.write(json.dumps({"id": rid, **msg}) + "\n")
                proc.stdin.flush()
            except (BrokenPipeError, OSError):
                pass   # it has exited: reading says so
            while True:
                line = proc.stdout.readline()
                if not line:
                    code = proc.wait()
                    raise HelperDied(f"the search helper (pid {proc.pid}) exited with code {code} "
                                     f"during this search; the next search starts a new one")
                answer = json.loads(line)
                if answer.get("id") != rid:
                    continue
                if "progress" in answer:
                    progress(answer["progress"])
                    continue
                if not answer.get("ok"):
                    raise UserError(answer.get("error") or "the search helper failed")
                return answer, notes

    def _ensure(self, progress) -> list[str]:
        """Start the helper if none runs; a note when an earlier one had died."""
        notes = []
        if self.proc is not None:
            code = self.proc.poll()
            if code is None:
                return notes
            self._close_pipes()
            if code != 0:    # 0: it stopped after its idle time, as it should
                notes.append(f"the search helper (pid {self.proc.pid}) had exited with code "
                             f"{code}: started a new one")
            self.proc = None
        progress("starting the search helper")
        log = self._log_path()
        args = [self.python, "-m", "pipeline.search.helper", "--root", str(Path(self.root.path).resolve()),
                "--idle-s", str(float(self.settings.helper_idle_s)),
                "--text-cache", str(int(self.settings.helper_text_cache))]
        if self.locate:
            args += ["--locate", self.locate]
        with open(log, "a") as err:
            self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=err, text=True, bufsize=1,
                                         cwd=str(Path(__file__).resolve().parents[2]))
        self.starts += 1
        first = self.proc.stdout.readline()
        if not first or not json.loads(first).get("ready"):
            code = self.proc.wait()
            raise HelperDied(f"the search helper did not start (exit code {code}; see {log})")
        return notes

    def _log_path(self) -> Path:
        logs = Path(self.root.logs_dir)
        logs.mkdir(parents=True, exist_ok=True)
        return logs / "search_helper.log"

    def _close_pipes(self) -> None:
        for pipe in (self.proc.stdin, self.proc.stdout):
            try:
                pipe.close()
            except OSError:
                pass

    def stop(self, wait_s: float = 1.0) -> None:
        """End of input asks it to exit; one still busy after ``wait_s`` is terminated, then
        killed (by the pid this client started). Never blocks on a request in flight."""
        proc = self.proc
        if proc is None:
            return
        self.proc = None
        try:
            proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        try:
            proc.stdout.close()
        except OSError:
            pass
