"""Alerts to the operator: mail over SMTP with STARTTLS to an address or an SMS gateway.

Every alert is recorded in the DB (`alerts`) with its time, kind and text, so the console can
list them, whether or not it could be sent. Alerts are de-duplicated (the same kind and text
within `alerts.dedupe_s`) and rate-limited (`alerts.max_per_hour`); a failing mail server is
recorded and never stops the caller. The SMTP password is read from a file outside the
project whose permissions are checked.
"""
from __future__ import annotations

import smtplib
import socket
import ssl
import time
from contextlib import contextmanager
from email.message import EmailMessage

from pipeline.core.config import read_secret
from pipeline.core.errors import UserError

KINDS = (
    "run_started", "run_finished", "run_failed", "run_killed", "run_refused",
    "stage_crashed", "stage_failed", "stop_stalled", "watchdog_stall",
    "quota_dropped", "quota_spent", "backup_failed", "backup_overdue", "mirror_failed",
    "volume_missing", "disk_low",
    # the watch job (pipeline/watch/): a stage without a fresh heartbeat, a scheduled job that
    # did not run, the weekly run not started; and one "ok again" when a watched condition clears
    "stage_stale", "schedule_missed", "run_not_started", "condition_cleared",
    # the backup stage and `backup verify`: a snapshot or mirror that failed its verification
    "backup_verify_failed",
    # `schedule run` (cron, launchd, run-due): a scheduled job that exited non-zero or died
    "job_failed",
    # `imageselector doctor --send-test-alert`: proves the whole alert path reaches the operator
    "test_alert",
)

SMS_CHARS = 160

# A stage that told the operator about its own failure lists those alert kinds under this key
# of its info (ctx.set_info), which its final heartbeat keeps: the runner (stage_failed) and
# `schedule run` (job_failed) then do not say the same thing again in vaguer words.
OWN_ALERTS_KEY = "alerted"


def own_alerts(heartbeat_or_status: dict | None) -> list[str]:
    """The alert kinds a stage's last run sent about its own failure (from its heartbeat or
    its status row)."""
    info = (heartbeat_or_status or {}).get("info") or {}
    return [str(k) for k in info.get(OWN_ALERTS_KEY) or []]


def local_host() -> str:
    """This machine's short name, as the operator knows it."""
    return socket.gethostname().split(".")[0] or "localhost"


def cut_text(text: str, n: int) -> str:
    if n <= 0:
        return ""
    return text if len(text) <= n else text[:max(0, n - 1)].rstrip() + "…"


def sms_line(thing: str, host: str, problem: str, fix: str, limit: int = SMS_CHARS) -> str:
    """``THING on HOST: PROBLEM; fix: FIX`` in at most ``limit`` characters (an alert's first
    line, which an SMS gateway shows): the problem is shortened first, then the fix, so the
    thing and the host always show."""
    head, mid = f"{thing} on {host}: ", "; fix: "
    line = head + problem + mid + fix
    if len(line) <= limit:
        return line
    room = limit - len(head) - len(mid) - len(fix)
    if room >= 20:
        return head + cut_text(problem, room) + mid + fix
    problem = cut_text(problem, 20)
    return cut_text(head + problem + mid + fix, limit)


class AlertConfig:
    """The [alerts] section, checked once at start (a bad key is named, and refused)."""

    def __init__(self, root):
        cfg = root.config
        self.enabled = bool(cfg.get("alerts.enabled"))
        self.smtp_host = str(cfg.get("alerts.smtp_host"))
        self.smtp_port = int(cfg.get("alerts.smtp_port"))
        self.starttls = bool(cfg.get("alerts.starttls"))
        self.ca_file = str(cfg.get("alerts.ca_file"))
        self.username = str(cfg.get("alerts.username"))
        self.password_file = str(cfg.get("alerts.password_file"))
        self.from_addr = str(cfg.get("alerts.from_addr"))
        self.to = list(cfg.get("alerts.to"))
        self.subject_prefix = str(cfg.get("alerts.subject_prefix"))
        self.dedupe_s = float(cfg.get("alerts.dedupe_s"))
        self.max_per_hour = int(cfg.get("alerts.max_per_hour"))
        self.timeout_s = float(cfg.get("alerts.timeout_s"))
        self.where = str(root.config_path)
        self.validate()

    def validate(self) -> None:
        if not self.enabled:
            return
        if not self.smtp_host:
            raise UserError(f"{self.where}: alerts.smtp_host is empty (alerts are enabled)")
        if not 0 < self.smtp_port < 65536:
            raise UserError(f"{self.where}: alerts.smtp_port must be 1-65535, got {self.smtp_port}")
        if not self.to or not all(isinstance(a, str) and "@" in a for a in self.to):
            raise UserError(f"{self.where}: alerts.to must list e-mail or SMS-gateway addresses, "
                            f"got {self.to!r}")
        if "@" not in self.from_addr:
            raise UserError(f"{self.where}: alerts.from_addr must be an e-mail address, got {self.from_addr!r}")
        if self.username and not self.password_file:
            raise UserError(f"{self.where}: alerts.password_file is empty but alerts.username is set")
        if self.password_file:
            read_secret(self.password_file, "alerts.password_file")  # refuses one others can read


