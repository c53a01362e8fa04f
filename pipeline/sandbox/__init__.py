"""The sandbox: a root where everything works without the internet, an Etsy key or model
weights. The spine creates the root and its config; each part adds what it needs through
``SANDBOX_PARTS`` (the local Etsy API, the test-profile models, a folder backup target, ...).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from pipeline.core.errors import UserError
from pipeline.core.fsutil import atomic_write_bytes
from pipeline.core.root import Root

# Secret used by the sandbox's local Etsy API (it is not a real key).
SANDBOX_ETSY_KEY = "sandboxkey:sandboxsecret"


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def render_toml(sections: dict[str, dict]) -> str:
    """Plain TOML for tables of scalars and lists, plus arrays of tables (``[[x]]``)."""
    lines: list[str] = []
    for name, body in sections.items():
        if isinstance(body, list):
            for item in body:
                lines.append(f"[[{name}]]")
                lines += [f"{k} = {_toml_value(v)}" for k, v in item.items()]
                lines.append("")
            continue
        lines.append(f"[{name}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in body.items()]
        lines.append("")
    return "\n".join(lines)


def _core_part(root: Root, port: int) -> dict[str, dict]:
    secrets = root.path / "secrets"
    secrets.mkdir(mode=0o700, exist_ok=True)
    key_file = secrets / "etsy_api_key"
    if not key_file.exists():
        atomic_write_bytes(key_file, SANDBOX_ETSY_KEY.encode(), mode=0o600)
    return {
        "root": {"profile": "sandbox"},
        "sandbox": {"port": port},
        "etsy": {"base_url": f"http://127.0.0.1:{port}/v3/application", "key_file": str(key_file)},
        "models": {"profile": "test"},
    }


def _backup_part(root: Root, port: int) -> dict[str, dict]:
    """One folder backup target inside the sandbox, so backups work out of the box."""
    return {"backup.targets.sandbox": {"kind": "folder", "path": "backups", "create": True, "generations": 3}}


def _small_batches_part(root: Root, port: int) -> dict[str, dict]:
    """A few hundred listings: small batches and tars, so every queue moves in minutes."""
    return {"orchestrate": {"batch_size": 50}, "archive": {"images_per_tar": 100},
            "disk": {"min_free_gb": 1.0, "backup_min_free_gb": 1.0}}


# Each part returns config sections to merge into the sandbox's imageselector.toml.
SANDBOX_PARTS: list[Callable[[Root, int], dict[str, dict]]] = [_core_part, _backup_part,
                                                              _small_batches_part]


def is_sandbox(path: Path) -> bool:
    config = Path(path) / "imageselector.toml"
    return config.exists() and 'profile = "sandbox"' in config.read_text()


def init_sandbox(path: str | os.PathLike, port: int | None = None) -> Root:
    """Create a sandbox root (or refresh one). A production root is never turned into one."""
    path = Path(path).absolute()
    config_path = path / "imageselector.toml"
    if config_path.exists() and not is_sandbox(path):
        raise UserError(f"{path} is not a sandbox root (its imageselector.toml has no "
                        f'profile = "sandbox"); refusing to overwrite it')
    root = Root(path).ensure()
    if port is None:
        port = int(root.config.get("sandbox.port"))
    if not 0 < port < 65536:
        raise UserError(f"--port must be between 1 and 65535, got {port}")
    sections: dict[str, dict] = {}
    for part in SANDBOX_PARTS:
        for name, values in part(root, port).items():
            if isinstance(values, list):
                sections[name] = values
            else:
                sections.setdefault(name, {}).update(values)
    text = "# A sandbox root, written by `imageselector sandbox init`.\n\n" + render_toml(sections)
    atomic_write_bytes(config_path, text.encode())
    root = Root(path).ensure()
    from pipeline.core.db import open_db

    open_db(root).close()  # an empty DB, so every panel shows zeros rather than "no DB yet"
    return root
