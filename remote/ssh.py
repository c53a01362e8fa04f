"""One SSH connection to one worker host (paramiko), safe against the faults the original
suffered: every operation has a deadline, a dead or hung peer is found by an application
heartbeat, and a lost connection is re-made with backoff. Its SFTP file operations are in
remote/sftp_files.py (a mixin this class inherits).

Host keys: only the known_hosts file named by hosts.toml is consulted (never ~/.ssh, never
the agent); an unknown key is refused (a RejectPolicy), a changed key is refused, and
``remote.hostkeys.trust()`` records a new host's key only after the operator confirmed its
fingerprint.

Deadlines: paramiko times out the TCP connect, the banner, the key exchange, auth and
channel opening by itself, but not a channel request (exec, subsystem) nor an SFTP reply
from a peer that stopped answering, and its keepalive never notices a dead peer. So every
operation here runs under a watchdog timer that closes the transport when the deadline
passes; closing wakes every blocked paramiko call, and the operation raises RemoteTimeout.
"""
from __future__ import annotations

import os
import random
import select
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import paramiko

from remote.commands import FILE_MISSING, commands_for
from remote.errors import (AuthFailed, ChangedHostKey, CommandFailed, ConnectionLost,
                           HostKeyError, RemoteError, RemoteFileMissing, RemoteTimeout,
                           UnknownHostKey, Unreachable)
from remote.hosts import Host
from remote.sftp_files import CHUNK, SFTPFiles


@dataclass(frozen=True)
class SSHSettings:
    """Time limits in seconds (pipeline/defaults/remote.toml holds the configured values)."""

    connect_timeout: float = 10.0      # TCP connect and key exchange
    banner_timeout: float = 15.0       # the server's SSH banner
    auth_timeout: float = 15.0         # the answer to our key
    channel_timeout: float = 15.0      # opening a channel
    command_timeout: float = 120.0     # a command, unless the call gives its own
    transfer_timeout: float = 900.0    # one file transfer including its verification
    io_timeout: float = 60.0           # one SFTP request without an answer
    heartbeat_timeout: float = 10.0    # the heartbeat's round trip
    keepalive_s: int = 15              # transport keepalive (keeps NAT state; detects nothing)
    reconnect_attempts: int = 4
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 15.0

    @classmethod
    def from_mapping(cls, values: dict) -> "SSHSettings":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in values.items() if k in known})


