"""The SFTP file operations of an SSH connection (stat, list, make folders, remove, read,
atomic writes, verified uploads and downloads), as a mixin that ``remote.ssh.SSHConnection``
inherits: every operation runs under the connection's deadline (``_op``), and a transfer is
written under a temp name, checked by size and SHA-256, then renamed into place.
"""
from __future__ import annotations

import hashlib
import os
import posixpath
import secrets
import stat as stat_mod
from pathlib import Path
from typing import Callable

import paramiko

from remote.errors import RemoteError, TransferError

CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


class SFTPFiles:
    """File operations over the connection's SFTP channel; the class using it provides
    ``host``, ``settings``, ``_client``, ``_sftp``, ``_op`` and ``remote_sha256``."""

    def _sftp_client(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            sftp = self._client.open_sftp()
            sftp.get_channel().settimeout(self.settings.io_timeout)
            self._sftp = sftp
        return self._sftp

    def sftp_path(self, path: str) -> str:
        """Windows' OpenSSH SFTP names C:\\x\\y as /C:/x/y."""
        if self.host.is_windows:
            p = path.replace("\\", "/")
            return "/" + p if len(p) > 1 and p[1] == ":" else p
        return path

    def stat(self, path: str) -> paramiko.SFTPAttributes | None:
        with self._op(f"stat {path}", self.settings.io_timeout):
            try:
                return self._sftp_client().stat(self.sftp_path(path))
            except FileNotFoundError:
                return None

    def exists(self, path: str) -> bool:
        return self.stat(path) is not None

    def is_dir(self, path: str) -> bool:
        st = self.stat(path)
        return st is not None and stat_mod.S_ISDIR(st.st_mode or 0)

    def list_dir(self, path: str) -> list[str]:
        with self._op(f"list {path}", self.settings.io_timeout):
            return sorted(self._sftp_client().listdir(self.sftp_path(path)))

    def make_dirs(self, path: str) -> None:
        """mkdir -p over SFTP."""
        with self._op(f"make folder {path}", self.settings.io_timeout):
            sftp = self._sftp_client()
            target = self.sftp_path(path).rstrip("/") or "/"
            missing = []
            p = target
            while p not in ("", "/"):
                try:
                    st = sftp.stat(p)
                except FileNotFoundError:
                    missing.append(p)
                    p = posixpath.dirname(p)
                    continue
                if not stat_mod.S_ISDIR(st.st_mode or 0):
                    raise RemoteError(f"{self.host.name}: {p} exists and is not a folder")
                break
            for d in reversed(missing):
                try:
                    sftp.mkdir(d)
                except OSError:
                    st = sftp.stat(d)     # made by someone else meanwhile is fine
                    if not stat_mod.S_ISDIR(st.st_mode or 0):
                        raise

    def remove(self, path: str) -> bool:
        """Remove a file; False when it was not there."""
        with self._op(f"remove {path}", self.settings.io_timeout):
            try:
                self._sftp_client().remove(self.sftp_path(path))
                return True
            except FileNotFoundError:
                return False

    def read_tail(self, path: str, max_bytes: int) -> tuple[bytes, bool]:
        """The last ``max_bytes`` of a file over SFTP, and whether that is the whole file."""
        with self._op(f"read {path}", self.settings.io_timeout):
            with self._sftp_client().open(self.sftp_path(path), "rb") as f:
                size = f.stat().st_size
                f.seek(max(0, size - max_bytes))
                return f.read(max_bytes), size <= max_bytes

    def read_bytes(self, path: str, max_bytes: int = 16 << 20) -> bytes:
        with self._op(f"read {path}", self.settings.io_timeout):
            with self._sftp_client().open(self.sftp_path(path), "rb") as f:
                data = f.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise RemoteError(f"{self.host.name}: {path} is larger than {max_bytes} bytes")
        return data

    def write_bytes_atomic(self, path: str, data: bytes) -> None:
        """Write a small file under a temp name, check its size, then rename over."""
        tmp = f"{path}.{secrets.token_hex(4)}.tmp"
        with self._op(f"write {path}", self.settings.io_timeout):
            sftp = self._sftp_client()
            with sftp.open(self.sftp_path(tmp), "wb") as f:
                f.write(data)
            self._commit(sftp, tmp, path, len(data))

    def _commit(self, sftp, tmp: str, path: str, size: int) -> None:
        st = sftp.stat(self.sftp_path(tmp))
        if st.st_size != size:
            sftp.remove(self.sftp_path(tmp))
            raise TransferError(f"{self.host.name}: {path}: wrote {size} bytes, "
                                f"found {st.st_size}")
        try:
            sftp.posix_rename(self.sftp_path(tmp), self.sftp_path(path))
        except OSError:
            # A server without posix-rename: rename refuses to overwrite, so remove first.
            try:
                sftp.remove(self.sftp_path(path))
            except FileNotFoundError:
                pass
            sftp.rename(self.sftp_path(tmp), self.sftp_path(path))

    def put_file(self, local: str | os.PathLike, remote: str, timeout: float | None = None,
                 progress: Callable[[int, int], None] | None = None) -> tuple[int, str]:
        """Upload under a temp name, verify size and SHA-256 on the host, rename into
        place. Returns (size, sha256)."""
        size, digest = sha256_file(local)
        tmp = f"{remote}.{secrets.token_hex(4)}.part"
        timeout = timeout or self.settings.transfer_timeout
        with self._op(f"upload {remote}", timeout):
            sftp = self._sftp_client()
            sftp.put(str(local), self.sftp_path(tmp), callback=progress, confirm=False)
            remote_digest = self.remote_sha256(tmp, timeout=timeout)
            if remote_digest != digest:
                sftp.remove(self.sftp_path(tmp))
                raise TransferError(f"{self.host.name}: {remote}: checksum after upload "
                                    f"{remote_digest[:12]} differs from {digest[:12]}")
            self._commit(sftp, tmp, remote, size)
        return size, digest

    def get_file(self, remote: str, local: str | os.PathLike, expected_sha256: str | None = None,
                 timeout: float | None = None,
                 progress: Callable[[int, int], None] | None = None) -> tuple[int, str]:
        """Download to a temp name, verify size and SHA-256 against the host's (or the given)
        checksum, fsync, rename into place. Returns (size, sha256)."""
        local = Path(local)
        tmp = local.with_name(f".{local.name}.{secrets.token_hex(4)}.part")
        timeout = timeout or self.settings.transfer_timeout
        try:
            with self._op(f"download {remote}", timeout):
                want = expected_sha256 or self.remote_sha256(remote, timeout=timeout)
                sftp = self._sftp_client()
                remote_size = sftp.stat(self.sftp_path(remote)).st_size
                sftp.get(self.sftp_path(remote), str(tmp), callback=progress)
            size, digest = sha256_file(tmp)
            if size != remote_size or digest != want.lower():
                raise TransferError(f"{self.host.name}: {remote}: downloaded {size} bytes "
                                    f"sha256 {digest[:12]}, expected {remote_size} bytes "
                                    f"sha256 {want[:12]}")
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, local)
            return size, digest
        finally:
            tmp.unlink(missing_ok=True)

