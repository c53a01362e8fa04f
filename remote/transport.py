"""One interface for every worker: move files, read and write small files, run programs.

``LocalTransport`` works on this machine's files; ``SSHTransport`` does the same over SFTP
and remote commands. Both take and return paths in the host's own form (``join`` builds
them under the worker's root), both verify transfers by size and SHA-256 and put files in
place by rename, so a reader never sees half a file. The orchestrator keeps one code path.

Idempotent operations on SSH (transfers, reads, atomic writes, listing, the kill file) are
retried once on a fresh connection when the connection is lost; running a program is not
(the caller knows whether that is safe).
"""
from __future__ import annotations

import json
import os
import posixpath
import secrets
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable

from remote.commands import (CLOCK_SCRIPT, FILE_MISSING, HEALTH_SCRIPT, ROOT_MISSING,
                             check_plain_name, check_relative, python_c_loader)
from remote.errors import (CommandFailed, ConnectionLost, RemoteError, RemoteFileMissing,
                           RemoteTimeout, TransferError)
from remote.hosts import Host
from remote.sftp_files import sha256_file
from remote.ssh import CommandResult, SSHConnection, SSHSettings

Progress = Callable[[int, int], None]


class Transport(ABC):
    """What the orchestrator may do with a worker host."""

    host: Host
    root: str

    @property
    def name(self) -> str:
        return self.host.name

    # paths
    @abstractmethod
    def join(self, *relparts: str) -> str:
        """A path under the worker's root; each part is '/'-separated plain names."""

    # files
    @abstractmethod
    def put_file(self, local, remote: str, progress: Progress | None = None) -> tuple[int, str]:
        """Copy a local file to the host, verified; returns (size, sha256)."""

    @abstractmethod
    def get_file(self, remote: str, local, expected_sha256: str | None = None,
                 progress: Progress | None = None) -> tuple[int, str]:
        """Copy a file from the host, verified; returns (size, sha256)."""

    @abstractmethod
    def sha256(self, path: str) -> str: ...

    @abstractmethod
    def list_dir(self, path: str) -> list[str]:
        """Sorted names in a folder; RemoteFileMissing when it does not exist."""

    @abstractmethod
    def exists(self, path: str) -> bool: ...

    @abstractmethod
    def make_dirs(self, path: str) -> None: ...

    @abstractmethod
    def remove(self, path: str) -> bool:
        """Remove a file; False if it was not there."""

    @abstractmethod
    def read_bytes(self, path: str, max_bytes: int = 16 << 20) -> bytes: ...

    @abstractmethod
    def write_bytes_atomic(self, path: str, data: bytes) -> None: ...

    def read_text(self, path: str) -> str:
        return self.read_bytes(path).decode("utf-8")

    def write_text_atomic(self, path: str, text: str) -> None:
        self.write_bytes_atomic(path, text.encode("utf-8"))

    # programs
    @abstractmethod
    def run(self, argv, timeout: float | None = None, check: bool = False) -> CommandResult:
        """Run a program (argv list, no shell) on the host."""

    @abstractmethod
    def imageselector(self, args, timeout: float | None = None) -> CommandResult:
        """``PYTHON -m imageselector ARGS`` there; exit ROOT_MISSING when the root is gone."""

    def measure_clock(self) -> tuple[float, float]:
        """(offset, round trip) in seconds of the host's clock against this machine's; the
        same clock here."""
        return 0.0, 0.0

    def clock_offset_s(self) -> float:
        """How many seconds the host's clock is ahead of this machine's. A heartbeat written
        there is aged by the host's clock, not ours, or a host a minute behind would always
        look stale."""
        return self.measure_clock()[0]

    def start_stage(self, stage: str, extra_args=(), timeout: float | None = None) -> CommandResult:
        """``imageselector start STAGE --root ROOT``: detaches itself on the host."""
        return self.imageselector(["start", stage, "--root", self.root, *extra_args], timeout)

    @abstractmethod
    def write_root_file(self, name: str, text: str) -> None:
        """ROOT/NAME written atomically (kill and pause files)."""

    def stop(self, kill_file: str, reason: str = "stop requested") -> None:
        self.write_root_file(kill_file, reason + "\n")

    @abstractmethod
    def read_root_file(self, relpath: str) -> str | None:
        """ROOT/RELPATH as text (a heartbeat); None when the file does not exist."""

    @abstractmethod
    def read_tail(self, path: str, max_bytes: int) -> tuple[bytes, bool]:
        """The last ``max_bytes`` of a file and whether that is all of it."""

    def tail_root_file(self, relpath: str, lines: int = 50, max_bytes: int = 64 * 1024) -> str | None:
        """The last lines of ROOT/RELPATH (a log), read from its end: no process is started on
        the host (the console asks every refresh). None when the file does not exist."""
        try:
            data, whole = self.read_tail(self.join(relpath), max_bytes)
        except RemoteFileMissing:
            if not self.exists(self.root):
                raise _root_missing(self.host, self.root) from None
            return None
        rows = data.decode("utf-8", "replace").splitlines(keepends=True)
        if not whole:
            rows = rows[1:]   # the first line was cut by the window
        return "".join(rows[-int(lines):]) if lines > 0 else ""

    @abstractmethod
    def health(self) -> dict:
        """Load, memory, disk of the root, GPUs (see remote.commands.HEALTH_SCRIPT)."""

    def check(self) -> None:
        """Raise a RemoteError when the host cannot be used now."""

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _root_missing(host: Host, root: str) -> RemoteFileMissing:
    return RemoteFileMissing(f"{host.name}: root {root} does not exist on that host")


