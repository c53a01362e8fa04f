"""Stages: the one table of names, kill and pause files and states (DECISIONS.md), and the
stage runtime every long-running stage uses (ARCHITECTURE.md, "The stage contract").

Nothing else spells these names: use ``STAGES[name].kill_file`` and friends.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass


class StageState(str, enum.Enum):
    """The stage states shown by status, the CLI and the console."""

    RUNNING = "running"
    PAUSING = "pausing"
    PAUSED = "paused"
    BLOCKED = "blocked"          # waiting on disk, quota or a volume
    STOPPING = "stopping"
    STOPPED = "stopped"
    CRASHED = "crashed"
    STALE = "stale"              # alive, but the heartbeat has stopped moving
    UNREACHABLE = "unreachable"  # its host does not answer

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class StageSpec:
    name: str
    kill_file: str
    pause_tag: str | None       # PAUSE_<tag> / PAUSED_<tag>; None: the stage has no pause
    where: str                  # "db_host", "worker" or "sandbox"
    entry: str                  # "module:function"
    description: str

    @property
    def pause_file(self) -> str | None:
        return f"PAUSE_{self.pause_tag}" if self.pause_tag else None

    @property
    def paused_file(self) -> str | None:
        return f"PAUSED_{self.pause_tag}" if self.pause_tag else None

    @property
    def uses_db(self) -> bool:
        # A worker never opens the DB (its host has none); the sandbox API has no use for it.
        return self.where == "db_host"


_SPECS = [
    StageSpec("sync", "KILL_SD", "SD", "db_host", "pipeline.stages.sync.entry:run",
              "crawl the Etsy API: taxonomy, listings, images, shops, reviews"),
    StageSpec("download", "KILL_DL", "DL", "db_host", "pipeline.stages.download.entry:run",
              "download discovered images with parallel workers"),
    StageSpec("orchestrate", "KILL_ORCH", "ORCH", "db_host", "pipeline.stages.orchestrate.entry:run",
              "send batches to the workers and import their results"),
    StageSpec("tar", "KILL_TAR", "TAR", "db_host", "pipeline.stages.archive.tar_entry:run",
              "archive bg-removed images in tars of 10,000"),
    StageSpec("primary", "KILL_PRIMARY", None, "db_host", "pipeline.stages.archive.primary_entry:run",
              "extract each listing's primary image into the primary tars"),
    StageSpec("backup", "KILL_BACKUP", None, "db_host", "pipeline.stages.backup.entry:run",
              "back up data/ to the backup targets, mirrors and their verification"),
    StageSpec("pipeline", "KILL_PIPELINE", None, "db_host", "pipeline.stages.runner.entry:run",
              "the weekly run: drives every stage, then the maintenance phase"),
    StageSpec("worker", "KILL_WORKER", None, "worker", "pipeline.stages.worker.entry:run",
              "background removal and the five embeddings (on every worker host)"),
    StageSpec("etsy-api", "KILL_API", None, "sandbox", "pipeline.stages.etsy_api.entry:run",
              "the local Etsy API (sandbox only)"),
    # Not a pipeline stage: a small real stage that proves the stage contract in tests.
    StageSpec("selftest", "KILL_SELFTEST", "SELFTEST", "db_host", "pipeline.stages.selftest.entry:run",
              "fake units of work, for testing the stage contract"),
]

STAGES: dict[str, StageSpec] = {spec.name: spec for spec in _SPECS}

# The order of the pipeline, used for "stop all" and the status listing.
PIPELINE_ORDER = ["sync", "download", "orchestrate", "tar", "primary", "backup", "pipeline",
                  "worker", "etsy-api"]
PAUSABLE = [name for name in PIPELINE_ORDER if STAGES[name].pause_tag]


def spec(name: str) -> StageSpec:
    from pipeline.core.errors import UserError

    try:
        return STAGES[name]
    except KeyError:
        raise UserError(f"unknown stage {name!r} (stages: {', '.join(PIPELINE_ORDER)})") from None


# ===========================================================================
# The stage runtime
# ===========================================================================
import argparse  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import logging.handlers  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

from pipeline.core.errors import AlreadyRunning, UserError  # noqa: E402
from pipeline.core.fsutil import atomic_write_json, read_json_or_none  # noqa: E402
from pipeline.core.procs import pid_alive, process_start_time  # noqa: E402

LIVE_STATES = (StageState.RUNNING, StageState.PAUSING, StageState.PAUSED, StageState.BLOCKED,
               StageState.STOPPING, StageState.STALE)

# Outcomes recorded for a finished run.
OK, FAILED, STOPPED, CRASHED = "ok", "failed", "stopped", "crashed"


def load_entry(stage: StageSpec) -> Any:
    module_name, _, func_name = stage.entry.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise UserError(f"stage {stage.name!r} is not available in this version "
                            f"({module_name} is missing)") from None
        raise
    return module, getattr(module, func_name)


class StageContext:
    """What a running stage gets from the runtime (see the stage contract)."""

    def __init__(self, root, stage: StageSpec, once: bool, args: argparse.Namespace,
                 log: logging.Logger, previous: dict | None):
        self.root = root
        self.stage = stage
        self.config = root.config
        self.once = once
        self.args = args
        self.log = log
        self.previous = previous
        self.previous_crashed = bool(previous) and previous.get("state") not in (
            StageState.STOPPED.value, None)
        self.poll_s = float(self.config.get("stage.poll_s"))
        self._term = threading.Event()
        self._lock = threading.Lock()
        self._db = None
        self.counters: dict[str, float] = {}
        self.current: str | None = None
        self.info: dict[str, Any] = {}
        self.state = StageState.RUNNING
        self.blocked_reason: str | None = None
        self.progress_at = time.time()
        self.stop_seen = False

    # ---- stop and pause ------------------------------------------------
    def request_term(self) -> None:
        """SIGTERM (and Ctrl-C in the foreground) is handled exactly like the kill file."""
        self._term.set()

    def stop_requested(self) -> bool:
        if self._term.is_set() or self.root.file(self.stage.kill_file).exists():
            self.stop_seen = True
            return True
        return False

    def checkpoint(self) -> bool:
        """A safe point (no transaction open). Honours a pause request; returns False when
        the stage must stop."""
        if self.stop_requested():
            return False
        pause_file = self.stage.pause_file
        if pause_file and self.root.file(pause_file).exists():
            self._pause()
        return not self.stop_requested()

    def _pause(self) -> None:
        paused_path = self.root.file(self.stage.paused_file)
        previous_state = self.state
        self._set_state(StageState.PAUSED)
        atomic_write_json(paused_path, {"pid": os.getpid(), "at": time.time()})
        self.log.info("paused (%s present)", self.stage.pause_file)
        self.write_heartbeat()
        try:
            while self.root.file(self.stage.pause_file).exists() and not self.stop_requested():
                self._term.wait(self.poll_s)
        finally:
            try:
                paused_path.unlink()
            except FileNotFoundError:
                pass
            self._set_state(previous_state if previous_state != StageState.PAUSED
                            else StageState.RUNNING)
            self.log.info("resumed")
            self.write_heartbeat()

    def sleep(self, seconds: float) -> bool:
        """Sleep, waking early for a stop request; honours pauses. False: stop now."""
        deadline = time.monotonic() + seconds
        while True:
            if not self.checkpoint():
                return False
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            self._term.wait(min(self.poll_s, left))

    # ---- progress --------------------------------------------------------
    def progress(self, n: float = 1, counter: str = "done", current: str | None = None) -> None:
        with self._lock:
            self.counters[counter] = self.counters.get(counter, 0) + n
            if current is not None:
                self.current = str(current)
            if n:
                self.progress_at = time.time()

    def set_counter(self, name: str, value: float) -> None:
        with self._lock:
            if self.counters.get(name) != value:
                self.progress_at = time.time()
            self.counters[name] = value

    def set_current(self, item: str | None) -> None:
        with self._lock:
            self.current = None if item is None else str(item)

    def set_info(self, **fields: Any) -> None:
        """Free-form fields for the heartbeat (phase, quota left, ...)."""
        with self._lock:
            self.info.update(fields)

    def blocked(self, reason: str) -> None:
        if self.state != StageState.BLOCKED or self.blocked_reason != reason:
            self.log.warning("blocked: %s", reason)
        self.blocked_reason = reason
        self._set_state(StageState.BLOCKED)

    def unblocked(self) -> None:
        if self.state == StageState.BLOCKED:
            self.log.info("unblocked")
        self.blocked_reason = None
        self._set_state(StageState.RUNNING)

    def _set_state(self, state: StageState) -> None:
        with self._lock:
            self.state = state

    # ---- DB ----------------------------------------------------------------
    def db(self):
        if not self.stage.uses_db:
            raise RuntimeError(f"stage {self.stage.name} runs where there is no DB")
        if self._db is None:
            from pipeline.core.db import open_db

            self._db = open_db(self.root)
        return self._db

    def close_db(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    # ---- heartbeat ---------------------------------------------------------
    def heartbeat_payload(self) -> dict:
        with self._lock:
            return {
                "state": self.state.value,
                "counters": dict(self.counters),
                "current": self.current,
                "progress_at": self.progress_at,
                "blocked_reason": self.blocked_reason,
                "info": dict(self.info),
            }

    def write_heartbeat(self) -> None:
        self._heartbeat_writer()  # set by the runtime


class _Heartbeat:
    """Writes run/<stage>.json every heartbeat_s from a thread, with a rate over the last
    intervals (so a slow unit of work does not make the heartbeat look dead)."""

    def __init__(self, ctx: StageContext, base: dict, interval: float):
        self.ctx = ctx
        self.base = base
        self.interval = interval
        self.path = ctx.root.heartbeat_path(ctx.stage.name)
        self.stop = threading.Event()
        self.samples: list[tuple[float, float]] = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._loop, name=f"heartbeat-{ctx.stage.name}",
                                       daemon=True)

    def write(self, extra: dict | None = None) -> dict:
        with self.lock:
            now = time.time()
            payload = dict(self.base)
            payload.update(self.ctx.heartbeat_payload())
            done = float(payload["counters"].get("done", 0))
            self.samples.append((now, done))
            self.samples = [s for s in self.samples if now - s[0] <= 60] or [(now, done)]
            t0, d0 = self.samples[0]
            payload["rate"] = round((done - d0) / (now - t0), 3) if now > t0 else 0.0
            payload["heartbeat"] = now
            if extra:
                payload.update(extra)
            atomic_write_json(self.path, payload)
            return payload

    def _loop(self) -> None:
        while not self.stop.wait(self.interval):
            try:
                self.write()
            except Exception:  # a full disk must not kill the stage; the status shows stale
                self.ctx.log.exception("heartbeat write failed")

    def start(self) -> None:
        self.write()
        self.thread.start()

    def finish(self, extra: dict) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout=5)
        self.write(extra)


class ReopeningLogHandler(logging.handlers.WatchedFileHandler):
    """A stage's log file that follows log rotation: housekeeping renames a full log, and the
    next line opens a new one (WatchedFileHandler). A detached stage's stdout and stderr are
    that log too (tracebacks, library warnings): they are pointed at the new file as well, so
    nothing keeps flowing into the rotated one. Nothing is ever lost (no copy-and-truncate)."""

    def __init__(self, path, redirect_fds: tuple[int, ...] = ()):
        self.redirect_fds = redirect_fds
        super().__init__(path, encoding="utf-8")

    def _open(self):
        stream = super()._open()
        for fd in self.redirect_fds:
            os.dup2(stream.fileno(), fd)
        return stream


def _fds_writing_to(path) -> tuple[int, ...]:
    """Which of stdout and stderr already write to ``path`` (a detached stage's log)."""
    try:
        st = os.stat(path)
    except OSError:
        return ()
    same = []
    for fd in (1, 2):
        try:
            if os.path.samestat(os.fstat(fd), st):
                same.append(fd)
        except OSError:
            pass
    return tuple(same)


def _setup_logging(root, stage: StageSpec) -> logging.Logger:
    root.logs_dir.mkdir(parents=True, exist_ok=True)
    log_path = root.log_path(stage.name)
    logger = logging.getLogger(f"imageselector.{stage.name}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    fmt = logging.Formatter("%(asctime)s %(levelname)s [%(process)d] %(message)s")
    redirected = _fds_writing_to(log_path)
    file_handler = ReopeningLogHandler(log_path, redirect_fds=redirected)
    file_handler.setFormatter(fmt)
    logger.addHandler(file_handler)
    # Detached, stderr already is the log file: do not write every line twice.
    if 2 not in redirected:
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(fmt)
        logger.addHandler(stream)
    return logger


class _InstanceLock:
    """One instance per root: an flock on run/<stage>.lock, released by the kernel when the
    process dies, so a crashed stage never leaves a lock behind."""

    def __init__(self, path: Path):
        self.path = path
        self.fd: int | None = None

    def acquire(self) -> bool:
        from pipeline.core.fsutil import try_flock

        self.fd = try_flock(self.path)  # not inherited: os.open descriptors never are
        return self.fd is not None

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _record_start(ctx: StageContext, base: dict) -> int | None:
    if not ctx.stage.uses_db:
        return None
    from pipeline.core.db import retry_on_busy, transaction

    conn = ctx.db()

    @retry_on_busy
    def write() -> int:
        with transaction(conn):
            # We hold the instance lock, so an unfinished run of this stage here is dead.
            conn.execute("UPDATE stage_runs SET outcome = ?, reason = ?, ended_at = ? "
                         "WHERE stage = ? AND host = ? AND ended_at IS NULL",
                         (CRASHED, "process died without recording an exit", time.time(),
                          ctx.stage.name, base["host"]))
            cur = conn.execute("INSERT INTO stage_runs(stage, host, pid, started_at) VALUES (?,?,?,?)",
                               (ctx.stage.name, base["host"], base["pid"], base["started"]))
            return cur.lastrowid

    return write()


def _record_exit(ctx: StageContext, run_id: int | None, code: int, outcome: str, reason: str) -> None:
    if run_id is None:
        return
    from pipeline.core.db import retry_on_busy, transaction

    conn = ctx.db()

    @retry_on_busy
    def write() -> None:
        with transaction(conn):
            conn.execute("UPDATE stage_runs SET ended_at = ?, exit_code = ?, outcome = ?, reason = ?, "
                         "counters = ? WHERE run_id = ?",
                         (time.time(), code, outcome, reason, json.dumps(ctx.counters), run_id))

    write()


def run_stage(root, name: str, once: bool = False, args: argparse.Namespace | None = None,
              install_signals: bool = True) -> int:
    """Run a stage in this process, under the full stage contract. Returns the exit status."""
    stage = spec(name)
    args = args or argparse.Namespace()
    module, entry = load_entry(stage)
    kill_path = root.file(stage.kill_file)
    lock = _InstanceLock(root.lock_path(name))
    try:
        if kill_path.exists():
            raise UserError(f"{stage.kill_file} exists at {root.path}: remove it to start {name} "
                            f"(it asks {name} to stop)")
        if not lock.acquire():
            hb = read_json_or_none(root.heartbeat_path(name)) or {}
            raise AlreadyRunning(f"stage {name} is already running on this root "
                                 f"(pid {hb.get('pid', '?')}, since {_fmt_time(hb.get('started'))})")
    except UserError as exc:
        refused = getattr(module, "on_refused", None)  # e.g. the runner alerts the operator
        if refused is not None:
            refused(root, str(exc))
        raise
    previous = read_json_or_none(root.heartbeat_path(name))
    log = _setup_logging(root, stage)
    ctx = StageContext(root, stage, once, args, log, previous)
    now = time.time()
    base = {"stage": name, "pid": os.getpid(), "host": socket.gethostname(),
            "proc_start": process_start_time(os.getpid()), "started": now, "once": once,
            "log": str(root.log_path(name)), "exit": None,
            "last_exit": (previous or {}).get("exit")}
    heartbeat = _Heartbeat(ctx, base, float(root.config.get("stage.heartbeat_s")))
    ctx._heartbeat_writer = heartbeat.write
    old_handlers = {}
    if install_signals and threading.current_thread() is threading.main_thread():
        def on_term(signum, frame):
            ctx.log.info("signal %s: stopping as for %s", signum, stage.kill_file)
            ctx.request_term()

        def on_int(signum, frame):
            if ctx._term.is_set():
                raise KeyboardInterrupt
            on_term(signum, frame)

        old_handlers[signal.SIGTERM] = signal.signal(signal.SIGTERM, on_term)
        old_handlers[signal.SIGINT] = signal.signal(signal.SIGINT, on_int)
    code, outcome, reason = 1, FAILED, ""
    run_id = None
    try:
        if ctx.previous_crashed:
            log.warning("previous run (pid %s) ended without recording an exit: recovering",
                        previous.get("pid"))
        run_id = _record_start(ctx, base)
        log.info("started %s (pid %d%s)", name, os.getpid(), ", once" if once else "")
        heartbeat.start()
        result = entry(ctx)
        code = 0 if result is None else int(result)
        if code == 0:
            outcome = STOPPED if ctx.stop_seen else OK
            reason = f"stopped by {stage.kill_file}" if ctx.stop_seen else "finished"
        else:
            outcome, reason = FAILED, ctx.info.get("failure", f"exit status {code}")
    except UserError as exc:
        code, outcome, reason = exc.exit_code, FAILED, str(exc)
        log.error("%s", exc)
    except KeyboardInterrupt:
        code, outcome, reason = 130, STOPPED, "interrupted"
        log.warning("interrupted")
    except Exception as exc:  # the stage failed: record it, never hide it behind exit 0
        code, outcome, reason = 1, FAILED, f"{type(exc).__name__}: {exc}"
        log.error("failed: %s\n%s", reason, traceback.format_exc())
    finally:
        try:
            _record_exit(ctx, run_id, code, outcome, reason)
        except Exception:
            log.exception("could not record the exit in the DB")
        ctx.close_db()
        exit_info = {"code": code, "outcome": outcome, "reason": reason, "at": time.time()}
        try:
            heartbeat.finish({"state": StageState.STOPPED.value, "exit": exit_info})
        except Exception:
            log.exception("could not write the final heartbeat")
        if stage.paused_file:
            _unlink(root.file(stage.paused_file))
        if kill_path.exists():
            _unlink(kill_path)
        log.info("exit %s: %s (%s)", code, outcome, reason)
        for signum, handler in old_handlers.items():
            signal.signal(signum, handler)
        for handler in list(log.handlers):
            log.removeHandler(handler)
            handler.close()
        lock.release()
    return code


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _fmt_time(ts) -> str:
    if not ts:
        return "?"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(ts)))


