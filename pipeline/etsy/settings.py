"""What the Etsy client is given: the API key (read from the environment or a secret file, and
kept out of every text by ``Redactor``), the base URL, and the rate settings (qps_config.json)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pipeline.core.errors import UserError

DEFAULT_BASE_URL = "https://api.etsy.com/v3/application"
ENV_BASE_URL = "ETSY_API_BASE_URL"
ENV_KEY = "ETSY_API_KEY"
REDACTED = "[REDACTED]"


def read_api_key(config) -> str:
    """``keystring:shared_secret`` from $ETSY_API_KEY or the file named by etsy.key_file."""
    key = os.environ.get(ENV_KEY, "").strip()
    where = f"${ENV_KEY}"
    if not key:
        key_file = str(config.get("etsy.key_file") or "").strip()
        if not key_file:
            raise UserError("no Etsy API key: set ETSY_API_KEY=keystring:shared_secret or name a "
                            "file (mode 600) holding it in etsy.key_file")
        from pipeline.core.config import read_secret

        key = read_secret(key_file, "etsy.key_file")
        where = f"etsy.key_file ({key_file})"
    keystring, sep, secret = key.partition(":")
    if not sep or not keystring or not secret or any(c.isspace() for c in key):
        raise UserError(f"{where}: the Etsy key must be keystring:shared_secret (Etsy refuses "
                        f"the keystring alone since February 2026)")
    return key


def api_base_url(config) -> str:
    url = os.environ.get(ENV_BASE_URL, "").strip() or str(config.get("etsy.base_url"))
    if not url.startswith(("http://", "https://")):
        raise UserError(f"etsy.base_url must be an http(s) URL, got {url!r}")
    return url.rstrip("/")


def load_rate_config(root) -> dict:
    """The root's data/db/qps_config.json, with etsy.* config values overriding it."""
    from pipeline.core.config import read_json

    path = Path(root.db_dir) / "qps_config.json"
    try:
        data = read_json(path)
    except FileNotFoundError:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object")
    cfg = root.config
    out = {}
    # etsy.<key> overrides the file unless it holds its "use the file" value
    for key, default, cast, use_file in (("qps", 5.0, float, 0), ("daily_floor", 50, int, -1),
                                         ("slowdown_fraction", 0.95, float, 0)):
        value = data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{path}: {key} must be a number, got {value!r}")
        override = cfg.get(f"etsy.{key}")
        out[key] = cast(value) if override == use_file else cast(override)
    if out["qps"] <= 0:
        raise UserError(f"{path}: qps must be > 0")
    if not 0 < out["slowdown_fraction"] <= 1:
        raise UserError(f"{path}: slowdown_fraction must be in (0, 1]")
    if out["daily_floor"] < 0:
        raise UserError(f"{path}: daily_floor must be >= 0")
    return out


class Redactor:
    """Removes the key (and each of its halves) from any text before it is logged."""

    def __init__(self, key: str):
        parts = [key] + [p for p in key.split(":") if len(p) >= 4]
        self.secrets = sorted(set(parts), key=len, reverse=True)

    def __call__(self, text: Any) -> str:
        text = str(text)
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return text