@dataclass(frozen=True)
class CommandResult:
    exit_status: int
    stdout_bytes: bytes
    stderr_bytes: bytes

    @property
    def ok(self) -> bool:
        return self.exit_status == 0

    @property
    def stdout(self) -> str:
        return self.stdout_bytes.decode("utf-8", errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_bytes.decode("utf-8", errors="replace")


class _RefuseUnknownHost(paramiko.RejectPolicy):
    """RejectPolicy with a message that names the host, the file and the fingerprint."""

    def __init__(self, host: Host, known_hosts: Path):
        self.host = host
        self.known_hosts = known_hosts

    def missing_host_key(self, client, hostname, key):
        raise UnknownHostKey(
            f"{self.host.name}: host key of {hostname} is not in {self.known_hosts} "
            f"({key.get_name()} {key.fingerprint}); refusing to connect. Check the fingerprint "
            f"on the host, then run `imageselector hosts trust {self.host.name}`",
            fingerprint=key.fingerprint)


class SSHConnection(SFTPFiles):
    """A connection to one host; every method raises a RemoteError subclass on failure."""

    def __init__(self, host: Host, known_hosts: str | os.PathLike,
                 settings: SSHSettings | None = None, sleep: Callable[[float], None] = time.sleep):
        if host.local:
            raise ValueError(f"{host.name} is a local worker; it has no SSH connection")
        self.host = host
        self.known_hosts = Path(known_hosts)
        self.settings = settings or SSHSettings()
        self.commands = commands_for(host)
        self._sleep = sleep
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._lock = threading.RLock()
        self.connects = 0              # successful connections made (tests, status)

    # ---- connection ------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        t = self._client.get_transport() if self._client else None
        return bool(t and t.is_active())

    def connect(self) -> "SSHConnection":
        """Connect once (no retry). Refused host keys and auth failures are not retried
        by anyone: they need the operator."""
        with self._lock:
            self.close()
            key_file = self.host.key_file
            if key_file is None or not key_file.is_file():
                raise AuthFailed(f"{self.host.name}: key file {key_file} does not exist")
            client = paramiko.SSHClient()
            if self.known_hosts.exists():
                try:
                    client.get_host_keys().load(str(self.known_hosts))
                except (OSError, UnicodeDecodeError) as exc:
                    raise HostKeyError(f"{self.known_hosts}: cannot read the known_hosts "
                                       f"file ({exc})") from None
            client.set_missing_host_key_policy(_RefuseUnknownHost(self.host, self.known_hosts))
            s = self.settings
            overall = s.connect_timeout * 2 + s.banner_timeout + s.auth_timeout + 5
            fired = threading.Event()

            def expire():
                fired.set()
                client.close()

            timer = threading.Timer(overall, expire)
            timer.daemon = True
            timer.start()
            where = f"{self.host.name} ({self.host.user}@{self.host.address}:{self.host.port})"
            try:
                client.connect(self.host.address, port=self.host.port, username=self.host.user,
                               key_filename=str(key_file), allow_agent=False,
                               look_for_keys=False, timeout=s.connect_timeout,
                               banner_timeout=s.banner_timeout, auth_timeout=s.auth_timeout,
                               channel_timeout=s.channel_timeout)
            except RemoteError:
                client.close()
                raise
            except paramiko.BadHostKeyException as exc:
                client.close()
                raise ChangedHostKey(
                    f"{self.host.name}: HOST KEY CHANGED for {self.host.known_hosts_name}: it "
                    f"offers {exc.key.get_name()} {exc.key.fingerprint}, {self.known_hosts} "
                    f"has {exc.expected_key.fingerprint}; refusing to connect (if the host was "
                    f"reinstalled, remove its line from {self.known_hosts} and run "
                    f"`imageselector hosts trust {self.host.name}`)",
                    fingerprint=exc.key.fingerprint,
                    expected_fingerprint=exc.expected_key.fingerprint) from None
            except paramiko.PasswordRequiredException:
                client.close()
                raise AuthFailed(f"{self.host.name}: key file {key_file} is encrypted; use a "
                                 f"key without a passphrase for the worker account") from None
            except paramiko.AuthenticationException as exc:
                client.close()
                raise AuthFailed(f"{where}: the host refused key {key_file} ({exc})") from None
            except (socket.timeout, TimeoutError):
                client.close()
                raise Unreachable(f"{where}: no answer within {s.connect_timeout:g}s") from None
            except paramiko.ssh_exception.NoValidConnectionsError:
                client.close()
                raise Unreachable(f"{where}: connection refused (no SSH server on that port?)"
                                  ) from None
            except (paramiko.SSHException, EOFError, OSError, ValueError) as exc:
                client.close()
                if fired.is_set():
                    raise RemoteTimeout(f"{where}: connecting took longer than {overall:g}s"
                                        ) from None
                raise Unreachable(f"{where}: {type(exc).__name__}: {exc}") from None
            finally:
                timer.cancel()
            transport = client.get_transport()
            if transport is None or not transport.is_active() or fired.is_set():
                client.close()
                raise Unreachable(f"{where}: the connection closed during the handshake")
            transport.set_keepalive(s.keepalive_s)
            try:
                # Small requests back to back (close one channel, open the next) would
                # otherwise wait on Nagle + delayed ACK, about 40 ms each.
                transport.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except (OSError, AttributeError):
                pass
            self._client = client
            self.connects += 1
            return self

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        # Called from the watchdog thread too: no lock, idempotent.
        sftp, client = self._sftp, self._client
        self._sftp = None
        self._client = None
        for thing in (sftp, client):
            if thing is not None:
                try:
                    thing.close()
                except Exception:
                    pass

    def __enter__(self) -> "SSHConnection":
        return self.ensure()

    def __exit__(self, *exc) -> None:
        self.close()

    def heartbeat(self, timeout: float | None = None) -> float:
        """Round trip to the server's SSH process: open a channel and close it. Returns the
        seconds it took; a dead or hung peer raises ConnectionLost and drops the connection.
        (paramiko's keepalive sends and forgets, so it never notices.)"""
        timeout = timeout or self.settings.heartbeat_timeout
        with self._lock:
            transport = self._client.get_transport() if self._client else None
            if transport is None or not transport.is_active():
                self._drop()
                raise ConnectionLost(f"{self.host.name}: not connected")
            start = time.monotonic()
            try:
                with self._watchdog(timeout + 1):
                    chan = transport.open_session(timeout=timeout)
                    chan.close()
            except (RemoteTimeout, paramiko.SSHException, EOFError, OSError) as exc:
                self._drop()
                raise ConnectionLost(f"{self.host.name}: heartbeat not answered within "
                                     f"{timeout:g}s ({exc}); connection dropped") from None
            return time.monotonic() - start

    def ensure(self) -> "SSHConnection":
        """A live connection: checks the current one with a heartbeat, else reconnects."""
        with self._lock:
            if self.connected:
                try:
                    self.heartbeat()
                    return self
                except ConnectionLost:
                    pass
            return self.reconnect()

    def reconnect(self) -> "SSHConnection":
        """Connect with exponential backoff and jitter; refused keys fail at once."""
        s = self.settings
        last: RemoteError | None = None
        for attempt in range(max(1, s.reconnect_attempts)):
            if attempt:
                delay = min(s.backoff_max_s, s.backoff_initial_s * 2 ** (attempt - 1))
                self._sleep(delay * random.uniform(0.5, 1.0))
            try:
                return self.connect()
            except (HostKeyError, AuthFailed):
                raise
            except RemoteError as exc:
                last = exc
        raise Unreachable(f"{last} (after {s.reconnect_attempts} attempts)")

    def host_key_fingerprint(self) -> str:
        with self._lock:
            self._require()
            return self._client.get_transport().get_remote_server_key().fingerprint

    # ---- deadlines -----------------------------------------------------------------------
    @contextmanager
    def _watchdog(self, timeout: float):
        fired = threading.Event()

        def expire():
            fired.set()
            self._drop()

        timer = threading.Timer(timeout, expire)
        timer.daemon = True
        timer.start()
        try:
            yield fired
        except Exception:
            if fired.is_set():
                raise RemoteTimeout(f"{self.host.name}: no answer within {timeout:g}s; "
                                    f"connection dropped") from None
            raise
        finally:
            timer.cancel()

    @contextmanager
    def _op(self, what: str, timeout: float):
        """Run one operation under a deadline; translate paramiko's failures."""
        with self._lock:
            self._require()
            try:
                with self._watchdog(timeout):
                    yield self._client
            except RemoteTimeout:
                raise RemoteTimeout(f"{self.host.name}: {what} did not finish within "
                                    f"{timeout:g}s; connection dropped") from None
            except RemoteError:
                raise
            except FileNotFoundError as exc:
                raise RemoteFileMissing(f"{self.host.name}: {what}: no such file "
                                        f"({exc.filename or exc})") from None
            except PermissionError as exc:
                raise RemoteError(f"{self.host.name}: {what}: permission denied "
                                  f"({exc.filename or exc})") from None
            except (paramiko.SSHException, EOFError, ConnectionError, socket.timeout) as exc:
                self._drop()
                raise ConnectionLost(f"{self.host.name}: connection lost during {what} "
                                     f"({type(exc).__name__}: {exc})") from None
            except OSError as exc:
                # SFTP refusals (errno None: a generic failure) arrive as OSError too
                if not self.connected:
                    self._drop()
                    raise ConnectionLost(f"{self.host.name}: connection lost during {what} "
                                         f"({exc})") from None
                raise RemoteError(f"{self.host.name}: {what} failed ({exc})") from None

    def _require(self) -> None:
        if not self.connected:
            self._drop()
            raise ConnectionLost(f"{self.host.name}: not connected")

    # ---- commands ------------------------------------------------------------------------
    def run(self, command: str, timeout: float | None = None, stdin: bytes | None = None,
            check: bool = False, max_output: int = 64 << 20) -> CommandResult:
        """Run one command line (already quoted for the host's shell)."""
        timeout = timeout or self.settings.command_timeout
        with self._op("command", timeout) as client:
            transport = client.get_transport()
            chan = transport.open_session(timeout=self.settings.channel_timeout)
            try:
                chan.exec_command(command)
                if stdin:
                    chan.sendall(stdin)
                chan.shutdown_write()
                out, err = bytearray(), bytearray()
                while True:
                    busy = False
                    while chan.recv_ready():
                        out += chan.recv(CHUNK)
                        busy = True
                    while chan.recv_stderr_ready():
                        err += chan.recv_stderr(CHUNK)
                        busy = True
                    if len(out) + len(err) > max_output:
                        raise RemoteError(f"{self.host.name}: command output over "
                                          f"{max_output} bytes")
                    # End of output is the channel's EOF (the exit status may come
                    # before the last data when our window was full).
                    if (chan.eof_received or chan.closed) and not chan.recv_ready() \
                            and not chan.recv_stderr_ready():
                        break
                    if not busy:
                        select.select([chan], [], [], 0.05)
                status = chan.recv_exit_status()
                if status == -1 and not transport.is_active():
                    # The channel closed without an exit status: the connection died.
                    raise ConnectionLost(f"{self.host.name}: connection lost while a command "
                                         f"ran (no exit status)")
                result = CommandResult(status, bytes(out), bytes(err))
            finally:
                chan.close()
        if check and not result.ok:
            last = (result.stderr.strip().splitlines() or [""])[-1]
            raise CommandFailed(f"{self.host.name}: command exited {result.exit_status}"
                                + (f": {last}" if last else ""), result.exit_status,
                                result.stdout, result.stderr)
        return result

    def start_detached(self, argv, log_path: str | None = None,
                       timeout: float | None = None) -> int:
        """Start ``argv`` on the host so it outlives this session; returns its pid."""
        result = self.run(self.commands.detached(argv, log_path), timeout=timeout, check=True)
        try:
            return int(result.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise RemoteError(f"{self.host.name}: detached start printed no pid "
                              f"({result.stdout.strip()[:200]!r})") from None

    def remote_sha256(self, path: str, timeout: float | None = None) -> str:
        result = self.run(self.commands.sha256(path), timeout=timeout)
        if result.exit_status == FILE_MISSING:
            raise RemoteFileMissing(f"{self.host.name}: no such file {path}")
        if not result.ok:
            raise CommandFailed(f"{self.host.name}: sha256 of {path} failed "
                                f"({result.stderr.strip()[:200]})", result.exit_status)
        word = (result.stdout.split() or [""])[0].lower()
        if len(word) != 64 or any(c not in "0123456789abcdef" for c in word):
            raise RemoteError(f"{self.host.name}: sha256 of {path}: unexpected output "
                              f"{result.stdout.strip()[:100]!r}")
        return word
