"""Spotlight on macOS: indexing a backup or mirror volume costs I/O during every copy and
fills `.Spotlight-V100/`; `mdutil -s MOUNT` says whether it is on."""
from __future__ import annotations

import shlex
import subprocess
import sys

from pipeline.doctor.check import WARNING, Check, noted, passed, problem


def spotlight_check(area: str, label: str, mount: str, platform: str | None = None) -> Check:
    if (platform or sys.platform) != "darwin":
        return noted(area, f"{label} spotlight", "not macOS: no Spotlight to check")
    try:
        r = subprocess.run(["mdutil", "-s", mount], capture_output=True, text=True, timeout=30,
                           stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as exc:
        return noted(area, f"{label} spotlight", f"mdutil did not answer ({exc})")
    text = (r.stdout + r.stderr).strip()
    if "enabled" in text.lower() and "disabled" not in text.lower():
        return problem(area, f"{label} spotlight", f"Spotlight indexes {mount}",
                       f"sudo mdutil -i off {shlex.quote(mount)}", WARNING)
    return passed(area, f"{label} spotlight", f"{mount}: {text.splitlines()[-1] if text else 'not indexed'}")
