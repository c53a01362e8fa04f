"""Safe extraction of a tar (never extractall): only regular, safely named members, each
under a size cap, each written to a temporary name and renamed."""
from __future__ import annotations

import os
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from pipeline.stages.archive.tarmembers import COPY_CHUNK, DEFAULT_MAX_MEMBER, TarError


# ---------------------------------------------------------------------------
# Safe extraction (never extractall)
# ---------------------------------------------------------------------------
@dataclass
class ExtractReport:
    extracted: list[str] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)   # (member, reason)


def _refusal(info: tarfile.TarInfo, allowed: set[str] | None, max_size: int) -> str | None:
    name = info.name
    if allowed is not None and name not in allowed:
        return "not named in the manifest"
    if not name or name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "absolute path"
    parts = re.split(r"[\\/]+", name)
    if any(p in ("..",) for p in parts):
        return "path with '..'"
    if any(p in ("", ".") for p in parts) or "\0" in name:
        return "odd path"
    if info.issym() or info.islnk():
        return "link"
    if info.ischr() or info.isblk() or info.isfifo():
        return "device or fifo"
    if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
        return f"not a regular file (type {info.type!r})"
    if info.size > max_size:
        return f"oversized ({info.size} bytes, cap {max_size})"
    return None


def safe_extract(tar_path: Path, dest: Path, allowed: Iterable[str] | None,
                 max_size: int = DEFAULT_MAX_MEMBER, strict: bool = False) -> ExtractReport:
    """Extract only regular members named in ``allowed`` (None: any safe name) into ``dest``:
    no absolute or '..' paths, no links or devices, each at most ``max_size`` bytes, each
    written to a temporary name and renamed. Refused members are reported (and with
    ``strict`` raise TarError after the walk); nothing is ever written outside ``dest``."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    real_dest = os.path.realpath(dest)
    allowed_set = set(allowed) if allowed is not None else None
    report = ExtractReport()
    try:
        tf = tarfile.open(tar_path, mode="r:")
    except (tarfile.TarError, OSError) as exc:
        raise TarError(f"{tar_path}: unreadable tar ({exc})") from None
    with tf:
        for info in tf:
            reason = _refusal(info, allowed_set, max_size)
            target = os.path.realpath(os.path.join(real_dest, info.name)) if reason is None else ""
            if reason is None and os.path.commonpath([real_dest, target]) != real_dest:
                reason = "escapes the destination"
            if reason is not None:
                report.refused.append((info.name, reason))
                continue
            os.makedirs(os.path.dirname(target), exist_ok=True)
            tmp = f"{target}.{os.getpid()}.part"
            src = tf.extractfile(info)
            written = 0
            try:
                with open(tmp, "xb") as out:
                    while True:
                        chunk = src.read(COPY_CHUNK)
                        if not chunk:
                            break
                        written += len(chunk)
                        if written > max_size:
                            raise TarError(f"{info.name}: grew over the {max_size}-byte cap")
                        out.write(chunk)
                    out.flush()
                    os.fsync(out.fileno())
                if written != info.size:
                    raise TarError(f"{info.name}: {written} bytes read, header says {info.size}")
                os.replace(tmp, target)
            except BaseException:
                try:
                    os.unlink(tmp)
                except FileNotFoundError:
                    pass
                raise
            report.extracted.append(info.name)
    if report.refused and strict:
        shown = "; ".join(f"{n!r}: {r}" for n, r in report.refused[:5])
        raise TarError(f"{tar_path}: refused {len(report.refused)} member(s): {shown}")
    return report
