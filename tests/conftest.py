"""Shared fixtures. Tests use real processes, real SQLite, real HTTP/SSH on loopback."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# An accidental model download must fail at once instead of hanging.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
# Tests never inherit the operator's root.
os.environ.pop("IMAGESELECTOR_ROOT", None)

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
# Support modules import both as `tests.x_support` and as plain `x_support`.
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(autouse=True)
def _stage_loggers_reset():
    """A stage run in-process (setup_stage_logging) takes its logger off the root logger and
    gives it a file handler under that test's tmp root: put it back, so the next test's caplog
    sees its records and no handler writes into a folder pytest has moved on from."""
    import logging

    yield
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if name.startswith("imageselector.") and isinstance(logger, logging.Logger):
            if not logger.propagate:
                for handler in list(logger.handlers):
                    logger.removeHandler(handler)
                    handler.close()
                logger.propagate = True


@pytest.fixture
def tmp_root(tmp_path):
    """A fresh runtime root (production profile unless a test writes imageselector.toml)."""
    from pipeline.core.root import Root

    return Root(tmp_path / "root").ensure()


def cli_env(root=None, **extra) -> dict:
    env = dict(os.environ)
    env.pop("IMAGESELECTOR_ROOT", None)
    if root is not None:
        env["IMAGESELECTOR_ROOT"] = str(getattr(root, "path", root))
    env.update({k: str(v) for k, v in extra.items()})
    return env
