"""Alerts: the SMTP server answers, STARTTLS works and the login is accepted (nothing is
sent); with --send-test-alert one `test_alert` goes out through the real path."""
from __future__ import annotations

import smtplib
import socket
import ssl

from pipeline.core.errors import UserError
from pipeline.doctor.check import Check, noted, passed, problem
from pipeline.doctor.context import DoctorContext
from pipeline.doctor.registry import doctor_check

AREA = "alerts"


@doctor_check(AREA, order=40)
def alert_checks(ctx: DoctorContext) -> list[Check]:
    from pipeline.core.alerts import AlertConfig

    try:
        cfg = AlertConfig(ctx.root)
    except UserError as exc:
        return [problem(AREA, "config", str(exc), f"correct the [alerts] table of {ctx.config_path}")]
    if not cfg.enabled:
        return [noted(AREA, "smtp", "alerts are off: the mail server is not checked (see safety)")]
    out = [smtp_login(cfg)]
    if ctx.send_test_alert and out[0].ok:
        out.append(send_test_alert(ctx))
    return out


def smtp_login(cfg) -> Check:
    """Connect, EHLO, STARTTLS, log in; send nothing."""
    from pipeline.core.alerts import smtp_session

    where = f"{cfg.smtp_host}:{cfg.smtp_port}"
    steps: list[str] = []
    try:
        with smtp_session(cfg, steps):
            pass
    except smtplib.SMTPAuthenticationError as exc:
        return problem(AREA, "smtp login", f"{where} refused the login of {cfg.username!r} "
                                           f"({exc.smtp_code} {_text(exc.smtp_error)})",
                       f"put the account's (app) password in {cfg.password_file} (chmod 600), "
                       f"or correct alerts.username")
    except ssl.SSLError as exc:
        return problem(AREA, "smtp tls", f"{where}: STARTTLS failed ({exc.reason or exc})",
                       "set alerts.ca_file to the server's CA, or correct alerts.smtp_host")
    except (OSError, socket.timeout, smtplib.SMTPException) as exc:
        step = steps[-1] if steps else "connect"
        if step == "login":  # some servers drop the connection instead of answering 535
            return problem(AREA, "smtp login", f"{where} did not accept the login of "
                                               f"{cfg.username!r} ({type(exc).__name__}: {exc})",
                           f"put the account's (app) password in {cfg.password_file} (chmod "
                           f"600), or correct alerts.username")
        return problem(AREA, "smtp", f"{where}: {step} failed ({type(exc).__name__}: {exc})",
                       "check alerts.smtp_host and alerts.smtp_port (and the network)")
    except UserError as exc:
        return problem(AREA, "smtp password", str(exc), "correct alerts.password_file")
    who = f" as {cfg.username}" if cfg.username else ""
    return passed(AREA, "smtp login", f"{where} accepted the login{who}"
                                      f"{' over STARTTLS' if cfg.starttls else ''}")


def send_test_alert(ctx: DoctorContext) -> Check:
    from pipeline.core.alerts import Alerter
    from pipeline.core.fmt import date_time

    alerter = Alerter(ctx.root)
    try:
        row = alerter.send("test_alert", f"imageselector doctor: test alert from "
                                         f"{ctx.root.path} at {date_time(ctx.now)}")
    finally:
        if alerter._conn is not None:
            alerter._conn.close()
    if row["sent"]:
        return passed(AREA, "test alert", f"sent to {', '.join(alerter.config.to)}")
    return problem(AREA, "test alert", f"not sent: {row['error']}",
                   "check the [alerts] table (to, from_addr) and the mail server's log")


def _text(value) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
