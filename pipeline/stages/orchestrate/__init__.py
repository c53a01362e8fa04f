"""The orchestrator (`imageselector run orchestrate`, stage module pipeline/stages/orchestrate/entry.py).

    core.py       the main loop (Orchestrator): events -> leases, imports, new batches
    workers.py    what a host's poll says, following its batches, starting its worker stage
    batches.py    forming and shipping batches, expiring and giving back leases, partial batches
    results.py    a fetched result verified, imported into the index, cleaned up (or refused)
    state.py      the loop's records: Flight (a batch in flight), Worker (a host)
    files.py      file names under run/ (spool, started workers) and request_flush
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
