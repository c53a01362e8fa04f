"""The stage's file names under run/ and the flush request: the spool folder, the record of
the workers this orchestrator started, and the file the runner's drain writes to ask a running
orchestrator for the last partial batch."""
from __future__ import annotations

import os
import time
from pathlib import Path

FLUSH_FILE = "orchestrate.flush"          # under run/: the runner's drain asks for the last batch
SPOOL = "orchestrate"                     # run/orchestrate/: manifests, tars in transit, results
STARTED_FILE = "started.json"             # the workers this orchestrator started (to stop them)


def flush_path(root) -> Path:
    return root.run_dir / FLUSH_FILE


def spool_dir(root) -> Path:
    return root.run_dir / SPOOL


def request_flush(root) -> Path:
    """Ask a running orchestrator to send the last partial batch (the runner's drain)."""
    from pipeline.core.fsutil import atomic_write_json

    root.run_dir.mkdir(parents=True, exist_ok=True)
    path = flush_path(root)
    atomic_write_json(path, {"at": time.time(), "pid": os.getpid()})
    return path
