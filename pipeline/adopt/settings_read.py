"""Reading the original's settings (read-only): its .env (the Etsy key, SMTP/SMS), its
data/db/qps_config.json (rates). Each reader returns what it found and, where something is
missing, one line saying exactly what. The names read are listed in docs/OPERATIONS.md
("Adopting the original's settings"); the first name present wins.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

# The original's variable names are not documented; these are the spellings accepted.
KEYSTRING_NAMES = ("ETSY_API_KEY", "ETSY_KEYSTRING", "ETSY_KEY", "ETSY_CLIENT_ID", "ETSY_APP_KEY")
SECRET_NAMES = ("ETSY_SHARED_SECRET", "ETSY_SECRET", "ETSY_API_SECRET", "ETSY_CLIENT_SECRET",
                "SHARED_SECRET")
SMTP_NAMES = {
    "host": ("SMTP_HOST", "SMTP_SERVER", "EMAIL_HOST", "MAIL_SERVER"),
    "port": ("SMTP_PORT", "EMAIL_PORT", "MAIL_PORT"),
    "user": ("SMTP_USER", "SMTP_USERNAME", "SMTP_LOGIN", "EMAIL_USER", "EMAIL_USERNAME"),
    "password_file": ("SMTP_PASSWORD_FILE", "SMTP_PASS_FILE", "SMTP_PASSWORD_PATH",
                      "EMAIL_PASSWORD_FILE", "MAIL_PASSWORD_FILE"),
    "password": ("SMTP_PASSWORD", "SMTP_PASS", "EMAIL_PASSWORD", "MAIL_PASSWORD"),
    "from": ("SMTP_FROM", "ALERT_FROM", "EMAIL_FROM", "MAIL_FROM"),
    "to": ("ALERT_TO", "ALERT_EMAIL", "ALERT_EMAILS", "NOTIFY_EMAIL", "EMAIL_TO", "SMTP_TO"),
    "sms": ("SMS_TO", "SMS_GATEWAY", "SMS_GATEWAY_ADDRESS", "SMS_ADDRESS", "SMS_EMAIL"),
    "starttls": ("SMTP_STARTTLS", "SMTP_TLS", "SMTP_USE_TLS"),
}
# qps_config.json: the project's key <- the spellings accepted in the original's file
QPS_NAMES = {
    "qps": ("qps", "QPS", "max_qps", "target_qps", "requests_per_second", "rate"),
    "daily_floor": ("daily_floor", "floor", "min_remaining", "daily_reserve", "reserve"),
    "slowdown_fraction": ("slowdown_fraction", "slowdown_at", "slowdown_threshold",
                          "throttle_fraction", "slowdown"),
}
ENV_REL = ".env"
QPS_REL = Path("data/db/qps_config.json")
_ENV_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$")


@dataclass
class Found:
    """What one reader found: ``values`` to adopt, ``missing``/``problems`` as one-line texts,
    ``notes`` for what was chosen or left."""
    values: dict = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    source: str = ""


def parse_dotenv(text: str) -> dict[str, str]:
    """KEY=VALUE lines (optional ``export``, quotes, trailing `` # comments``)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        m = _ENV_LINE.match(line)
        if not m or line.lstrip().startswith("#"):
            continue
        name, raw = m.group(1), m.group(2).strip()
        if raw[:1] in ("'", '"'):
            q = raw[0]
            end = raw.find(q, 1)
            value = raw[1:end] if end > 0 else raw[1:]
        else:
            value = re.split(r"\s+#", raw, maxsplit=1)[0].strip()
        out[name] = value
    return out


def read_env(original: Path) -> tuple[dict[str, str] | None, Path]:
    path = original / ENV_REL
    try:
        return parse_dotenv(path.read_text(encoding="utf-8", errors="replace")), path
    except FileNotFoundError:
        return None, path


def first(env: dict, names) -> tuple[str | None, str | None]:
    for n in names:
        v = (env.get(n) or "").strip()
        if v:
            return n, v
    return None, None


def read_etsy_key(env: dict | None, env_path: Path, key_file: str) -> Found:
    """``keystring:shared_secret`` from the .env, or the one line saying what is missing."""
    f = Found(source=str(env_path))
    if env is None:
        f.missing.append(f"Etsy key: no {env_path} to read it from; write keystring:shared_secret "
                         f"to {key_file} (chmod 600)")
        return f
    ks_name, ks = first(env, KEYSTRING_NAMES)
    sec_name, sec = first(env, SECRET_NAMES)
    if ks is None:
        f.missing.append(f"Etsy key: {env_path} has no keystring (looked for "
                         f"{', '.join(KEYSTRING_NAMES)}); write keystring:shared_secret to "
                         f"{key_file} (chmod 600)")
        return f
    if ":" in ks and sec is None:
        keystring, _, sec = ks.partition(":")
        sec_name = ks_name
        ks = keystring
    if not sec:
        f.missing.append(f"Etsy key: {env_path} has the keystring ({ks_name}) but no shared secret "
                         f"(looked for {', '.join(SECRET_NAMES)}); Etsy refuses the keystring "
                         f"alone: write keystring:shared_secret to {key_file} (chmod 600)")
        return f
    key = f"{ks}:{sec}"
    if any(c.isspace() for c in key) or key.count(":") != 1:
        f.problems.append(f"Etsy key: {ks_name} / {sec_name} in {env_path} do not make a "
                          f"keystring:shared_secret (spaces or extra ':'); nothing written")
        return f
    f.values = {"key": key, "from": f"{ks_name} + {sec_name}" if sec_name != ks_name else ks_name}
    return f


def read_qps(original: Path) -> Found:
    """The original's rates in the project's qps_config.json keys (the original's whole file
    is kept beside them under "original")."""
    from pipeline.core.config import read_json
    from pipeline.core.errors import UserError

    path = original / QPS_REL
    f = Found(source=str(path))
    try:
        data = read_json(path)
    except FileNotFoundError:
        f.missing.append(f"rates: no {path}; the root keeps its own qps_config.json")
        return f
    except UserError as exc:
        f.problems.append(f"rates: {exc}")
        return f
    if not isinstance(data, dict):
        f.problems.append(f"rates: {path}: expected a JSON object")
        return f
    for key, names in QPS_NAMES.items():
        name = next((n for n in names if n in data), None)
        if name is None:
            f.notes.append(f"rates: {path} has no {key}; the root's value stays")
            continue
        value = data[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            f.problems.append(f"rates: {path}: {name} must be a number, got {value!r}")
            continue
        if key == "slowdown_fraction" and 1 < value <= 100:
            value = value / 100.0            # written as a percentage
        ok = {"qps": value > 0, "daily_floor": value >= 0,
              "slowdown_fraction": 0 < value <= 1}[key]
        if not ok:
            f.problems.append(f"rates: {path}: {name} = {value!r} is out of range for {key}")
            continue
        f.values[key] = int(value) if key == "daily_floor" else float(value)
    f.values = {"rates": f.values, "original": data} if f.values else {}
    return f


def _addresses(text: str) -> list[str]:
    return [a for a in re.split(r"[,;\s]+", text or "") if a]


def read_alerts(env: dict | None, env_path: Path, original: Path) -> Found:
    """[alerts] from the .env's SMTP/SMS settings. The password is never put in the config:
    alerts.password_file names the original's password file (a password written in the .env
    itself is returned as ``password`` for a 0600 file of the root)."""
    f = Found(source=str(env_path))
    if env is None:
        f.missing.append(f"alerts: no {env_path}; set [alerts] in imageselector.toml")
        return f
    got = {k: first(env, names) for k, names in SMTP_NAMES.items()}
    host = got["host"][1]
    if not host:
        f.missing.append(f"alerts: {env_path} has no SMTP host (looked for "
                         f"{', '.join(SMTP_NAMES['host'])}); set alerts.smtp_host")
        return f
    a: dict = {"smtp_host": host}
    if got["port"][1]:
        try:
            a["smtp_port"] = int(got["port"][1])
        except ValueError:
            f.problems.append(f"alerts: {got['port'][0]} = {got['port'][1]!r} is not a port number")
    if a.get("smtp_port") == 465:
        f.problems.append("alerts: the original uses port 465 (SMTP over TLS); this project "
                          "speaks STARTTLS: set alerts.smtp_port to the server's STARTTLS port (587)")
    if got["starttls"][1]:
        a["starttls"] = got["starttls"][1].lower() not in ("0", "false", "no", "off")
    if got["user"][1]:
        a["username"] = got["user"][1]
    pw_name, pw_file = got["password_file"]
    if pw_file:
        p = Path(pw_file).expanduser()
        a["password_file"] = str(p if p.is_absolute() else original / p)
    elif got["password"][1]:
        f.values["password"] = got["password"][1]
        f.notes.append(f"alerts: the SMTP password is written in {env_path} ({got['password'][0]}); "
                       f"it goes to a 0600 file of the root, never into the config")
    elif a.get("username"):
        f.missing.append(f"alerts: {env_path} names an SMTP user but no password file (looked for "
                         f"{', '.join(SMTP_NAMES['password_file'])}); set alerts.password_file")
    sender = got["from"][1] or (a.get("username") if "@" in a.get("username", "") else None)
    if sender:
        a["from_addr"] = sender
    to = _addresses(got["to"][1] or "") + _addresses(got["sms"][1] or "")
    to = list(dict.fromkeys(to))
    if not to:
        f.missing.append(f"alerts: {env_path} has no address to send to (looked for "
                         f"{', '.join(SMTP_NAMES['to'] + SMTP_NAMES['sms'])}); set alerts.to")
    else:
        a["to"] = to
    a["enabled"] = bool(to)
    f.values["alerts"] = a
    return f
