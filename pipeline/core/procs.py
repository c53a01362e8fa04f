"""Process identity: a pid is only "the same process" while its start time matches, so a
reused pid is never mistaken for (or signalled as) one of our stages."""
from __future__ import annotations

import psutil


def process_start_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return None


def pid_alive(pid, proc_start: float | None = None) -> bool:
    """True while ``pid`` runs (zombies count as gone) and, if given, started at proc_start."""
    if not pid:
        return False
    try:
        proc = psutil.Process(int(pid))
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        if proc_start is not None and abs(proc.create_time() - float(proc_start)) > 0.5:
            return False
        return True
    except (psutil.NoSuchProcess, ValueError):
        return False
    except psutil.AccessDenied:
        return True


def describe(pid: int) -> dict:
    """Name and command line of a process (empty when it is gone or hidden)."""
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            return {"name": proc.name(), "cmdline": " ".join(proc.cmdline()),
                    "started": proc.create_time()}
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return {"name": "", "cmdline": "", "started": None}
