"""Free-disk floors, one per volume, for every stage that writes and for the watch job.

The floor of a path (pipeline/defaults/disk.toml): ``disk.floors_gb`` for the path itself,
the nearest folder above it, or its volume's mount point; else ``disk.min_free_gb``
(``disk.backup_min_free_gb`` for a backup target or mirror destination, never below
``backup.min_free_bytes``). The root's config is read again when its file changes (one stat
per check), so an operator who lowers a floor does not have to restart anything.

A stage guards each unit of work with a ``DiskFloor`` over the folders that unit writes:

- ``wait(ctx)``: at a safe point (no transaction open, nothing half-written), below a floor
  the stage is ``blocked`` with the reason ``disk low: PATH FREE free, floor FLOOR`` and
  sleeps (honouring kill and pause) until there is room, then goes on by itself;
- ``poll(ctx)``: the same without sleeping, for a loop that has other work meanwhile;
- ``refuse()``: the reason, for a step that must fail rather than wait (a backup target).

``disk_low`` is sent once per episode and volume, shared with the watch job through its
table ``watch_conditions`` under the watch's own key for the volume (``disk_low:disk
MOUNT@HOST``): whoever sees the volume low first alerts, the others stay quiet, and the watch
sends the one "ok again". A stage that sees room again marks the episode cleared, so the next
one alerts anew. A stage without a DB (the worker) cannot alert: its heartbeat says
``blocked`` with the reason and ``info.disk_low``, which the orchestrator and the watch carry.
"""
from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from pipeline.core.fmt import size

KIND = "disk_low"
REASON_PREFIX = "disk low: "
INFO_KEY = "disk_low"          # heartbeat info of a stage blocked on disk
GB = 1e9


# ---- volumes ----------------------------------------------------------------------------
def existing(path: Path) -> Path | None:
    """The path, or its nearest existing parent (a folder a stage will create)."""
    for p in (Path(path), *Path(path).parents):
        if p.exists():
            return p
    return None


def mount_of(path: Path) -> Path:
    """The mount point of the volume holding ``path`` (or its nearest existing parent)."""
    p = (existing(Path(path)) or Path("/")).resolve()
    while not os.path.ismount(p) and p != p.parent:
        p = p.parent
    return p


def free_bytes(path: Path) -> int:
    """Free bytes for an unprivileged writer on the volume of ``path``."""
    where = existing(Path(path))
    if where is None:
        raise FileNotFoundError(f"no folder of {path} exists")
    return shutil.disk_usage(where).free


def episode_key(mount: Path, host: str) -> str:
    """The watch's condition key for this volume (pipeline/watch/disk.py builds the same)."""
    return f"{KIND}:disk {mount}@{host}"