# ---------------------------------------------------------------------------
# Observing a stage: the state derivation used by status, the CLI and the console
# ---------------------------------------------------------------------------
def derive_state(hb: dict | None, alive: bool | None, kill_present: bool, pause_present: bool,
                 paused_present: bool, now: float, stale_after_s: float) -> StageState:
    """The one rule that turns a heartbeat file and the facts around it into a state.

    ``alive``: whether the heartbeat's process exists (None when it cannot be checked, as
    for a remote host: then a fresh heartbeat counts as alive)."""
    if hb is None:
        return StageState.STOPPED
    recorded = hb.get("state")
    finished = recorded == StageState.STOPPED.value
    age = now - float(hb.get("heartbeat") or 0)
    if alive is None:
        alive = not finished and age <= stale_after_s
        if not finished and not alive:
            return StageState.STALE
    if not alive:
        return StageState.STOPPED if finished else StageState.CRASHED
    if finished:  # exiting right now: the final heartbeat is written, the process not gone
        return StageState.STOPPING
    if kill_present:
        return StageState.STOPPING
    if recorded == StageState.PAUSED.value and paused_present:
        return StageState.PAUSED
    if pause_present:
        return StageState.PAUSING
    if age > stale_after_s:
        return StageState.STALE
    if recorded == StageState.BLOCKED.value:
        return StageState.BLOCKED
    return StageState.RUNNING