class Alerter:
    """Records and sends alerts. ``send`` never raises for a delivery failure."""

    def __init__(self, root, conn=None, log=None):
        self.root = root
        self.config = AlertConfig(root)
        self._conn = conn
        self.log = log

    def _db(self):
        if self._conn is None:
            from pipeline.core.db import open_db

            self._conn = open_db(self.root)
        return self._conn

    def _recent(self, conn, kind: str, text: str, now: float) -> tuple[bool, int]:
        dup = conn.execute("SELECT 1 FROM alerts WHERE kind = ? AND text = ? AND at > ? AND sent = 1",
                           (kind, text, now - self.config.dedupe_s)).fetchone() is not None
        sent_last_hour = conn.execute("SELECT COUNT(*) FROM alerts WHERE sent = 1 AND at > ?",
                                      (now - 3600,)).fetchone()[0]
        return dup, sent_last_hour

    def send(self, kind: str, text: str) -> dict:
        """Record the alert and try to deliver it. Returns the recorded row as a dict."""
        from pipeline.core.db import retry_on_busy, transaction

        if kind not in KINDS:
            raise ValueError(f"unknown alert kind {kind!r}")
        now = time.time()
        conn = self._db()
        dup, sent_last_hour = self._recent(conn, kind, text, now)
        sent, error = False, None
        if not self.config.enabled:
            error = "alerts disabled"
        elif dup:
            error = f"duplicate within {self.config.dedupe_s:.0f} s: not sent again"
        elif sent_last_hour >= self.config.max_per_hour:
            error = f"rate limit: {self.config.max_per_hour} alerts sent in the last hour"
        else:
            try:
                self._deliver(kind, text)
                sent = True
            except (OSError, smtplib.SMTPException, ssl.SSLError, UserError) as exc:
                error = f"{type(exc).__name__}: {exc}"
        if self.log is not None:
            self.log.warning("alert %s: %s%s", kind, text.splitlines()[0] if text else "",
                             "" if sent else f" (not sent: {error})")

        @retry_on_busy
        def record() -> int:
            with transaction(conn):
                return conn.execute("INSERT INTO alerts(at, kind, text, sent, error) VALUES (?,?,?,?,?)",
                                    (now, kind, text, int(sent), error)).lastrowid

        alert_id = record()
        return {"alert_id": alert_id, "at": now, "kind": kind, "text": text, "sent": sent, "error": error}

    def _deliver(self, kind: str, text: str) -> None:
        cfg = self.config
        msg = EmailMessage()
        first = text.splitlines()[0] if text else kind
        msg["Subject"] = f"{cfg.subject_prefix} {kind}: {first}"[:200]
        msg["From"] = cfg.from_addr
        msg["To"] = ", ".join(cfg.to)
        msg.set_content(text)
        with smtp_session(cfg) as smtp:
            smtp.send_message(msg)


@contextmanager
def smtp_session(cfg, steps: list[str] | None = None):
    """A connection to the mail server, through EHLO, STARTTLS and the login: the one handshake
    that alerts and the doctor's check share. ``steps`` (when given) records how far it got,
    so a failure can name the step."""
    steps = steps if steps is not None else []
    steps.append("connect")
    with smtplib.SMTP(cfg.smtp_host, cfg.smtp_port, timeout=cfg.timeout_s) as smtp:
        steps.append("EHLO")
        smtp.ehlo()
        if cfg.starttls:
            steps.append("STARTTLS")
            smtp.starttls(context=ssl.create_default_context(cafile=cfg.ca_file or None))
            smtp.ehlo()
        if cfg.username:
            steps.append("login")
            smtp.login(cfg.username, read_secret(cfg.password_file, "alerts.password_file"))
        yield smtp


def last_sent_by_kind(conn) -> dict[str, float | None]:
    """Every alert kind with the time it was last delivered (None: never), so the operator
    can see the alert path works (`status --json` "alerts_last_sent", the runner summary)."""
    sent = dict(conn.execute("SELECT kind, MAX(at) FROM alerts WHERE sent = 1 GROUP BY kind").fetchall())
    return {kind: sent.get(kind) for kind in KINDS}


def recent_alerts(conn, limit: int = 50) -> list[dict]:
    rows = conn.execute("SELECT alert_id, at, kind, text, sent, error FROM alerts ORDER BY at DESC LIMIT ?",
                        (limit,)).fetchall()
    return [{"alert_id": r[0], "at": r[1], "kind": r[2], "text": r[3], "sent": bool(r[4]), "error": r[5]}
            for r in rows]
