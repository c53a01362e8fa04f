"""The weekly run (`imageselector run pipeline`, kill file KILL_PIPELINE).

Phase 1 starts the crawl, download, orchestrator and tar stages together, the crawl being the
driver; when the driver ends, the others are told so (`on_driver_finished` in their stage
module, e.g. the orchestrator flushes its last partial batch) and each is asked to stop, by
its kill file, once it can make no more progress (its input queue is empty, or its stage's
`nothing_to_do` hook says so), or, as a fallback, it has been idle for `runner.idle_stop_s`.
Phase 2 runs its steps in order (primary update, backup, mirrors, verification). Every step's
exit is recorded with its timing, and the run ends with one summary and an alert.

The runner never signals a process: it writes kill files and waits, and alerts when a stage's
heartbeat stops moving while it waits. A watchdog alerts once per stall when no stage's
progress counters have moved for `runner.stall_s`.
"""
from __future__ import annotations

import json
import shlex
import time
from dataclasses import asdict, dataclass, field

from pipeline.core.alerts import OWN_ALERTS_KEY, Alerter, last_sent_by_kind, own_alerts
from pipeline.core.db import IMAGE_STATES, queue_depths, retry_on_busy, transaction
from pipeline.core.errors import UserError
from pipeline.core.fmt import date_time
from pipeline.core.fsutil import atomic_write_json, read_json_or_none
from pipeline.core.safety import FAILURE, safety_problems
from pipeline.core.stage import STAGES, StageState, spec
from pipeline.core.stage_observe import is_live, stage_status
from pipeline.core.stage_runtime import load_entry
from pipeline.core.stage_control import request_stop, start_detached, tail_lines


@dataclass
class Step:
    name: str
    stage: str
    args: list[str] = field(default_factory=list)
    phase: int = 1
    state: str = "pending"        # pending, running, stopping, done, skipped
    outcome: str | None = None    # ok, failed, stopped, crashed, skipped, refused
    exit_code: int | None = None
    reason: str = ""
    started_at: float | None = None
    ended_at: float | None = None
    pid: int | None = None
    stop_requested_at: float | None = None
    stop_alerted: bool = False
    drained_stop: bool = False    # asked to stop because it could make no more progress

    def line(self) -> str:
        took = ""
        if self.started_at and self.ended_at:
            took = f" in {_duration(self.ended_at - self.started_at)}"
        code = "" if self.exit_code is None else f" (exit {self.exit_code})"
        return f"{self.name}: {self.outcome or self.state}{code}{took}" + (f": {self.reason}" if self.reason else "")


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


def _stage_hook(stage: str, hook: str):
    try:
        module, _ = load_entry(spec(stage))
    except UserError:
        return None
    return getattr(module, hook, None)