class LocalTransport(Transport):
    """The same operations on this machine's files (the DB host's own worker)."""

    def __init__(self, host: Host, root: str | os.PathLike | None = None,
                 python: str | None = None, command_timeout: float = 120.0):
        self.host = host
        root = root or host.root
        if root is None:
            raise ValueError(f"{host.name}: a local worker needs a root")
        self.root = str(Path(root).absolute())
        self.python = python or host.python or sys.executable
        self.command_timeout = command_timeout

    def join(self, *relparts: str) -> str:
        parts = [p for rel in relparts for p in check_relative(rel)]
        return str(Path(self.root, *parts))

    def _copy_verified(self, src: Path, dst: Path, progress: Progress | None,
                       expected_sha256: str | None = None) -> tuple[int, str]:
        try:
            size, digest = sha256_file(src)
        except FileNotFoundError:
            raise RemoteFileMissing(f"{self.name}: no such file {src}") from None
        if expected_sha256 and digest != expected_sha256.lower():
            raise TransferError(f"{self.name}: {src}: sha256 {digest[:12]} differs from the "
                                f"expected {expected_sha256[:12]}")
        tmp = dst.with_name(f".{dst.name}.{secrets.token_hex(4)}.part")
        try:
            with open(src, "rb") as fi, open(tmp, "wb") as fo:
                done = 0
                while chunk := fi.read(1 << 20):
                    fo.write(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, size)
                fo.flush()
                os.fsync(fo.fileno())
            got_size, got = sha256_file(tmp)
            if (got_size, got) != (size, digest):
                raise TransferError(f"{self.name}: {dst}: copy has {got_size} bytes sha256 "
                                    f"{got[:12]}, source {size} bytes sha256 {digest[:12]}")
            os.replace(tmp, dst)
        except FileNotFoundError as exc:
            raise RemoteFileMissing(f"{self.name}: no such file or folder {exc.filename}"
                                    ) from None
        finally:
            tmp.unlink(missing_ok=True)
        return size, digest

    def put_file(self, local, remote: str, progress: Progress | None = None) -> tuple[int, str]:
        return self._copy_verified(Path(local), Path(remote), progress)

    def get_file(self, remote: str, local, expected_sha256: str | None = None,
                 progress: Progress | None = None) -> tuple[int, str]:
        return self._copy_verified(Path(remote), Path(local), progress, expected_sha256)

    def sha256(self, path: str) -> str:
        try:
            return sha256_file(path)[1]
        except FileNotFoundError:
            raise RemoteFileMissing(f"{self.name}: no such file {path}") from None

    def list_dir(self, path: str) -> list[str]:
        try:
            return sorted(os.listdir(path))
        except FileNotFoundError:
            raise RemoteFileMissing(f"{self.name}: no such folder {path}") from None

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def make_dirs(self, path: str) -> None:
        try:
            os.makedirs(path, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise RemoteError(f"{self.name}: {path} or a folder above it exists and is not "
                              f"a folder") from None

    def remove(self, path: str) -> bool:
        try:
            os.unlink(path)
            return True
        except FileNotFoundError:
            return False

    def read_bytes(self, path: str, max_bytes: int = 16 << 20) -> bytes:
        try:
            with open(path, "rb") as f:
                data = f.read(max_bytes + 1)
        except FileNotFoundError:
            raise RemoteFileMissing(f"{self.name}: no such file {path}") from None
        if len(data) > max_bytes:
            raise RemoteError(f"{self.name}: {path} is larger than {max_bytes} bytes")
        return data

    def write_bytes_atomic(self, path: str, data: bytes) -> None:
        target = Path(path)
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except FileNotFoundError:
            raise RemoteFileMissing(f"{self.name}: no such folder {target.parent}") from None
        finally:
            tmp.unlink(missing_ok=True)

    def run(self, argv, timeout: float | None = None, check: bool = False) -> CommandResult:
        argv = [str(a) for a in argv]
        try:
            p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                               timeout=timeout or self.command_timeout)
        except subprocess.TimeoutExpired:
            raise RemoteTimeout(f"{self.name}: {argv[0]} did not finish within "
                                f"{timeout or self.command_timeout:g}s") from None
        except OSError as exc:
            raise RemoteError(f"{self.name}: cannot run {argv[0]} ({exc.strerror})") from None
        result = CommandResult(p.returncode, p.stdout, p.stderr)
        if check and not result.ok:
            raise CommandFailed(f"{self.name}: {argv[0]} exited {p.returncode}",
                                p.returncode, result.stdout, result.stderr)
        return result

    def imageselector(self, args, timeout: float | None = None) -> CommandResult:
        if not os.path.isdir(self.root):
            return CommandResult(ROOT_MISSING, b"", f"no such folder: {self.root}\n".encode())
        return self.run([self.python, "-m", "imageselector", *args], timeout)

    def write_root_file(self, name: str, text: str) -> None:
        if not os.path.isdir(self.root):
            raise _root_missing(self.host, self.root)
        self.write_text_atomic(self.join(check_plain_name(name)), text)

    def read_root_file(self, relpath: str) -> str | None:
        if not os.path.isdir(self.root):
            raise _root_missing(self.host, self.root)
        try:
            return self.read_text(self.join(relpath))
        except RemoteFileMissing:
            return None

    def read_tail(self, path: str, max_bytes: int) -> tuple[bytes, bool]:
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                f.seek(max(0, size - max_bytes))
                return f.read(max_bytes), size <= max_bytes
        except FileNotFoundError:
            raise RemoteFileMissing(f"{self.name}: no such file {path}") from None

    def health(self) -> dict:
        result = self.run([self.python, "-c", HEALTH_SCRIPT, self.root], check=True)
        return json.loads(result.stdout)


