"""The stage runtime (ARCHITECTURE.md, "The stage contract"): run_stage and its StageContext:
the instance lock, heartbeats, kill and pause files between units of work, the recorded exit."""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import logging.handlers
import os
import signal
import socket
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from pipeline.core.errors import AlreadyRunning, UserError
from pipeline.core.fsutil import atomic_write_json, read_json_or_none, remove_write_leftovers
from pipeline.core.procs import process_start_time

from pipeline.core.stage import StageState, StageSpec, spec
from pipeline.core.stage_log import setup_stage_logging


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

    def sleep_until(self, seconds: float, ready, check_s: float = 2.0) -> bool:
        """Sleep like ``sleep``, but wake as soon as ``ready()`` says there is work: a stage
        wakes by work state (a cheap check such as a queue counter, every ``check_s``), the
        long timer being the fallback. False: stop now."""
        deadline = time.monotonic() + seconds
        next_check = time.monotonic() + check_s
        while True:
            if not self.checkpoint():
                return False
            now = time.monotonic()
            if now >= deadline:
                return True
            if now >= next_check:
                next_check = now + check_s
                if ready():
                    return True
            self._term.wait(max(0.0, min(self.poll_s, deadline - now, next_check - now)))

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
        self.cpu_sample: tuple[float, float] | None = None   # (wall, process CPU s) last written
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
            payload.update(self._usage(now))
            if extra:
                payload.update(extra)
            atomic_write_json(self.path, payload)
            return payload

    def _usage(self, now: float) -> dict:
        """CPU % of this process since the last heartbeat (100 = one core) and its resident
        memory: the console shows them for stages on hosts it cannot look into."""
        import psutil

        cpu = time.process_time()
        last, self.cpu_sample = self.cpu_sample, (now, cpu)
        pct = (round(max(0.0, cpu - last[1]) / (now - last[0]) * 100.0, 1)
               if last is not None and now > last[0] else None)
        try:
            rss = psutil.Process().memory_info().rss
        except (psutil.Error, OSError):
            rss = None
        return {"cpu_pct": pct, "rss_bytes": rss}

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
    hb_path = root.heartbeat_path(name)
    previous = read_json_or_none(hb_path)
    remove_write_leftovers(hb_path.parent, hb_path.name)   # a killed run's half-written heartbeat
    log = setup_stage_logging(root, stage)
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
            root.file(stage.paused_file).unlink(missing_ok=True)
        if kill_path.exists():
            kill_path.unlink(missing_ok=True)
        log.info("exit %s: %s (%s)", code, outcome, reason)
        for signum, handler in old_handlers.items():
            signal.signal(signum, handler)
        for handler in list(log.handlers):
            log.removeHandler(handler)
            handler.close()
        lock.release()
    return code


def _fmt_time(ts) -> str:
    if not ts:
        return "?"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(ts)))
