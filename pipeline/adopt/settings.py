"""`imageselector adopt settings ORIGINAL_DIR`: the original's settings into this root.

    .env                      -> the Etsy key file (keystring:shared_secret, mode 600, named
                                 by etsy.key_file), [alerts] (password_file points at the
                                 original's password file; a password is never in the config)
    data/db/qps_config.json   -> the root's data/db/qps_config.json (what sync reads)
    workers (settings_workers) -> hosts.toml [workers.*]
    crontab (settings_cron)   -> [schedule.jobs.*] and exact [backup.mirrors.*]
    backups/ link             -> [backup.targets.*]

The original is only read. Every file is written atomically; secrets first, the config last,
so a killed run leaves the root as before or with files the next run finds identical. A value
the root already sets differently is kept (reported), so running it again changes nothing.
"""
from __future__ import annotations

import json
import os
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.adopt.settings_cron import read_backup_target, read_schedule
from pipeline.adopt.settings_read import Found, read_alerts, read_env, read_etsy_key, read_qps
from pipeline.adopt.settings_toml import merge, render
from pipeline.adopt.settings_workers import read_workers
from pipeline.core.errors import UserError
from pipeline.core.fsutil import atomic_write_bytes

KEY_FILE_DEFAULT = "secrets/etsy_api_key"
SMTP_PASSWORD_FILE = "secrets/smtp_password"


@dataclass
class SettingsReport:
    original: str
    root: str
    dry_run: bool
    lines: list[dict] = field(default_factory=list)     # {"part", "status", "text"}

    def add(self, part: str, status: str, text: str) -> None:
        self.lines.append({"part": part, "status": status, "text": text})

    def take(self, part: str, found: Found) -> None:
        for t in found.missing:
            self.add(part, "missing", t)
        for t in found.problems:
            self.add(part, "problem", t)
        for t in found.notes:
            self.add(part, "note", t)

    @property
    def ok(self) -> bool:
        return not any(l["status"] in ("missing", "problem") for l in self.lines)

    def to_json(self) -> dict:
        return {"original": self.original, "root": self.root, "dry_run": self.dry_run,
                "ok": self.ok, "lines": self.lines}

    def render_text(self) -> str:
        head = (f"adopt settings {'(dry run) ' if self.dry_run else ''}from {self.original} "
                f"into {self.root}")
        body = [f"  {l['status']:<9} {l['part']:<8} {l['text']}" for l in self.lines]
        tail = ("all settings adopted" if self.ok else
                f"{sum(l['status'] in ('missing', 'problem') for l in self.lines)} to fix "
                f"(the lines marked missing or problem)")
        return "\n".join([head, *body, tail])


def _check_original(original: Path, root) -> None:
    if not original.is_dir():
        raise UserError(f"original folder {original} does not exist")
    if os.path.realpath(original) == os.path.realpath(root.path):
        raise UserError(f"{original} is the root being adopted into")
    if (original / "imageselector.toml").exists():
        raise UserError(f"{original} is a root of this program, not the original system's "
                        f"(it has imageselector.toml); nothing adopted")
    if not any((original / p).exists() for p in (".env", "data/db/qps_config.json", "data/db")):
        raise UserError(f"{original} is not the original's folder: it has no .env and no "
                        f"data/db/; nothing adopted")


def _read_file_toml(path: Path) -> dict:
    from pipeline.core.config import read_toml

    try:
        return read_toml(path)
    except FileNotFoundError:
        return {}


def _rel_abs(root, value: str) -> Path:
    p = Path(os.path.expanduser(value))
    return p if p.is_absolute() else root.path / p


def _write_secret(path: Path, text: str, dry: bool) -> str:
    """'written', 'same' or 'differs' (an existing different secret is never replaced)."""
    try:
        old = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        old = None
    if old == text:
        return "same"
    if old is not None:
        return "differs"
    if not dry:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic_write_bytes(path, text.encode(), mode=0o600)
    return "written"


