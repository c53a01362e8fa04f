"""Backup targets and mirrors: their configuration ([backup.targets.NAME],
[backup.mirrors.NAME]), the checks a destination must pass before anything is written to it
(a `volume` must be a mounted volume with the path on it, and pass a write test: never write
into an empty mount point; a `folder` must exist unless `create`), the destination lock, and
BackupError."""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from pipeline.core.errors import UserError
from pipeline.core.fsutil import exclusive_lock


class BackupError(UserError):
    """A backup, mirror or restore could not be done; the message says why."""


class BackupAborted(BackupError):
    """The backup stage was asked to stop in the middle of a copy."""


# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------
@dataclass
class Target:
    name: str
    kind: str                  # volume | folder
    path: Path
    mount: Path | None
    job: str
    generations: int
    create: bool
    max_bytes: int


@dataclass
class Mirror:
    name: str
    kind: str
    dest: Path
    mount: Path | None
    sources: list[str]
    job: str
    create: bool = False
    # exact: one `source` whose contents go to `dest` itself (rsync SRC/ DEST/), the
    # original's form; else each of `sources` goes to dest/<path> or dest/<name>
    exact: bool = False
    excludes: list[str] = field(default_factory=list)     # rsync --exclude patterns
    source_mount: Path | None = None   # the source's volume: refused when not mounted


def _abs(root, value: str) -> Path:
    p = Path(os.path.expanduser(str(value)))
    return Path(os.path.normpath(p if p.is_absolute() else root.path / p))


def _check_kind(where: str, kind) -> str:
    if kind not in ("volume", "folder"):
        raise UserError(f"{where}: kind must be \"volume\" or \"folder\", got {kind!r}")
    return kind


def load_targets(root) -> list[Target]:
    raw = root.config.get("backup.targets") or {}
    out = []
    for name, t in sorted(raw.items()):
        where = f"backup.targets.{name}"
        if not isinstance(t, dict) or "path" not in t:
            raise UserError(f"{where}: needs at least kind and path")
        kind = _check_kind(where, t.get("kind", "folder"))
        path = _abs(root, t["path"])
        mount = _abs(root, t["mount"]) if t.get("mount") else (path if kind == "volume" else None)
        gens = int(t.get("generations", root.config.get("backup.generations")))
        if gens < 1:
            raise UserError(f"{where}: generations must be at least 1, got {gens}")
        out.append(Target(name, kind, path, mount, str(t.get("job", "backup")), gens,
                          bool(t.get("create", False)), int(t.get("max_bytes", 0))))
    return out


def load_mirrors(root) -> list[Mirror]:
    raw = root.config.get("backup.mirrors") or {}
    out = []
    for name, m in sorted(raw.items()):
        where = f"backup.mirrors.{name}"
        if not isinstance(m, dict) or "dest" not in m or not (m.get("sources") or m.get("source")):
            raise UserError(f"{where}: needs dest and sources (or source)")
        if m.get("sources") and m.get("source"):
            raise UserError(f"{where}: give source (its contents into dest) or sources, not both")
        excludes = m.get("excludes", [])
        if not isinstance(excludes, list) or not all(isinstance(e, str) and e for e in excludes):
            raise UserError(f"{where}: excludes must be a list of rsync patterns")
        kind = _check_kind(where, m.get("kind", "folder"))
        dest = _abs(root, m["dest"])
        mount = _abs(root, m["mount"]) if m.get("mount") else (dest if kind == "volume" else None)
        exact = bool(m.get("source"))
        sources = [str(m["source"])] if exact else [str(s) for s in m["sources"]]
        out.append(Mirror(name, kind, dest, mount, sources, str(m.get("job", "mirror-data")),
                          bool(m.get("create", False)), exact, list(excludes),
                          _abs(root, m["source_mount"]) if m.get("source_mount") else None))
    return out


def find_target(root, name: str) -> Target:
    for t in load_targets(root):
        if t.name == name:
            return t
    names = ", ".join(t.name for t in load_targets(root)) or "none configured"
    raise UserError(f"no backup target named {name!r} (targets: {names})")


# ---------------------------------------------------------------------------
# Target checks
# ---------------------------------------------------------------------------
def check_destination(kind: str, path: Path, mount: Path | None, create: bool, what: str) -> None:
    """Refuse a destination that is not there, not a mounted volume, or not writable."""
    if kind == "volume":
        mount = mount or path
        if not os.path.ismount(mount):
            raise BackupError(f"{what}: {mount} is not a mounted volume (refusing to write into "
                              f"an empty mount point)")
        try:
            rel = os.path.relpath(path, mount)
        except ValueError:
            rel = ".."
        if rel.startswith(".."):
            raise BackupError(f"{what}: {path} is not on the volume {mount}")
    if not path.exists():
        # under a verified mount point a missing folder is safe to create
        if create or (kind == "volume" and Path(path) != Path(mount or path)):
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise BackupError(f"{what}: cannot create {path} ({exc.strerror})") from None
        else:
            raise BackupError(f"{what}: {path} does not exist")
    if not path.is_dir():
        raise BackupError(f"{what}: {path} is not a folder")
    if kind == "volume" and os.stat(path).st_dev != os.stat(mount or path).st_dev:
        raise BackupError(f"{what}: {path} is not on the mounted volume {mount}")
    probe = path / f".write_test.{os.getpid()}"
    try:
        with open(probe, "wb") as fh:
            fh.write(b"ok")
            fh.flush()
            os.fsync(fh.fileno())
        os.unlink(probe)
    except OSError as exc:
        try:
            os.unlink(probe)
        except OSError:
            pass
        raise BackupError(f"{what}: {path} is not writable ({exc.strerror})") from None


@contextmanager
def dir_lock(path: Path, what: str) -> Iterator[None]:
    with exclusive_lock(path / ".backup.lock") as held:
        if not held:
            raise BackupError(f"{what}: another backup is writing to {path}")
        yield
