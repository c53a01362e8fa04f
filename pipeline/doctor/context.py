"""What every area's checks are given: the root, the options, and the helpers that make each
fix an exact command for this root."""
from __future__ import annotations

import shlex
import time
from dataclasses import dataclass, field

from pipeline.doctor.check import FAILURE, WARNING


@dataclass
class DoctorContext:
    root: object
    host: str | None = None            # --host NAME: only this worker
    send_test_alert: bool = False
    now: float = field(default_factory=time.time)

    @property
    def production(self) -> bool:
        return self.root.profile == "production"

    @property
    def unattended_severity(self) -> str:
        """What a missing safeguard is (no schedule, no alerts): a failure on a production
        root, which runs unattended; a warning on a sandbox root."""
        return FAILURE if self.production else WARNING

    def command(self, *args: str) -> str:
        """An imageselector command line for this root, ready to paste."""
        parts = ["imageselector", "--root", str(self.root.path), *args]
        return " ".join(shlex.quote(str(p)) for p in parts)

    def cfg(self, key: str):
        return self.root.config.get(key)

    @property
    def config_path(self) -> str:
        return str(self.root.config_path)