class SettingsAdoption:
    def __init__(self, root, original, crontab_text: str | None, crontab_from: str,
                 dry_run: bool = False):
        self.root = root
        self.orig = Path(original).expanduser().absolute()
        self.crontab_text = crontab_text
        self.crontab_from = crontab_from
        self.dry = dry_run
        self.report = SettingsReport(str(self.orig), str(root.path), dry_run)
        self.config: dict = {}        # sections to merge into imageselector.toml

    def run(self) -> SettingsReport:
        _check_original(self.orig, self.root)
        file_cfg = _read_file_toml(self.root.config_path)
        env, env_path = read_env(self.orig)
        if env is not None:
            self.report.add("env", "read", f"{env_path} ({len(env)} variables)")
        self._etsy_key(env, env_path, file_cfg)
        self._rates()
        self._alerts(env, env_path)
        self._schedule()
        found = read_backup_target(self.orig)
        self.report.take("backup", found)
        if found.values:
            self.config.setdefault("backup", {})["targets"] = found.values["targets"]
        self._hosts(env)
        self._write_config(file_cfg)
        return self.report

    # ---- the parts ----------------------------------------------------------------------
    def _etsy_key(self, env, env_path, file_cfg) -> None:
        configured = str((file_cfg.get("etsy") or {}).get("key_file") or "").strip()
        key_file = _rel_abs(self.root, configured or KEY_FILE_DEFAULT)
        found = read_etsy_key(env, env_path, str(key_file))
        self.report.take("etsy", found)
        if not found.values:
            return
        what = _write_secret(key_file, found.values["key"], self.dry)
        if what == "differs":
            self.report.add("etsy", "problem", f"{key_file} already holds another key; it was "
                            f"kept (remove it and run again to take the original's)")
            return
        verb = {"same": "already in", "written": "would write" if self.dry else "wrote"}[what]
        self.report.add("etsy", "adopted", f"{verb} {key_file} (mode 600) from "
                        f"{found.values['from']}")
        if not configured:
            self.config["etsy"] = {"key_file": str(key_file)}

    def _rates(self) -> None:
        found = read_qps(self.orig)
        self.report.take("rates", found)
        if not found.values:
            return
        path = Path(self.root.db_dir) / "qps_config.json"
        try:
            current = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            current = {}
        data = dict(current) if isinstance(current, dict) else {}
        data.update(found.values["rates"])
        data["adopted_from"] = found.source
        data["original"] = found.values["original"]
        rates = ", ".join(f"{k} {v}" for k, v in found.values["rates"].items())
        if {k: current.get(k) for k in found.values["rates"]} == found.values["rates"]:
            self.report.add("rates", "adopted", f"already in {path}: {rates}")
        else:
            if not self.dry:
                atomic_write_bytes(path, (json.dumps(data, indent=2) + "\n").encode())
            self.report.add("rates", "adopted", f"{'would write' if self.dry else 'wrote'} "
                            f"{path}: {rates}")
        for key in found.values["rates"]:
            override = self.root.config.get(f"etsy.{key}")
            if override not in (0, -1, 0.0):
                self.report.add("rates", "note", f"etsy.{key} = {override} in the root's config "
                                f"overrides qps_config.json")

    def _alerts(self, env, env_path) -> None:
        from pipeline.core.config import read_secret

        found = read_alerts(env, env_path, self.orig)
        self.report.take("alerts", found)
        a = found.values.get("alerts")
        if not a:
            return
        if "password" in found.values:
            pw = self.root.path / SMTP_PASSWORD_FILE
            what = _write_secret(pw, found.values["password"], self.dry)
            if what == "differs":
                self.report.add("alerts", "problem", f"{pw} already holds another password; kept")
            a["password_file"] = str(pw)
        pw_file = a.get("password_file")
        if pw_file and (Path(pw_file).exists() or not self.dry):
            try:
                read_secret(pw_file, "alerts.password_file")     # 0600, as alerts will read it
            except UserError as exc:
                self.report.add("alerts", "problem", str(exc))
        self.config["alerts"] = a
        self.report.add("alerts", "adopted", f"SMTP {a['smtp_host']}:{a.get('smtp_port', 587)} "
                        f"to {', '.join(a.get('to', [])) or 'nobody'}"
                        + (f", password file {a['password_file']}" if a.get("password_file") else ""))

    def _schedule(self) -> None:
        if self.crontab_text is None:
            self.report.add("schedule", "missing", f"no crontab to read ({self.crontab_from}); "
                            f"run again with --crontab FILE")
            return
        defaults = (self.root.config.defaults.get("schedule", {}) or {}).get("jobs", {}) or {}
        found = read_schedule(self.crontab_text, self.orig, defaults)
        self.report.take("schedule", found)
        jobs, mirrors = found.values["jobs"], found.values["mirrors"]
        if jobs:
            self.config.setdefault("schedule", {})["jobs"] = jobs
            for name, j in jobs.items():
                self.report.add("schedule", "adopted", f"{name}: {j['cron']}")
            rest = [n for n in defaults if n not in jobs]
            if rest:
                self.report.add("schedule", "note", f"this project's own jobs stay as they are: "
                                f"{', '.join(rest)}")
        if mirrors:
            self.config.setdefault("backup", {})["mirrors"] = mirrors
            for name, m in mirrors.items():
                ex = f" excluding {', '.join(m['excludes'])}" if m.get("excludes") else ""
                self.report.add("mirrors", "adopted", f"{name}: {m['source']} -> {m['dest']} "
                                f"({m['kind']}, job {m['job']}){ex}")

    def _hosts(self, env) -> None:
        from remote.errors import HostsConfigError
        from remote.hosts import parse_hosts

        found = read_workers(self.orig, env)
        self.report.take("workers", found)
        if not found.values:
            return
        path = self.root.hosts_path
        existing = _read_file_toml(path)
        merged, conflicts, added = merge(existing, {"workers": found.values["workers"]})
        for key, mine, theirs in conflicts:
            self.report.add("workers", "kept", f"{key}: hosts.toml has {mine!r} (the original: "
                            f"{theirs!r})")
        try:
            parse_hosts(merged, path)
        except HostsConfigError as exc:
            self.report.add("workers", "problem", f"{exc}; hosts.toml not written")
            return
        for name in found.values["workers"]:
            self.report.add("workers", "adopted", f"{name}: " + ", ".join(
                f"{k} {v}" for k, v in merged["workers"][name].items()))
        if added and not self.dry:
            atomic_write_bytes(path, render(merged, "# hosts.toml: workers (adopt settings)").encode())
        if found.values["workers"]:
            self.report.add("workers", "note", "record each worker's host key: imageselector "
                            "hosts trust NAME; then imageselector doctor")

    def _write_config(self, file_cfg: dict) -> None:
        from pipeline.core.cron import parse_cron

        merged, conflicts, added = merge(file_cfg, self.config)
        for key, mine, theirs in conflicts:
            self.report.add("config", "kept", f"{key}: the root has {mine!r} (the original: "
                            f"{theirs!r}); edit it to take the original's")
        for job in ((merged.get("schedule") or {}).get("jobs") or {}).values():
            parse_cron(str(job.get("cron", "")))          # a bad line refuses before writing
        text = render(merged)
        tomllib.loads(text)                               # what we write reads back
        path = self.root.config_path
        if not added:
            self.report.add("config", "note", f"{path}: nothing new to write")
            return
        if self.dry:
            self.report.add("config", "note", f"would write {len(added)} keys to {path}")
            return
        if path.exists():
            keep = path.with_name(f"{path.name}.before-adopt-{time.strftime('%Y%m%d_%H%M%S')}")
            atomic_write_bytes(keep, path.read_bytes())
            self.report.add("config", "note", f"the previous {path.name} is kept as {keep.name}")
        atomic_write_bytes(path, text.encode())
        self.report.add("config", "adopted", f"wrote {len(added)} keys to {path}")


def read_crontab(root, crontab_file: str | None) -> tuple[str | None, str]:
    """The crontab text to read: --crontab FILE, else `crontab -l` (None when there is none)."""
    from pipeline.core.schedule import CrontabIO

    if crontab_file:
        try:
            return Path(crontab_file).read_text(encoding="utf-8"), crontab_file
        except OSError as exc:
            raise UserError(f"--crontab {crontab_file}: cannot read ({exc.strerror})") from None
    program = str(root.config.get("schedule.crontab"))
    try:
        text = CrontabIO(program).read()
    except UserError as exc:
        return None, str(exc)
    return (text or None), f"{program} -l" + ("" if text else " shows no crontab")


def adopt_settings(root, original, crontab_file: str | None = None, dry_run: bool = False) -> SettingsReport:
    text, where = read_crontab(root, crontab_file)
    return SettingsAdoption(root, original, text, where, dry_run).run()
