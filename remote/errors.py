"""Errors of the SSH library. Each message is one line that names the host or file at fault.

``remote/`` imports nothing from ``pipeline/``; the CLI and the orchestrator catch
``RemoteError`` (or turn it into their own error) and show ``str(exc)`` as one line.
"""
from __future__ import annotations


class RemoteError(Exception):
    """Anything that went wrong talking to a worker host."""

    exit_code = 2


class HostsConfigError(RemoteError):
    """hosts.toml is missing a key, has a wrong value, or is not valid TOML."""


class HostKeyError(RemoteError):
    """The host's key could not be verified against the known_hosts file."""


class UnknownHostKey(HostKeyError):
    """The host is not in the known_hosts file (run `imageselector hosts trust NAME`)."""

    def __init__(self, message: str, fingerprint: str | None = None):
        super().__init__(message)
        self.fingerprint = fingerprint


class ChangedHostKey(HostKeyError):
    """The host presented a key other than the recorded one (possible impersonation)."""

    def __init__(self, message: str, fingerprint: str | None = None,
                 expected_fingerprint: str | None = None):
        super().__init__(message)
        self.fingerprint = fingerprint
        self.expected_fingerprint = expected_fingerprint


class AuthFailed(RemoteError):
    """The host refused our client key (or the key file cannot be read)."""


class Unreachable(RemoteError):
    """No TCP connection or no SSH handshake: host down, port closed, wrong address."""


class RemoteTimeout(RemoteError):
    """An operation did not finish within its time limit; the connection was dropped."""


class ConnectionLost(RemoteError):
    """The connection died (peer gone, heartbeat unanswered) during an operation."""


class CommandFailed(RemoteError):
    """A remote command exited non-zero where success was required."""

    def __init__(self, message: str, exit_status: int | None = None,
                 stdout: str = "", stderr: str = ""):
        super().__init__(message)
        self.exit_status = exit_status
        self.stdout = stdout
        self.stderr = stderr


class TransferError(RemoteError):
    """A file arrived with the wrong size or checksum, or could not be moved into place."""


class RemoteFileMissing(RemoteError):
    """A file or folder the operation needs does not exist on the host."""
