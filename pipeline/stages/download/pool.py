"""The worker threads: each takes a job, fetches it, and hands back its result."""
from __future__ import annotations

import logging
import queue
import threading

from pipeline.core.httpfetch import short_error
from pipeline.stages.download.fetch import Fetcher
from pipeline.stages.download.jobs import FAIL, Job, Result


class WorkerPool:
    """N daemon threads: a worker stuck in a stalled read can never hold up the exit."""

    def __init__(self, fetcher: Fetcher, workers: int, log: logging.Logger):
        self.fetcher = fetcher
        self.log = log
        self.work: queue.Queue[Job | None] = queue.Queue()
        self.results: queue.Queue[Result] = queue.Queue()
        self.threads = [threading.Thread(target=self._loop, name=f"download-{i}", daemon=True)
                        for i in range(workers)]
        for thread in self.threads:
            thread.start()

    def _loop(self) -> None:
        while True:
            job = self.work.get()
            if job is None:
                return
            try:
                result = self.fetcher.fetch(job)
            except Exception as exc:  # a bug: fail this image loudly (requeue it once fixed)
                self.log.exception("downloading %s failed unexpectedly", job.url)
                result = Result(job, FAIL, f"internal error: {short_error(exc)}")
            self.results.put(result)

    def submit(self, job: Job) -> None:
        self.work.put(job)

    def take_queued(self) -> list[Job]:
        """Jobs no worker has started yet (released on a stop)."""
        jobs = []
        while True:
            try:
                job = self.work.get_nowait()
            except queue.Empty:
                return jobs
            if job is not None:
                jobs.append(job)

    def close(self) -> None:
        for _ in self.threads:
            self.work.put(None)
