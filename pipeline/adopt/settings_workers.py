"""The original's worker definitions -> hosts.toml [workers.NAME] (remote/hosts.py's format).

Read from the first of WORKER_FILES that exists (a JSON list of workers, ``{"workers": [...]}``
or ``{name: {...}}``), else from the .env's ``WORKER_<NAME>_<FIELD>`` variables. Each field
accepts the spellings in FIELDS. The worker's project folder becomes ``checkout`` (where
`hosts deploy` pulls this project's code); its root, unless the original names one, is the
folder ``imageselector-root`` beside the project folder (a root lives outside the checkout).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from pipeline.adopt.settings_read import Found

WORKER_FILES = ("bin/embedding/workers.json", "data/db/workers.json", "workers.json")
FIELDS = {
    "address": ("address", "host", "hostname", "ip", "ssh_host"),
    "port": ("port", "ssh_port"),
    "user": ("user", "username", "ssh_user"),
    "key_file": ("key_file", "key", "ssh_key", "identity_file", "ssh_key_path"),
    "checkout": ("project_dir", "project", "project_folder", "project_path", "repo_dir",
                 "remote_dir", "path"),
    "root": ("root", "worker_root"),
    "python": ("python", "python_path", "venv_python", "python_bin"),
    "os": ("os", "platform"),
    "local": ("local", "is_local"),
    "enabled": ("enabled", "active"),
}
LOCAL_ADDRESSES = ("localhost", "127.0.0.1", "::1", "local")
ROOT_BESIDE = "imageselector-root"
_WINDOWS_ABS = re.compile(r"^[A-Za-z]:[\\/]")
_ENV_WORKER = re.compile(r"^WORKER_([A-Z0-9]+)_([A-Z_]+)$")


def _pick(d: dict, names) -> object:
    low = {str(k).lower(): v for k, v in d.items()}
    for n in names:
        if n in low and low[n] not in (None, ""):
            return low[n]
    return None


def _raw_workers(original: Path, env: dict | None) -> tuple[list[tuple[str, dict]], str] | None:
    for rel in WORKER_FILES:
        path = original / rel
        if not path.is_file():
            continue
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and isinstance(data.get("workers"), (list, dict)):
            data = data["workers"]
        if isinstance(data, dict):
            return [(str(k), v) for k, v in data.items() if isinstance(v, dict)], str(path)
        if isinstance(data, list):
            return [(str(w.get("name") or w.get("id") or f"worker{i + 1}"), w)
                    for i, w in enumerate(data) if isinstance(w, dict)], str(path)
        raise ValueError("expected a list of workers or a table of them")
    if env:
        found: dict[str, dict] = {}
        for k, v in env.items():
            m = _ENV_WORKER.match(k)
            if m:
                found.setdefault(m.group(1).lower(), {})[m.group(2).lower()] = v
        if found:
            return sorted(found.items()), f"{original / '.env'} (WORKER_<NAME>_<FIELD>)"
    return None


def _slug(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_-]+", "-", name.strip()).strip("-_").lower()
    return s[:63] or "worker"


def _join(folder: str, rel: str, windows: bool) -> str:
    sep = "\\" if windows else "/"
    rel = rel.replace("/", sep) if windows else rel
    return folder.rstrip("\\/") + sep + rel


def _parent(folder: str, windows: bool) -> str:
    cut = max(folder.rstrip("\\/").rfind("\\"), folder.rstrip("\\/").rfind("/"))
    return folder[:cut] if cut > (2 if windows else 0) else folder


def _truthy(v) -> bool:
    return v is True or str(v).strip().lower() in ("1", "true", "yes", "on")


def read_workers(original: Path, env: dict | None) -> Found:
    """{"workers": {name: table}} for hosts.toml, with a note per choice made."""
    f = Found()
    try:
        raw = _raw_workers(original, env)
    except (ValueError, OSError) as exc:
        f.problems.append(f"workers: cannot read the original's worker file ({exc})")
        return f
    if raw is None:
        f.missing.append(f"workers: none found (looked for {', '.join(WORKER_FILES)} and "
                         f"WORKER_<NAME>_HOST in .env); this machine works alone until "
                         f"hosts.toml names the others")
        return f
    entries, f.source = raw
    workers: dict[str, dict] = {}
    for name, w in entries:
        slug = _slug(name)
        where = f"workers.{slug}"
        address = _pick(w, FIELDS["address"])
        os_kind = str(_pick(w, FIELDS["os"]) or "").lower()
        checkout = _pick(w, FIELDS["checkout"])
        windows = "win" in os_kind or bool(checkout and _WINDOWS_ABS.match(str(checkout)))
        enabled = _pick(w, FIELDS["enabled"])
        if enabled is not None and not _truthy(enabled):
            f.notes.append(f"{where}: disabled in the original; adopted, so `hosts check` "
                           f"can say why it was")
        if _truthy(_pick(w, FIELDS["local"])) or str(address or "").lower() in LOCAL_ADDRESSES:
            workers[slug] = {"local": True}
            f.notes.append(f"{where}: this machine (local = true; runs from this root)")
            continue
        t: dict = {"address": str(address) if address else None,
                   "user": _pick(w, FIELDS["user"]), "key_file": _pick(w, FIELDS["key_file"])}
        port = _pick(w, FIELDS["port"])
        if port is not None:
            try:
                t["port"] = int(port)
            except (TypeError, ValueError):
                f.problems.append(f"{where}: port {port!r} is not a number")
        absent = [k for k in ("address", "user", "key_file") if not t.get(k)]
        if not checkout:
            absent.append("project folder")
        if absent:
            f.problems.append(f"{where}: the original gives no {', '.join(absent)}; "
                              f"not adopted (add it to hosts.toml)")
            continue
        checkout = str(checkout)
        t["os"] = "windows" if windows else "posix"
        t["checkout"] = checkout
        root = _pick(w, FIELDS["root"])
        if root:
            t["root"] = str(root)
        else:
            t["root"] = _join(_parent(checkout, windows), ROOT_BESIDE, windows)
            f.notes.append(f"{where}: root {t['root']} (beside its project folder; change "
                           f"workers.{slug}.root in hosts.toml to move it)")
        python = _pick(w, FIELDS["python"])
        if not python:
            python = "venv\\Scripts\\python.exe" if windows else "venv/bin/python3"
        python = str(python)
        absolute = _WINDOWS_ABS.match(python) if windows else python.startswith("/")
        t["python"] = python if absolute else _join(checkout, python, windows)
        t["key_file"] = str(t["key_file"])
        t["user"] = str(t["user"])
        workers[slug] = {k: v for k, v in t.items() if v is not None}
    f.values = {"workers": workers} if workers else {}
    return f
