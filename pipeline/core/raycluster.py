"""What every user of a Ray cluster here shares (the orchestrator's Ray worker, the re-embed's
Ray route): the namespace, connecting with one clear error, and which of Ray's errors mean
"the actor or its node is gone" (retry elsewhere) rather than "the work itself failed".
Ray is imported only inside these functions."""
from __future__ import annotations

NAMESPACE = "imageselector"


class RayUnavailableError(Exception):
    """Ray is not installed here, or the cluster does not answer (the text says which)."""


_connected_to: str | None = None    # the address this process's driver joined (one per process)


def connect(address: str, who: str) -> None:
    """``ray.init`` once per process (a second call with the same address is a no-op; another
    address is refused, since a Ray driver joins one cluster and would silently use the first)."""
    global _connected_to
    try:
        import ray
    except ImportError:
        raise RayUnavailableError(f"{who}: ray is not installed here (pip install ray)") from None
    if ray.is_initialized():
        if _connected_to is not None and _connected_to != address:
            raise RayUnavailableError(f"{who}: this process is already connected to the Ray "
                                      f"cluster at {_connected_to}, not {address} (one cluster "
                                      f"per process: run the other separately)")
        return
    try:
        ray.init(address=address, namespace=NAMESPACE, log_to_driver=False,
                 logging_level="WARNING", configure_logging=False)
    except Exception as exc:
        raise RayUnavailableError(f"{who}: cannot reach the Ray cluster at {address}: "
                                  f"{exc}") from None
    _connected_to = address


def lost_errors() -> tuple:
    """Ray's errors that mean "the actor or its node is gone" (not the work's fault)."""
    from ray import exceptions as rx

    names = ("ActorDiedError", "ActorUnavailableError", "RayActorError", "NodeDiedError",
             "WorkerCrashedError", "ObjectLostError", "OwnerDiedError", "LocalRayletDiedError",
             "ActorUnschedulableError")
    return tuple(getattr(rx, n) for n in names if hasattr(rx, n))


def last_line(exc) -> str:
    text = str(exc).strip().splitlines()
    return text[-1][:300] if text else type(exc).__name__
