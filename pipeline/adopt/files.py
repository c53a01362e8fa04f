"""Taking a file of the original into the new root: a hard link where the file system
allows (no extra disk; the original's file is never opened for writing), else a copy
(temp name, fsync, rename).

Only files the new system never writes in place are linked: finished tars, finalized
shards' flat index files, loose images. A file the new system appends to (the last primary
tar) is always copied, so an append can never reach the original.
"""
from __future__ import annotations

import errno
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.fsutil import fsync_dir

LINK_ERRORS = (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES,
               getattr(errno, "EOPNOTSUPP", errno.ENOTSUP))


@dataclass
class Placed:
    how: str          # "linked", "copied", "present"
    bytes_copied: int = 0


def same_file(a: Path, b: Path) -> bool:
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def place(src: Path, dst: Path, mode: str = "auto", durable: bool = True) -> Placed:
    """Make ``dst`` hold ``src``'s bytes: "auto" links (else copies), "copy" copies.
    Idempotent: a ``dst`` that is already ``src``'s inode, or a copy of the same size, is
    left alone."""
    src, dst = Path(src), Path(dst)
    size = src.stat().st_size
    if dst.exists():
        if same_file(src, dst):
            return Placed("present")
        # a copy made earlier (linking impossible here) of the same size
        if (mode != "auto" or not _linkable_here(src, dst)) and dst.stat().st_size == size:
            return Placed("present")
    tmp = dst.with_name(f".{dst.name}.adopt-tmp")
    tmp.unlink(missing_ok=True)
    if mode == "auto":
        try:
            os.link(src, tmp)
            os.replace(tmp, dst)
            if durable:
                fsync_dir(dst.parent)
            return Placed("linked")
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            if exc.errno not in LINK_ERRORS:
                raise
    copy_file(src, tmp, durable)
    os.replace(tmp, dst)
    if durable:
        fsync_dir(dst.parent)
    return Placed("copied", size)


def copy_file(src: Path, dst: Path, durable: bool = True) -> None:
    """Copy bytes only (never the original's mode or times), then fsync."""
    try:
        shutil.copyfile(src, dst)
        if durable:
            fd = os.open(dst, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    except BaseException:
        Path(dst).unlink(missing_ok=True)
        raise


def _linkable_here(src: Path, dst: Path) -> bool:
    try:
        return os.stat(src).st_dev == os.stat(dst.parent).st_dev
    except OSError:
        return False


def same_device(a: Path, b: Path) -> bool:
    """Whether a hard link from ``a`` into folder ``b`` can work (same file system)."""
    try:
        return os.stat(a).st_dev == os.stat(b).st_dev
    except OSError:
        return False


def file_size(path: Path) -> int:
    try:
        return Path(path).stat().st_size
    except OSError:
        return 0


def names_in(folder: Path) -> set[str]:
    try:
        return set(os.listdir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return set()


def count_files(folder: Path, suffix: str) -> int:
    return sum(1 for n in names_in(folder) if n.endswith(suffix))
