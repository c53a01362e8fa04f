"""Tests only: a point where a worker process (a Ray actor, a re-embed server) announces the
work in hand (``<name>.held`` in the folder named by ``$IMAGESELECTOR_TEST_HOLD``) and waits
while ``hold`` exists there, so a test can kill its process, node or connection in the middle
of that work. Without the variable it does nothing."""
from __future__ import annotations

import os
import time
from pathlib import Path

HOLD_ENV = "IMAGESELECTOR_TEST_HOLD"


def hold_here(name: str) -> None:
    folder = os.environ.get(HOLD_ENV)
    if not folder:
        return
    hold = Path(folder)
    (hold / f"{name}.held").write_text(str(os.getpid()))
    while (hold / "hold").exists():
        time.sleep(0.05)