def stage_status(root, name: str, now: float | None = None) -> dict:
    """The local stage's state, pid and figures, from its heartbeat file and /proc."""
    stage = spec(name)
    now = time.time() if now is None else now
    hb = read_json_or_none(root.heartbeat_path(name))
    alive = bool(hb) and pid_alive(hb.get("pid"), hb.get("proc_start"))
    state = derive_state(
        hb, alive,
        kill_present=root.file(stage.kill_file).exists(),
        pause_present=bool(stage.pause_file) and root.file(stage.pause_file).exists(),
        paused_present=bool(stage.paused_file) and root.file(stage.paused_file).exists(),
        now=now, stale_after_s=float(root.config.get("stage.stale_after_s")))
    return status_row(name, "local", hb, state, alive, now, str(root.log_path(name)))


def status_row(name: str, host: str, hb: dict | None, state: StageState, alive: bool,
               now: float, log: str) -> dict:
    """A stage's row (status, console) from its heartbeat and derived state; ``now`` on the
    clock of the host that wrote the heartbeat."""
    hb = hb or {}
    return {
        "name": name,
        "host": host,
        "hostname": hb.get("host"),
        "state": state.value,
        "pid": hb.get("pid") if alive else None,
        "last_pid": hb.get("pid"),
        "started": hb.get("started"),
        "uptime_s": round(now - float(hb["started"]), 1) if alive and hb.get("started") else None,
        "heartbeat_age_s": round(now - float(hb["heartbeat"]), 1) if hb.get("heartbeat") else None,
        "rate": hb.get("rate") if alive else None,
        "current": hb.get("current"),
        "counters": hb.get("counters", {}),
        "info": hb.get("info", {}),
        "blocked_reason": hb.get("blocked_reason") if state == StageState.BLOCKED else None,
        "progress_at": hb.get("progress_at"),
        "last_exit": hb.get("exit") if hb.get("exit") else hb.get("last_exit"),
        "log": log,
    }