class Runner:
    def __init__(self, ctx):
        self.ctx = ctx
        self.root = ctx.root
        self.log = ctx.log
        cfg = ctx.config
        self.phase1_argv = [shlex.split(s) for s in cfg.get("runner.phase1")]
        self.phase1 = [argv[0] for argv in self.phase1_argv if argv]
        self.driver = str(cfg.get("runner.driver"))
        self.phase2 = [shlex.split(s) for s in cfg.get("runner.phase2")]
        self.inputs = dict(cfg.get("runner.inputs"))
        self.idle_stop_s = float(cfg.get("runner.idle_stop_s"))
        self.check_s = float(cfg.get("runner.check_s"))
        self.stall_s = float(cfg.get("runner.stall_s"))
        self.stop_wait_alert_s = float(cfg.get("runner.stop_wait_alert_s"))
        for name in self.phase1 + [argv[0] for argv in self.phase2 if argv]:
            spec(name)  # an unknown stage in the config is refused before anything starts
        if self.driver not in self.phase1:
            raise UserError(f"{self.root.config_path}: runner.driver {self.driver!r} is not in runner.phase1")
        self.conn = ctx.db()
        self.alerter = Alerter(self.root, conn=self.conn, log=self.log)
        self.steps: list[Step] = []
        self.killed = False
        self.last_progress = time.time()
        self.stall_alerted = False
        self.started = time.time()
        self.phase = "starting"
        self.safety: list = []

    # ---- bookkeeping ------------------------------------------------------
    def publish(self) -> None:
        self.ctx.set_info(phase=self.phase, steps=[
            {"name": s.name, "state": s.state, "outcome": s.outcome, "exit_code": s.exit_code,
             "started_at": s.started_at, "ended_at": s.ended_at} for s in self.steps])

    def record_step(self, step: Step) -> None:
        @retry_on_busy
        def write() -> None:
            with transaction(self.conn):
                self.conn.execute(
                    "INSERT INTO runner_steps(run_started, step, stage, phase, started_at, ended_at, "
                    "outcome, exit_code, reason) VALUES (?,?,?,?,?,?,?,?,?)",
                    (self.started, step.name, step.stage, step.phase, step.started_at, step.ended_at,
                     step.outcome, step.exit_code, step.reason))

        write()
        self.ctx.progress(1, counter="steps", current=step.line())
        self.publish()

    def finish_step(self, step: Step, status: dict) -> None:
        last = status.get("last_exit") or {}
        step.state = "done"
        step.ended_at = time.time()
        kill = self.root.file(spec(step.stage).kill_file)
        if step.stop_requested_at is not None and kill.exists():
            # the stop this runner asked for is over: a kill file left behind would refuse
            # the stage's next start (e.g. the operator's `run sync --once` after KILL_PIPELINE)
            self.log.warning("removing %s left after %s ended", kill.name, step.stage)
            kill.unlink(missing_ok=True)
        if status["state"] == StageState.CRASHED.value:
            step.outcome, step.exit_code = "crashed", None
            step.reason = "died without recording an exit"
        else:
            step.exit_code = last.get("code")
            step.outcome = last.get("outcome") or "ok"
            step.reason = last.get("reason", "") if step.outcome != "ok" else ""
            if step.drained_stop and step.outcome == "stopped" and step.exit_code == 0:
                # it did all it could in this run and stopped when asked: that is success
                step.outcome, step.reason = "ok", ""
            resumable = _stage_hook(step.stage, "RESUMABLE_EXITS") or {}
            if step.exit_code in resumable:  # e.g. sync's quota stop: not a failure
                step.outcome, step.reason = "deferred", resumable[step.exit_code]
        self.log.info("step %s", step.line())
        self.record_step(step)
        told = own_alerts(status) if step.outcome == "failed" else []
        if told:
            # the stage alerted its own failure (e.g. backup_failed naming the target and the
            # fix): one fault, one message; the run's summary still lists the step
            self.log.info("step %s: the stage sent %s itself; no stage_failed", step.name, ", ".join(told))
        elif step.outcome in ("failed", "crashed"):
            tail = "\n".join(tail_lines(self.root.log_path(step.stage), 15))
            self.alerter.send("stage_crashed" if step.outcome == "crashed" else "stage_failed",
                              f"{step.line()}\n\nlast lines of {self.root.log_path(step.stage)}:\n{tail}")

    # ---- start-up -----------------------------------------------------------
    def clean_stale(self) -> None:
        """Files left by dead processes: kill files of stopped stages (they would refuse to
        start), pause acknowledgements nobody holds, heartbeats of crashed runs."""
        for name, stage in STAGES.items():
            if name == "pipeline" or stage.where != "db_host":
                continue
            status = stage_status(self.root, name)
            if is_live(status):
                continue
            kill = self.root.file(stage.kill_file)
            if kill.exists():
                self.log.warning("removing stale %s (%s is not running)", stage.kill_file, name)
                kill.unlink()
            if stage.paused_file and self.root.file(stage.paused_file).exists():
                self.root.file(stage.paused_file).unlink()
            if stage.pause_file and self.root.file(stage.pause_file).exists():
                self.log.warning("%s is present: %s will start paused", stage.pause_file, name)
            if status["state"] == StageState.CRASHED.value:
                path = self.root.heartbeat_path(name)
                hb = read_json_or_none(path) or {}
                hb["state"] = StageState.STOPPED.value
                hb["exit"] = {"code": None, "outcome": "crashed", "at": time.time(),
                              "reason": "found dead by the runner at start"}
                atomic_write_json(path, hb)
                self.log.warning("%s had crashed (pid %s); marked", name, hb.get("pid"))

    # ---- watchdog -----------------------------------------------------------
    def watchdog(self, statuses: list[dict]) -> None:
        now = time.time()
        live = [s for s in statuses if is_live(s)]
        newest = max([s.get("progress_at") or 0 for s in live] + [self.last_progress])
        if newest > self.last_progress:
            if self.stall_alerted:
                self.log.info("watchdog: progress again")
            self.last_progress = newest
            self.stall_alerted = False
        if live and not self.stall_alerted and now - self.last_progress > self.stall_s:
            self.stall_alerted = True
            names = ", ".join(f"{s['name']} ({s['state']})" for s in live)
            self.alerter.send("watchdog_stall", f"no progress for {_duration(now - self.last_progress)} "
                                                f"in: {names}")

    def nap(self) -> None:
        """Wait up to check_s, waking at once for KILL_PIPELINE, and looking more often
        while a stage is stopping (so a stop is seen within a fraction of a second)."""
        if not any(s.state in ("running", "stopping") for s in self.steps):
            return
        deadline = time.monotonic() + self.check_s
        while time.monotonic() < deadline:
            if not self.killed and self.ctx.stop_requested():
                return
            stopping = any(s.state == "stopping" for s in self.steps)
            time.sleep(min(0.2 if stopping else 0.5, max(0.0, deadline - time.monotonic())))
            if stopping and any(not is_live(stage_status(self.root, s.stage))
                                for s in self.steps if s.state == "stopping"):
                return

    # ---- phase 1 --------------------------------------------------------------
    def drained(self, step: Step, depths: dict) -> bool:
        """Whether ``step`` can make no more progress in this run: its input queue is empty
        (or, for a stage with a ``nothing_to_do`` hook, the stage says so, e.g. tar with less
        than one tar's worth embedded) and every stage upstream of it has finished."""
        wanted = self.inputs.get(step.stage)
        hook = _stage_hook(step.stage, "nothing_to_do")
        if wanted is None and hook is None:
            return True
        if wanted is not None:
            states = [wanted] if isinstance(wanted, str) else list(wanted)
            for state in states:
                if state not in IMAGE_STATES:
                    raise UserError(f"{self.root.config_path}: runner.inputs.{step.stage}: unknown state {state!r}")
            if hook is None and any(depths.get(state) for state in states):
                return False
        # upstream stages must have finished, or their output may still come
        index = self.phase1.index(step.stage)
        upstream = [s for s in self.steps if s.phase == 1 and self.phase1.index(s.stage) < index]
        if not all(s.state == "done" for s in upstream):
            return False
        return hook is None or bool(hook(self.root, self.conn, depths))

    def idle(self, status: dict) -> bool:
        last = status.get("progress_at") or status.get("started") or time.time()
        return time.time() - float(last) > self.idle_stop_s

    def ask_stop(self, step: Step, why: str) -> None:
        if step.state != "running":
            return
        self.log.info("asking %s to stop: %s", step.stage, why)
        request_stop(self.root, step.stage)
        step.state = "stopping"
        step.stop_requested_at = time.time()

    def run_phase1(self) -> None:
        self.phase = "phase 1"
        for argv in self.phase1_argv:
            name, args = argv[0], argv[1:]
            step = Step(name=name, stage=name, args=args, phase=1)
            self.steps.append(step)
            try:
                status = start_detached(self.root, name, args)
                step.state, step.started_at, step.pid = "running", time.time(), status.get("pid")
                self.log.info("started %s (pid %s)", name, step.pid)
            except UserError as exc:
                step.state, step.outcome, step.reason = "done", "refused", str(exc)
                step.started_at = step.ended_at = time.time()
                self.record_step(step)
                self.alerter.send("stage_failed", f"{name} did not start: {exc}")
        self.publish()
        driver_done_seen = False
        while any(s.state in ("running", "stopping") for s in self.steps if s.phase == 1):
            if not self.killed and self.ctx.stop_requested():
                self.killed = True
                self.phase = "stopping (KILL_PIPELINE)"
                self.log.warning("KILL_PIPELINE: stopping phase 1 and skipping phase 2")
                for step in self.steps:
                    self.ask_stop(step, "KILL_PIPELINE")
            statuses = [stage_status(self.root, s.stage) for s in self.steps if s.phase == 1]
            by_name = {s["name"]: s for s in statuses}
            for step in self.steps:
                if step.phase != 1 or step.state not in ("running", "stopping"):
                    continue
                status = by_name[step.stage]
                if not is_live(status):
                    self.finish_step(step, status)
                    continue
                if step.state == "stopping":
                    waited = time.time() - (step.stop_requested_at or time.time())
                    hb_age = status.get("heartbeat_age_s") or 0
                    if (not step.stop_alerted and waited > self.stop_wait_alert_s
                            and hb_age > min(self.stop_wait_alert_s, waited)):
                        step.stop_alerted = True
                        self.alerter.send("stop_stalled", f"{step.stage} has not honoured "
                                                          f"{spec(step.stage).kill_file} for {_duration(waited)} "
                                                          f"and its heartbeat is {_duration(hb_age)} old")
            driver = next((s for s in self.steps if s.stage == self.driver), None)
            if driver is not None and driver.state == "done" and not driver_done_seen:
                driver_done_seen = True
                self.phase = "phase 1 (draining)"
                self.log.info("driver %s finished: draining the others", self.driver)
                for step in self.steps:
                    hook = _stage_hook(step.stage, "on_driver_finished")
                    if step.state == "running" and hook is not None:
                        try:
                            hook(self.root)
                        except Exception as exc:
                            self.log.error("%s: on_driver_finished failed: %s", step.stage, exc)
            if driver_done_seen and not self.killed:
                depths = queue_depths(self.conn)
                for step in self.steps:
                    if step.phase == 1 and step.state == "running":
                        status = by_name[step.stage]
                        if self.drained(step, depths):
                            step.drained_stop = True
                            self.ask_stop(step, "it can make no more progress (drained)")
                        elif self.idle(status):
                            self.ask_stop(step, f"idle for {_duration(self.idle_stop_s)}")
            self.watchdog(statuses)
            self.publish()
            self.nap()

    # ---- between the phases ---------------------------------------------------
    def purge_dead(self) -> None:
        """Remove files left for dead images. The rows stay as tombstones (DECISIONS.md)."""
        removed = 0
        for lid, iid in self.conn.execute("SELECT listing_id, image_id FROM image_status WHERE state = 'dead'"):
            path = self.root.download_dir / f"{lid}_{iid}.jpg"
            try:
                path.unlink()
                removed += 1
            except FileNotFoundError:
                pass
        step = Step(name="purge-dead", stage="pipeline", phase=2, state="done", outcome="ok",
                    started_at=time.time(), ended_at=time.time(), reason="")
        step.reason = f"{removed} leftover file(s) of dead images removed" if removed else ""
        self.steps.append(step)
        self.record_step(step)

    def update_search_index(self) -> None:
        """Extend (or train, once the collection is large enough) the cross-shard search
        indexes with the week's imports; derived files, so a failure only costs speed."""
        step = Step(name="search-index", stage="pipeline", phase=2, started_at=time.time())
        self.steps.append(step)
        try:
            from pipeline.index.searchindex import update_for_root

            done = update_for_root(self.root)
            step.outcome = "ok"
            step.reason = f"{len(done)} model index(es) updated" if done else ""
        except Exception as exc:
            step.outcome, step.reason = "failed", f"{type(exc).__name__}: {exc}"
            self.alerter.send("stage_failed", f"search index update failed: {step.reason}")
        step.state, step.ended_at = "done", time.time()
        self.record_step(step)

    # ---- phase 2 --------------------------------------------------------------
    def run_phase2(self) -> None:
        self.phase = "phase 2"
        for argv in self.phase2:
            if not argv:
                continue
            stage, args = argv[0], argv[1:]
            if "--once" not in args:
                # A phase-2 step does the work there is now and ends: without --once, primary
                # would poll for new primaries forever and the run would never finish.
                args = [*args, "--once"]
            step = Step(name=" ".join(argv), stage=stage, args=args, phase=2)
            self.steps.append(step)
            if self.killed or self.ctx.stop_requested():
                self.killed = True
                step.state, step.outcome, step.reason = "skipped", "skipped", "KILL_PIPELINE"
                self.record_step(step)
                continue
            # prove the step's volumes are mounted and writable before it runs: a missing
            # one skips what needs it, the rest runs. When nothing is left the step is skipped
            # and volume_missing says why; when some is left the stage alerts each destination
            # it could not write itself (backup_failed, with the fix): one fault, one alert
            preflight = _stage_hook(stage, "preflight")
            problems, runnable = [], True
            if preflight is not None:
                try:
                    problems, runnable = preflight(self.root, args)
                except Exception as exc:
                    problems, runnable = [f"preflight failed: {exc}"], False
            if not runnable:
                if problems:
                    self.alerter.send("volume_missing", f"{step.name}: " + "; ".join(problems))
                step.state, step.outcome, step.reason = "skipped", "skipped", "; ".join(problems)
                step.started_at = step.ended_at = time.time()
                self.record_step(step)
                continue
            try:
                status = start_detached(self.root, stage, args)
            except UserError as exc:
                step.state, step.outcome, step.reason = "done", "refused", str(exc)
                step.started_at = step.ended_at = time.time()
                self.record_step(step)
                self.alerter.send("stage_failed", f"{step.name} did not start: {exc}")
                continue
            step.state, step.started_at, step.pid = "running", time.time(), status.get("pid")
            self.publish()
            while True:
                status = stage_status(self.root, stage)
                if not is_live(status):
                    self.finish_step(step, status)
                    break
                if not self.killed and self.ctx.stop_requested():
                    self.killed = True
                    self.ask_stop(step, "KILL_PIPELINE")
                self.watchdog([status])
                time.sleep(min(self.check_s, 1.0))

    # ---- the run ---------------------------------------------------------------
    def summary(self) -> str:
        failed = self.failed_steps() or self.unsafe()
        head = (f"pipeline run {time.strftime('%Y-%m-%d %H:%M', time.localtime(self.started))}: "
                f"{'KILLED' if self.killed else ('FAILED' if failed else 'ok')} "
                f"after {_duration(time.time() - self.started)}")
        depths = queue_depths(self.conn)
        queues = ", ".join(f"{k} {v:,}" for k, v in depths.items())
        safety = [f"{p.severity.upper()}: {p.text}" for p in self.safety]
        return "\n".join([head] + [f"  {s.line()}" for s in self.steps] + [f"queues: {queues}"] + safety
                         + [self.alerts_line()])

    def alerts_line(self) -> str:
        """When each alert kind was last delivered, so the operator sees the alert path works."""
        last = last_sent_by_kind(self.conn)
        sent = sorted(((at, kind) for kind, at in last.items() if at), reverse=True)
        never = [kind for kind, at in last.items() if not at]
        return ("alerts last sent: " + (", ".join(f"{kind} {date_time(at)}" for at, kind in sent) or "none")
                + (f"; never: {', '.join(never)}" if never else ""))

    def failed_steps(self) -> list[Step]:
        return [s for s in self.steps if s.outcome in ("failed", "crashed", "refused")]

    def unsafe(self) -> list:
        """The safe-default failures (production: no backup target, alerts off)."""
        return [p for p in self.safety if p.severity == FAILURE]

    def run(self) -> int:
        self.alerter.send("run_started", f"pipeline run started on {self.root.path}")
        self.clean_stale()
        self.run_phase1()
        if self.killed:
            for argv in self.phase2:
                if not argv:
                    continue
                step = Step(name=" ".join(argv), stage=argv[0], args=argv[1:], phase=2,
                            state="skipped", outcome="skipped", reason="KILL_PIPELINE")
                self.steps.append(step)
                self.record_step(step)
        else:
            self.purge_dead()
            self.update_search_index()
            self.run_phase2()
        self.phase = "finished"
        self.safety = safety_problems(self.root)
        for problem in self.safety:
            self.log.warning("%s", problem.text)
        text = self.summary()
        self.log.info("%s", text)
        self.ctx.set_info(summary=text)
        self.publish()
        from pipeline.core.db import put_state

        @retry_on_busy
        def save() -> None:
            with transaction(self.conn):
                put_state(self.conn, "last_pipeline_run", {
                    "started": self.started, "ended": time.time(), "killed": self.killed,
                    "steps": [asdict(s) for s in self.steps], "summary": text,
                    "safety": [p.as_json() for p in self.safety],
                    "alerts_last_sent": last_sent_by_kind(self.conn)})

        save()
        if self.killed:
            self.alerter.send("run_killed", text)
            return 0
        if self.failed_steps() or self.unsafe():
            self.alerter.send("run_failed", text)
            self.ctx.set_info(failure="; ".join([s.line() for s in self.failed_steps()]
                                                + [p.key for p in self.unsafe()]),
                              **{OWN_ALERTS_KEY: ["run_failed"]})  # `schedule run`: no job_failed too
            return 1
        self.alerter.send("run_finished", text)
        return 0


def last_runs(conn, limit: int = 5) -> list[dict]:
    """The last runs' steps, newest first, for the console."""
    rows = conn.execute("SELECT run_started, step, stage, phase, started_at, ended_at, outcome, exit_code, reason "
                        "FROM runner_steps WHERE run_started IN (SELECT DISTINCT run_started FROM runner_steps "
                        "ORDER BY run_started DESC LIMIT ?) ORDER BY run_started DESC, rowid", (limit,)).fetchall()
    runs: dict[float, list] = {}
    for r in rows:
        runs.setdefault(r[0], []).append({"step": r[1], "stage": r[2], "phase": r[3], "started_at": r[4],
                                          "ended_at": r[5], "outcome": r[6], "exit_code": r[7], "reason": r[8]})
    return [{"started": k, "steps": v} for k, v in runs.items()]


def summary_json(conn) -> dict | None:
    row = conn.execute("SELECT value FROM sync_state WHERE key = 'last_pipeline_run'").fetchone()
    return json.loads(row[0]) if row else None
