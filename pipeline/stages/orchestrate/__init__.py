"""The orchestrator (`imageselector run orchestrate`, stage module pipeline/stages/orchestrate/entry.py).

    core.py       the main loop: events -> leases, imports, new batches (the only DB writer)
    ledger.py     the DB side: batches, leases, image moves, manifests
    links.py      one I/O thread per worker host over a remote.transport.Transport
    hostops.py    the host-side steps (stdlib only; one remote command each over SSH)
    intake.py     a verified result into the archive folder and the index store
    scheduler.py  per-worker throughput: batches in flight, who gets the next one
    status.py     workers_status(root) for `status` and the console

Only light modules are imported here: `status` and the console import this package.
"""
from __future__ import annotations


def workers_status(root, timeout_s: float | None = None, now: float | None = None,
                   look: bool = True) -> list[dict]:
    """Each worker's state for `status` and the console (see pipeline/stages/orchestrate/status.py)."""
    from pipeline.stages.orchestrate.status import workers_status as _ws

    return _ws(root, timeout_s, now, look)


def request_flush(root):
    from pipeline.stages.orchestrate.core import request_flush as _rf

    return _rf(root)
