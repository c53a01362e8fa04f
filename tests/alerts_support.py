"""A real SMTP server on loopback (aiosmtpd) with STARTTLS and AUTH, collecting messages."""
from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
from email import message_from_bytes
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def self_signed_cert(folder: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "smtp.crt", folder / "smtp.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class _Sink:
    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):
        msg = message_from_bytes(envelope.content)
        self.messages.append({"from": envelope.mail_from, "to": list(envelope.rcpt_tos),
                              "subject": msg["Subject"], "body": msg.get_payload(decode=True).decode(),
                              "tls": session.ssl is not None})
        return "250 OK"


class SMTPServer:
    """``with SMTPServer(tmp_path, user, password) as smtp: smtp.port, smtp.messages``."""

    def __init__(self, folder: Path, user: str = "alerts", password: str = "s3cret"):
        self.cert, self.key = self_signed_cert(folder)
        self.user, self.password = user, password
        self.port = free_port()
        self.sink = _Sink()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)

        def authenticator(server, session, envelope, mechanism, auth_data):
            ok = isinstance(auth_data, LoginPassword) and auth_data.login.decode() == user \
                and auth_data.password.decode() == password
            return AuthResult(success=ok)

        self.controller = Controller(self.sink, hostname="127.0.0.1", port=self.port, tls_context=context,
                                     require_starttls=True, authenticator=authenticator,
                                     auth_require_tls=True)

    @property
    def messages(self):
        return self.sink.messages

    def __enter__(self):
        self.controller.start()
        self.running = True
        return self

    def stop(self):
        if getattr(self, "running", False):
            self.controller.stop()
            self.running = False

    def __exit__(self, *exc):
        self.stop()


def alert_config(root, smtp: SMTPServer, password_file: Path, **extra) -> str:
    """The [alerts] section pointing at the loopback server."""
    password_file.write_text(smtp.password)
    password_file.chmod(0o600)
    lines = ["[alerts]", "enabled = true", 'smtp_host = "127.0.0.1"', f"smtp_port = {smtp.port}",
             f'ca_file = "{smtp.cert}"', f'username = "{smtp.user}"', f'password_file = "{password_file}"',
             'to = ["5551234567@sms.example.net"]', 'from_addr = "pipeline@imac.local"']
    lines += [f"{k} = {v}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"