# ---- floors -----------------------------------------------------------------------------
class LiveConfig:
    """A root's config, read again when imageselector.toml changes (checked by one stat)."""

    def __init__(self, root):
        self.root = root
        self.config = root.config      # until the first look (the file may be newer)
        self.stamp = ()                # never a real stamp: the first get() reads the file

    def _stamp(self):
        try:
            st = os.stat(self.root.config_path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def get(self, key: str):
        stamp = self._stamp()
        if stamp != self.stamp:
            from pipeline.core.config import Config
            from pipeline.core.errors import UserError

            try:
                self.config = Config(self.root.path, getattr(self.root, "overrides", None))
                self.stamp = stamp
            except UserError:
                pass  # a half-edited file: keep the last good values, look again next time
        return self.config.get(key)


@dataclass(frozen=True)
class Floor:
    bytes: int
    key: str          # the setting that gave it (named in the fix)


def floor_of(config, path: Path, backup: bool = False) -> Floor:
    """The floor of the volume holding ``path`` (``config``: a Config or a LiveConfig)."""
    table = {os.path.normpath(str(Path(k).expanduser())): float(v)
             for k, v in (config.get("disk.floors_gb") or {}).items()}
    if table:
        p = Path(os.path.abspath(path))
        for candidate in (p, *p.parents, mount_of(p)):
            gb = table.get(str(candidate))
            if gb is not None:
                return Floor(int(gb * GB), "disk.floors_gb")
    if backup:
        gb = float(config.get("disk.backup_min_free_gb"))
        reserve = int(config.get("backup.min_free_bytes"))
        if reserve > gb * GB:
            return Floor(reserve, "backup.min_free_bytes")
        return Floor(int(gb * GB), "disk.backup_min_free_gb")
    return Floor(int(float(config.get("disk.min_free_gb")) * GB), "disk.min_free_gb")


@dataclass(frozen=True)
class Reading:
    path: Path
    mount: Path
    free: int
    floor: Floor

    @property
    def low(self) -> bool:
        return self.floor.bytes > 0 and self.free < self.floor.bytes

    def reason(self) -> str:
        return f"{REASON_PREFIX}{self.path} {size(self.free)} free, floor {size(self.floor.bytes)}"

    def info(self) -> dict:
        return {"path": str(self.path), "mount": str(self.mount), "free": self.free,
                "floor": self.floor.bytes, "key": self.floor.key}


def read(config, path: Path, backup: bool = False,
         free: Callable[[Path], int] = free_bytes) -> Reading:
    path = Path(path)
    return Reading(path, mount_of(path), int(free(path)), floor_of(config, path, backup))


# ---- the guard a stage uses ---------------------------------------------------------------
class DiskFloor:
    """The floors of the folders one stage writes. ``conn``: a callable giving the stage's DB
    connection for the alert (None: no DB here, the heartbeat carries the block)."""

    def __init__(self, root, paths: Iterable[Path], *, stage: str, backup: bool = False,
                 conn: Callable[[], object] | None = None, log=None,
                 free: Callable[[Path], int] = free_bytes, host: str | None = None):
        from pipeline.core.alerts import local_host

        self.root = root
        self.paths = [Path(p) for p in paths]
        self.stage = stage
        self.backup = backup
        self.conn = conn
        self.log = log
        self.free = free
        self.host = host or local_host()
        self.config = LiveConfig(root)
        self.blocked_on: Reading | None = None   # the reading that blocked us (this episode)

    @property
    def check_s(self) -> float:
        return max(0.05, float(self.config.get("disk.check_s")))

    def check(self) -> Reading | None:
        """The first of our folders whose volume is below its floor, or None. A volume whose
        free space cannot be read is not judged (its own error comes at the write)."""
        seen = set()
        for path in self.paths:
            try:
                r = read(self.config, path, self.backup, self.free)
            except OSError as exc:
                if self.log is not None:
                    self.log.debug("free space of %s unknown: %s", path, exc)
                continue
            if r.mount in seen:
                continue
            seen.add(r.mount)
            if r.low:
                return r
        return None

    # -- a stage that waits ----------------------------------------------------------------
    def poll(self, ctx) -> bool:
        """One look, no sleep. True: room (a stage blocked by us is unblocked); False: below a
        floor (the stage is blocked with the reason, disk_low sent once this episode)."""
        low = self.check()
        if low is None:
            if self.blocked_on is not None:
                self._room_again(ctx)
            return True
        first = self.blocked_on is None or self.blocked_on.mount != low.mount
        self.blocked_on = low
        ctx.blocked(low.reason())
        ctx.set_info(**{INFO_KEY: low.info()})
        if first:
            self.alert(low)
        return False

    def wait(self, ctx) -> bool:
        """Before a unit of work, at a safe point: wait while below a floor. True: room, go
        on; False: the stage was asked to stop while waiting."""
        while not self.poll(ctx):
            if not ctx.sleep(self.check_s):
                return False
        return True

    def _room_again(self, ctx) -> None:
        was = self.blocked_on
        self.blocked_on = None
        if self.log is not None:
            self.log.info("room again on %s: going on", was.mount)
        ctx.set_info(**{INFO_KEY: None})
        ctx.unblocked()
        self._episode_over(was)

    # -- a step that fails instead -----------------------------------------------------------
    def refuse(self) -> str | None:
        """For a step that must not wait (a backup target in a --once run): the reason when
        below a floor (disk_low sent once this episode), else None."""
        low = self.check()
        if low is None:
            # a step like this runs once per process: an episode an earlier run opened on
            # these volumes is over now that they have room
            for path in self.paths:
                try:
                    self._episode_over(Reading(path, mount_of(path), 0, Floor(0, "")))
                except OSError:
                    pass
            self.blocked_on = None
            return None
        self.blocked_on = low
        self.alert(low)
        return low.reason()

    # -- the alert, once per episode --------------------------------------------------------
    def alert_text(self, r: Reading) -> str:
        from pipeline.core.alerts import sms_line

        doing = "fails" if self.backup else "waits"
        first = sms_line(f"disk {r.mount}", self.host,
                         f"{size(r.free)} free, floor {size(r.floor.bytes)}; {self.stage} {doing}",
                         f"free space there, or lower {r.floor.key}")
        return (f"{first}\nfolder: {r.path}\nthe stage goes on by itself once there is room"
                f"\nfloors: disk.min_free_gb, disk.backup_min_free_gb, disk.floors_gb (imageselector.toml)")

    def alert(self, r: Reading) -> dict | None:
        """disk_low for this volume unless this episode was alerted already (by any stage or
        the watch). Never raises: a broken alert path must not stop the stage."""
        conn = self.conn() if self.conn is not None else None
        if conn is None:
            return None
        try:
            return _alert_once(self.root, conn, episode_key(r.mount, self.host),
                               self.alert_text(r), self.log)
        except Exception as exc:  # the floor still holds; the alert is what failed
            if self.log is not None:
                self.log.error("could not send the disk_low alert: %s", exc)
            return None

    def _episode_over(self, r: Reading) -> None:
        conn = self.conn() if self.conn is not None else None
        if conn is None:
            return
        try:
            _clear_episode(conn, episode_key(r.mount, self.host))
        except Exception as exc:
            if self.log is not None:
                self.log.warning("could not close the disk_low episode of %s: %s", r.mount, exc)


def _alert_once(root, conn, key: str, text: str, log) -> dict | None:
    """Open the episode (or find it open and alerted) in watch_conditions; alert if new."""
    from pipeline.core.alerts import Alerter
    from pipeline.core.db import retry_on_busy, transaction

    now = time.time()

    @retry_on_busy
    def claim() -> bool:
        with transaction(conn):
            row = conn.execute("SELECT sent_at, cleared_at FROM watch_conditions WHERE key = ?",
                               (key,)).fetchone()
            if row is None:
                conn.execute("INSERT INTO watch_conditions(key, kind, text, opened_at, seen_at) "
                             "VALUES (?,?,?,?,?)", (key, KIND, text, now, now))
                return True
            if row[0] is not None and row[1] is None:
                conn.execute("UPDATE watch_conditions SET seen_at = ? WHERE key = ?", (now, key))
                return False          # alerted already this episode
            conn.execute("UPDATE watch_conditions SET text = ?, opened_at = ?, seen_at = ?, "
                         "sent_at = NULL, alert_id = NULL, cleared_at = NULL WHERE key = ?",
                         (text, now, now, key))
            return True

    if not claim():
        return None
    result = Alerter(root, conn=conn, log=log).send(KIND, text)
    if result["sent"] or str(result.get("error") or "").startswith("duplicate"):
        @retry_on_busy
        def mark() -> None:
            with transaction(conn):
                conn.execute("UPDATE watch_conditions SET sent_at = ?, alert_id = ? WHERE key = ?",
                             (now, result["alert_id"], key))

        mark()
    return result


def _clear_episode(conn, key: str) -> None:
    """Room again: the watch sends the one "ok again" (or forgets a never-sent one); a new
    low after this is a new episode."""
    from pipeline.core.db import retry_on_busy, transaction

    @retry_on_busy
    def run() -> None:
        with transaction(conn):
            conn.execute("UPDATE watch_conditions SET cleared_at = COALESCE(cleared_at, ?) "
                         "WHERE key = ?", (time.time(), key))

    run()


# ---- a host that cannot alert itself (a worker: no DB there) ------------------------------
def alert_for_host(root, conn, host: str, low: dict, stage: str, log=None) -> dict | None:
    """disk_low for another host's stage that waits below a floor (``low``: its heartbeat's
    ``info.disk_low``), once per episode. Sent by the orchestrator, which polls the worker
    hosts. Never raises."""
    from pipeline.core.alerts import sms_line

    mount = low.get("mount") or low.get("path")
    first = sms_line(f"disk {mount}", host,
                     f"{size(low.get('free'))} free, floor {size(low.get('floor'))}; {stage} waits",
                     f"free space on {host}, or lower {low.get('key') or 'disk.min_free_gb'} there")
    text = f"{first}\nfolder: {low.get('path')}\nthe {stage} goes on by itself once there is room"
    try:
        return _alert_once(root, conn, episode_key(Path(str(mount)), host), text, log)
    except Exception as exc:
        if log is not None:
            log.error("could not send the disk_low alert for %s: %s", host, exc)
        return None


def host_room_again(conn, host: str, low: dict, log=None) -> None:
    """That host's stage has room again: its episode is over (the watch says "ok again")."""
    try:
        _clear_episode(conn, episode_key(Path(str(low.get("mount") or low.get("path"))), host))
    except Exception as exc:
        if log is not None:
            log.warning("could not close the disk_low episode of %s: %s", host, exc)
