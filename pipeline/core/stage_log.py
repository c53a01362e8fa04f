"""A stage's log: the file that follows rotation, and stdout/stderr pointed at it."""
from __future__ import annotations

import logging
import logging.handlers
import os
import sys

from pipeline.core.stage import StageSpec


class ReopeningLogHandler(logging.handlers.WatchedFileHandler):
    """A stage's log file that follows log rotation: housekeeping renames a full log, and the
    next line opens a new one (WatchedFileHandler). A detached stage's stdout and stderr are
    that log too (tracebacks, library warnings): they are pointed at the new file as well, so
    nothing keeps flowing into the rotated one. Nothing is ever lost (no copy-and-truncate)."""

    def __init__(self, path, redirect_fds: tuple[int, ...] = ()):
        self.redirect_fds = redirect_fds
        super().__init__(path, encoding="utf-8")

    def _open(self):
        stream = super()._open()
        for fd in self.redirect_fds:
            os.dup2(stream.fileno(), fd)
        return stream


def fds_writing_to(path) -> tuple[int, ...]:
    """Which of stdout and stderr already write to ``path`` (a detached stage's log)."""
    try:
        st = os.stat(path)
    except OSError:
        return ()
    same = []
    for fd in (1, 2):
        try:
            if os.path.samestat(os.fstat(fd), st):
                same.append(fd)
        except OSError:
            pass
    return tuple(same)


def setup_stage_logging(root, stage: StageSpec) -> logging.Logger:
    return setup_process_logging(root, stage.name, f"imageselector.{stage.name}")


def setup_process_logging(root, log_name: str, logger_name: str) -> logging.Logger:
    """LOGGER_NAME's lines to ROOT/logs/LOG_NAME.log (and stderr unless that is the log): a
    stage's, or another long-lived process's (a worker's re-embed server)."""
    root.logs_dir.mkdir(parents=True, exist_ok=True)
    log_path = root.log_path(log_name)
    logger = logging.getLogger(logger_name)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    fmt = logging.Formatter("%(asctime)s %(levelname)s [%(process)d] %(message)s")
    redirected = fds_writing_to(log_path)
    file_handler = ReopeningLogHandler(log_path, redirect_fds=redirected)
    file_handler.setFormatter(fmt)
    logger.addHandler(file_handler)
    # Detached, stderr already is the log file: do not write every line twice.
    if 2 not in redirected:
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(fmt)
        logger.addHandler(stream)
    return logger