class SSHTransport(Transport):
    """The same operations on a worker host over one SSH connection."""

    def __init__(self, host: Host, known_hosts, settings: SSHSettings | None = None,
                 connection: SSHConnection | None = None):
        self.host = host
        self.root = host.root
        self.conn = connection or SSHConnection(host, known_hosts, settings)
        self.commands = self.conn.commands
        # told about a failure that is retried (the caller's log): a retry doubles the time
        # an operation may take, which is confusing when only the final failure is reported
        self.on_retry: Callable[[RemoteError], None] | None = None
        self._clock: tuple[float, float] | None = None   # (offset, round trip), measured once

    # ---- connection handling ------------------------------------------------------------
    def _connected(self) -> SSHConnection:
        if not self.conn.connected:
            self.conn.reconnect()
        return self.conn

    def _idempotent(self, op):
        """Run ``op(conn)``; once more on a fresh connection if the connection was lost."""
        try:
            return op(self._connected())
        except (ConnectionLost, RemoteTimeout) as exc:
            self.conn.close()
            if self.on_retry is not None:
                self.on_retry(exc)
            return op(self._connected())

    def check(self) -> None:
        self.conn.ensure()

    def close(self) -> None:
        self.conn.close()

    # ---- paths and files --------------------------------------------------------------
    def join(self, *relparts: str) -> str:
        parts = [p for rel in relparts for p in check_relative(rel)]
        if self.host.is_windows:
            return "\\".join([self.root.rstrip("\\/")] + parts)
        return posixpath.join(self.root, *parts)

    def put_file(self, local, remote: str, progress: Progress | None = None) -> tuple[int, str]:
        return self._idempotent(lambda c: c.put_file(local, remote, progress=progress))

    def get_file(self, remote: str, local, expected_sha256: str | None = None,
                 progress: Progress | None = None) -> tuple[int, str]:
        return self._idempotent(lambda c: c.get_file(remote, local, expected_sha256,
                                                     progress=progress))

    def sha256(self, path: str) -> str:
        return self._idempotent(lambda c: c.remote_sha256(path))

    def list_dir(self, path: str) -> list[str]:
        return self._idempotent(lambda c: c.list_dir(path))

    def exists(self, path: str) -> bool:
        return self._idempotent(lambda c: c.exists(path))

    def make_dirs(self, path: str) -> None:
        self._idempotent(lambda c: c.make_dirs(path))

    def remove(self, path: str) -> bool:
        return self._idempotent(lambda c: c.remove(path))

    def read_bytes(self, path: str, max_bytes: int = 16 << 20) -> bytes:
        return self._idempotent(lambda c: c.read_bytes(path, max_bytes))

    def write_bytes_atomic(self, path: str, data: bytes) -> None:
        self._idempotent(lambda c: c.write_bytes_atomic(path, data))

    # ---- programs ---------------------------------------------------------------------
    def run(self, argv, timeout: float | None = None, check: bool = False) -> CommandResult:
        return self._connected().run(self.commands.argv([str(a) for a in argv]), timeout,
                                     check=check)

    def imageselector(self, args, timeout: float | None = None) -> CommandResult:
        return self._connected().run(self.commands.imageselector([str(a) for a in args]),
                                     timeout)

    def _root_command(self, command: str, allow_missing_file: bool = False) -> str | None:
        def op(c: SSHConnection):
            return c.run(command)
        result = self._idempotent(op)
        if result.exit_status == ROOT_MISSING:
            raise _root_missing(self.host, self.root)
        if allow_missing_file and result.exit_status == FILE_MISSING:
            return None
        if not result.ok:
            raise CommandFailed(f"{self.name}: exited {result.exit_status}: "
                                f"{result.stderr.strip()[:300]}", result.exit_status,
                                result.stdout, result.stderr)
        return result.stdout

    def write_root_file(self, name: str, text: str) -> None:
        self._root_command(self.commands.write_root_file(name, text))

    def read_root_file(self, relpath: str) -> str | None:
        return self._root_command(self.commands.read_root_file(relpath), allow_missing_file=True)

    def read_tail(self, path: str, max_bytes: int) -> tuple[bytes, bool]:
        return self._idempotent(lambda c: c.read_tail(path, max_bytes))

    def measure_clock(self) -> tuple[float, float]:
        """(offset, round trip) in seconds: one short run of the host's Python, read at the
        midpoint of the round trip (so the offset is off by at most half the round trip).
        Measured once per transport. A host whose Python does not answer counts as 0."""
        if self._clock is None:
            t0 = time.time()
            try:
                result = self.run([self.host.python, "-c", python_c_loader(CLOCK_SCRIPT)], check=True)
                there = float(result.stdout.strip().splitlines()[-1])
            except (CommandFailed, ValueError, IndexError):
                self._clock = (0.0, 0.0)
            else:
                t1 = time.time()
                self._clock = (there - (t0 + t1) / 2, t1 - t0)
        return self._clock

    def health(self) -> dict:
        out = self._root_command(self.commands.health())
        try:
            return json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise RemoteError(f"{self.name}: health check printed no JSON "
                              f"({out.strip()[:200]!r})") from None


def transport_for(host: Host, known_hosts, settings: SSHSettings | None = None,
                  local_root=None) -> Transport:
    """The right transport for a host from hosts.toml."""
    if host.local:
        return LocalTransport(host, root=host.root or local_root)
    return SSHTransport(host, known_hosts, settings)
