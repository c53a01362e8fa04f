"""The backups' part of the status snapshot: each target's last snapshot and whether it is overdue."""
from __future__ import annotations

from pipeline.status.registry import status_provider


@status_provider("backups", order=0)
def backups_section(root, conn, now, errors) -> list:
    if conn is None:
        return []
    from pipeline.stages.backup.backup import status_view

    return status_view(root, conn, now, errors)