def is_live(status: dict) -> bool:
    return status["state"] in {s.value for s in LIVE_STATES}


# ---------------------------------------------------------------------------
# Controlling a stage: start (detached), stop (kill file; the ladder only on --force),
# pause and resume
# ---------------------------------------------------------------------------
def run_argv(root, name: str, extra: list[str] | None = None, python: str | None = None) -> list[str]:
    return [python or sys.executable, "-m", "imageselector", "--root", str(root.path), "run", name,
            *(extra or [])]


def start_detached(root, name: str, extra: list[str] | None = None, wait_s: float = 20.0) -> dict:
    """Start a stage detached from this process (new session, stdin /dev/null, output to its
    log) and wait until its heartbeat shows it running. Returns its status."""
    stage = spec(name)
    current = stage_status(root, name)
    if is_live(current):
        raise AlreadyRunning(f"stage {name} is already running (pid {current['pid']})")
    if root.file(stage.kill_file).exists():
        raise UserError(f"{stage.kill_file} exists at {root.path}: remove it to start {name}")
    from pipeline.core.detach import spawn_detached

    root.logs_dir.mkdir(parents=True, exist_ok=True)
    pid = spawn_detached(run_argv(root, name, extra), root.log_path(name), cwd=root.path)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        hb = read_json_or_none(root.heartbeat_path(name))
        if hb and hb.get("pid") == pid:
            return stage_status(root, name)
        if not pid_alive(pid):
            break
        time.sleep(0.05)
    hb = read_json_or_none(root.heartbeat_path(name))
    if hb and hb.get("pid") == pid:  # it ran and already finished (e.g. --once)
        return stage_status(root, name)
    tail = tail_lines(root.log_path(name), 5)
    if pid_alive(pid):
        raise UserError(f"stage {name} (pid {pid}) did not write its heartbeat within {wait_s:.0f} s; "
                        f"see {root.log_path(name)}")
    raise UserError(f"stage {name} exited at once; last log lines:\n" + "\n".join(tail))


