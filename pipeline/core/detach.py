"""Start a program detached from the caller, without a shell `setsid` (macOS has none and
Windows' OpenSSH kills a session's children).

POSIX: a short-lived intermediate Python process in a new session starts the program and
exits at once, so the program is re-parented to init (no zombie in a long-lived console)
and belongs to no terminal or SSH session. Windows: DETACHED_PROCESS and
CREATE_BREAKAWAY_FROM_JOB, so it outlives the SSH job.

Run as ``python -m pipeline.core.detach LOG -- ARGV...``: prints the program's pid.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def _launch(argv: list[str], log_path: Path, cwd: str | None) -> int:
    with open(log_path, "ab", buffering=0) as log, open(os.devnull, "rb") as devnull:
        kwargs: dict = dict(stdin=devnull, stdout=log, stderr=log, cwd=cwd, close_fds=True)
        if os.name == "nt":
            flags = (subprocess.DETACHED_PROCESS | subprocess.CREATE_NEW_PROCESS_GROUP
                     | getattr(subprocess, "CREATE_BREAKAWAY_FROM_JOB", 0x01000000))
            kwargs["creationflags"] = flags
        proc = subprocess.Popen(argv, **kwargs)
        return proc.pid


def spawn_detached(argv: list[str], log_path: Path, cwd: str | os.PathLike | None = None) -> int:
    """Start ``argv`` detached with output appended to ``log_path``; return its pid."""
    cwd = str(cwd) if cwd is not None else None
    if os.name == "nt":
        return _launch(argv, Path(log_path), cwd)
    out = subprocess.run([sys.executable, "-m", "pipeline.core.detach", str(log_path), "--", *argv],
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, cwd=cwd,
                         start_new_session=True, timeout=60)
    if out.returncode != 0 or not out.stdout.strip().isdigit():
        raise RuntimeError(f"could not start {argv[0]}: {out.stderr.strip() or out.stdout.strip()}")
    return int(out.stdout.strip())


def main(args: list[str]) -> int:
    if len(args) < 3 or args[1] != "--":
        print("usage: python -m pipeline.core.detach LOG -- ARGV...", file=sys.stderr)
        return 2
    pid = _launch(args[2:], Path(args[0]), os.getcwd())
    print(pid, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
