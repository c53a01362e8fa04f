"""Who a DB lock holder is, in the operator's words: the stage and host a pid belongs to (from
the stages' heartbeats, which record their pid), "console" for the console itself, the
imageselector sub-command for a CLI, and the command without the interpreter's path.

The lock holders themselves come from pipeline.core.locks; this only names them."""
from __future__ import annotations

import os
import shlex
import socket

PROGRAM = "imageselector"


def short_host(name: str | None) -> str:
    """'imac' from 'imac.local' (the part an operator calls the machine)."""
    return (name or "").split(".")[0] or "?"


def _tokens(cmdline: str) -> list[str]:
    try:
        return shlex.split(cmdline or "")
    except ValueError:
        return (cmdline or "").split()


def short_command(cmdline: str) -> str:
    """The command an operator recognises: `imageselector run download` for
    `/srv/x/.venv/bin/python3 -m imageselector --root /srv/r run download` (the interpreter's
    path and the --root option dropped), `python3 script.py` for other Python programs."""
    tokens = _tokens(cmdline)
    if not tokens:
        return ""
    out: list[str] = []
    rest = tokens
    first = os.path.basename(tokens[0])
    if first.startswith("python") or first == PROGRAM:
        if first.startswith("python") and tokens[1:3] == ["-m", PROGRAM]:
            out, rest = [PROGRAM], tokens[3:]
        elif first == PROGRAM:
            out, rest = [PROGRAM], tokens[1:]
        else:
            out, rest = [first], tokens[1:]
    else:
        out, rest = [first], tokens[1:]
    skip = False
    for tok in rest:
        if skip:
            skip = False
            continue
        if out[0] == PROGRAM and tok == "--root":
            skip = True
            continue
        if out[0] == PROGRAM and tok.startswith("--root="):
            continue
        out.append(tok)
    return " ".join(out)


def _program_role(command: str) -> str | None:
    """What an imageselector process is from its command: 'download' for `imageselector run
    download` (before its first heartbeat), 'console', or 'cli locks' for `imageselector
    locks --json`; None for any other program."""
    parts = [p for p in command.split()[1:] if not p.startswith("-")]
    if not command.startswith(PROGRAM + " ") or not parts:
        return None
    if parts[0] == "run" and len(parts) > 1:
        return parts[1]
    return parts[0] if parts[0] == "console" else f"cli {parts[0]}"


def name_holders(holders: list[dict], stages: list[dict], own_pid: int | None = None,
                 hostname: str | None = None) -> list[dict]:
    """Each holder with ``stage`` (the stage whose heartbeat has its pid, "console", a CLI's
    sub-command, else the process name), ``host`` and ``command`` (short_command).

    ``stages``: this host's stage rows (pipeline.core.stage_observe.stage_status), whose pid
    is set only while the stage runs. ``own_pid``: the process asking (the console)."""
    by_pid = {int(r["pid"]): r for r in stages if r.get("pid")}
    here = short_host(hostname or socket.gethostname())
    out = []
    for h in holders:
        pid = int(h["pid"])
        command = short_command(h.get("cmdline") or "")
        row = by_pid.get(pid)
        if row is not None:
            stage, host = row["name"], short_host(row.get("hostname") or here)
        elif own_pid is not None and pid == own_pid:
            stage, host = "console", here
        else:
            stage, host = _program_role(command) or h.get("name") or "?", here
        out.append({**h, "stage": stage, "host": host, "command": command})
    return out