def tail_lines(path: Path, n: int, max_bytes: int = 64 * 1024) -> list[str]:
    """The last ``n`` lines of a log (read from its last ``max_bytes``); [] when missing."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            return fh.read().decode("utf-8", "replace").splitlines()[-n:]
    except FileNotFoundError:
        return []


def request_stop(root, name: str) -> dict:
    """Write the kill file of a running stage. Returns its status (state 'stopping')."""
    stage = spec(name)
    status = stage_status(root, name)
    if not is_live(status):
        return status
    kill = root.file(stage.kill_file)
    atomic_write_json(kill, {"requested_by": os.getpid(), "at": time.time()})
    status = stage_status(root, name)
    if not is_live(status):
        # it exited between the check and the write: leave no stale kill file behind
        _unlink(kill)
    return status


def wait_stopped(root, name: str, pid: int, timeout_s: float, poll_s: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(poll_s)
    return not pid_alive(pid)


def signal_ladder(pid: int, proc_start: float | None, term_grace_s: float,
                  allow_kill: bool, say: Callable[[str], None]) -> bool:
    """SIGTERM (handled like the kill file), wait, then SIGKILL if allowed. Only the pid we
    were given, and only while it is still the same process (start time checked)."""
    if not pid_alive(pid, proc_start):
        return True
    say(f"sending SIGTERM to pid {pid}")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + term_grace_s
    while time.monotonic() < deadline:
        if not pid_alive(pid, proc_start):
            return True
        time.sleep(0.1)
    if not allow_kill:
        say(f"pid {pid} is still running after SIGTERM; not sending SIGKILL")
        return False
    if not pid_alive(pid, proc_start):
        return True
    say(f"sending SIGKILL to pid {pid}")
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if not pid_alive(pid, proc_start):
            return True
        time.sleep(0.05)
    return False


def pause_stages(root, names: list[str]) -> list[str]:
    """Ask stages to pause (create PAUSE_<tag>). Returns the pause files written."""
    written = []
    for name in names:
        stage = spec(name)
        if not stage.pause_file:
            raise UserError(f"stage {name} has no pause protocol")
        path = root.file(stage.pause_file)
        if not path.exists():
            atomic_write_json(path, {"requested_by": os.getpid(), "at": time.time()})
        written.append(stage.pause_file)
    return written


def resume_stages(root, names: list[str]) -> None:
    for name in names:
        stage = spec(name)
        if not stage.pause_file:
            raise UserError(f"stage {name} has no pause protocol")
        _unlink(root.file(stage.pause_file))
        if not is_live(stage_status(root, name)):
            _unlink(root.file(stage.paused_file))  # a dead stage's acknowledgement is stale


def pause_acknowledged(root, name: str) -> bool | None:
    """True when the stage acknowledged (PAUSED_<tag>), None when it is not running."""
    status = stage_status(root, name)
    if not is_live(status):
        return None
    return status["state"] == StageState.PAUSED.value


def all_writers_paused(root) -> bool:
    """The gate for a mirror of the DB: every live pausable stage has acknowledged."""
    return all(pause_acknowledged(root, name) in (True, None) for name in PAUSABLE)
