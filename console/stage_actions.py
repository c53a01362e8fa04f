"""The stage keys: start, stop, the force-stop signal ladder (with its lock-holder
confirmations), stop all, deploy to a worker, and the weekly run and pause/resume."""
from __future__ import annotations

from console import actions
from console.polling import OK
from console.screens.confirm_screen import ConfirmScreen
from console.screens.escalate_screen import EscalateScreen
from console.screens.typed_confirm_screen import TypedConfirmScreen
from console.widgets.stages_panel import row_key
from console.widgets.scale_out import RAY_REFUSAL, SERVE_REFUSAL
from pipeline.reembed.serve_rows import SERVE_KIND

DEPLOY_PHRASE = "YES:GIT"


class StageActions:
    """Mixed into ConsoleApp: the action_* methods of the stage and run keys."""

    # ------------------------------------------------------------------ stage actions
    def _selected(self) -> dict | None:
        """The highlighted row of the stages table, only while that table is on screen: a key
        never acts on a selection the operator cannot see."""
        if self.panels.tabs.active != "dashboard" or self.screen.maximized is not None:
            self.refuse("the stage keys act on the highlighted row of the Dashboard (1)")
            return None
        row = self.row(self.panels.stages.selected_key())
        if row is None:
            self.refuse("select a stage first")
        return row

    def _selected_stage(self) -> dict | None:
        """The highlighted row, if it is a stage a key can start, stop or deploy to (a Ray
        worker is not: it follows the orchestrator)."""
        row = self._selected()
        if row is not None and row.get("kind") == "ray":
            self.refuse(RAY_REFUSAL.format(name=row.get("host")))
            return None
        if row is not None and row.get("kind") == SERVE_KIND:
            self.refuse(SERVE_REFUSAL.format(key=row_key(row)))
            return None
        return row

    def action_start_stage(self) -> None:
        row = self._selected_stage()
        if row is None:
            return
        if actions.is_live(row):
            self.refuse(f"{row_key(row)} is already {row['state']}")
            return
        self._start(row)

    def _start(self, row: dict) -> None:
        name, host = row["name"], row.get("host", "local")
        self.log_command(f"start {name} on {host}")
        if host == "local":
            fn = lambda: actions.start_local(self.root, name)  # noqa: E731
        else:
            host_info = self._host(host)
            fn = lambda: self.sources.start_remote(self.root, host_info, name)  # noqa: E731
        self.background(f"start {name}", fn, done=lambda kind, data: self.kick("stages"))

    def action_stop_stage(self) -> None:
        row = self._selected_stage()
        if row is None:
            return
        if not actions.is_live(row):
            self.refuse(f"{row_key(row)} is not running ({row.get('state')})")
            return
        self._stop(row)

    def _stop_fn(self, row: dict):
        """What writes this row's kill file (here or over SSH), to run in an action thread."""
        name, host = row["name"], row.get("host", "local")
        if host == "local":
            return lambda: actions.stop_local(self.root, name)
        host_info = self._host(host)
        return lambda: self.sources.stop_remote(self.root, host_info, name)

    def _stop(self, row: dict) -> None:
        key = row_key(row)
        self.stopping.add(key)
        self._render_stages()
        fn = self._stop_fn(row)

        def done(kind, data):
            if kind != OK:
                self.stopping.discard(key)
            self.kick("stages")

        self.background(f"stop {key}", fn, done=done)

    def action_force_stop(self) -> None:
        row = self._selected_stage()
        if row is None:
            return
        if row.get("host", "local") != "local":
            self.refuse("signals reach local stages only; stop a worker with x")
            return
        if not actions.is_live(row) or not row.get("pid"):
            self.refuse(f"{row_key(row)} is not running")
            return
        name, pid = row["name"], int(row["pid"])
        self.background("lock holders", lambda: self.sources.lock_holders_now(self.root),
                        done=lambda kind, holders: self._confirm_escalation(
                            name, pid, holders if kind == OK else []), quiet=True)

    def _confirm_escalation(self, name: str, pid: int, holders: list[dict]) -> None:
        grace = float(self.root.config.get("stage.term_grace_s"))
        is_writer = any(h["pid"] == pid and h["mode"] == "writer" for h in holders)
        shown = ", ".join(f"{h['mode']} {h['pid']}" for h in holders) or "nobody"
        self.log_command(f"force stop {name} (pid {pid}): DB lock holders: {shown}")

        def first(answer: bool | None) -> None:
            if not answer:
                self.log_command(f"force stop {name}: cancelled")
                return
            if not is_writer:
                self._run_ladder(name, pid)
                return
            self.push_screen(ConfirmScreen(
                f"pid {pid} HOLDS THE DB WRITE LOCK",
                f"{name} (pid {pid}) is inside a write transaction. SIGTERM lets it roll back "
                f"and stop; SIGKILL in the middle loses that transaction's work (SQLite rolls it "
                f"back). Send the signals anyway?", warning=True), second)

        def second(answer: bool | None) -> None:
            if not answer:
                self.log_command(f"force stop {name}: cancelled at the writer confirmation")
                return
            self._run_ladder(name, pid)

        self.push_screen(EscalateScreen(name, pid, holders, grace), first)

    def _run_ladder(self, name: str, pid: int) -> None:
        self.stopping.add(f"local/{name}")

        def ladder() -> str:
            stopped = actions.escalate(self.root, name, pid,
                                       say=lambda text: self.log_command(f"{name}: {text}"))
            return f"force stop {name}: {'pid %d is gone' % pid if stopped else 'STILL RUNNING'}"

        self.background(f"force stop {name}", ladder, done=lambda kind, data: self.kick("stages"))

    def action_stop_all(self) -> None:
        """Kill files for every running stage, one after the other in the order the dialog
        lists (one action thread), leaving the sandbox's local Etsy API running."""
        # a Ray worker drains when the orchestrator stops (it has no kill file of its own); a
        # re-embed server stops with its re-embed
        live = [r for r in self.all_rows() if r.get("kind") not in ("ray", SERVE_KIND)]
        rows = actions.stop_all_order(live)
        kept = actions.stop_all_kept(live)
        if not rows:
            self.refuse("no stage is running" + (f" (only {', '.join(row_key(r) for r in kept)}, "
                                                 f"which stop all leaves running)" if kept else ""))
            return
        keys = [row_key(r) for r in rows]

        def answer(yes: bool | None) -> None:
            if not yes:
                self.log_command("stop all: not confirmed, nothing done")
                return
            self.log_command(f"stop all, in this order: {', '.join(keys)}")
            self.stopping.update(keys)
            self._render_stages()
            steps = [(key, self._stop_fn(row)) for key, row in zip(keys, rows)]

            def done(kind, failed):
                for key in (failed if kind == OK else keys):
                    self.stopping.discard(key)
                self.kick("stages")

            self.background("stop all", lambda: actions.run_in_order(steps, self.log_command),
                            done=done, quiet=True)

        self.push_screen(ConfirmScreen("Stop all stages?", actions.stop_all_text(rows, kept)),
                         answer)

    def action_deploy(self) -> None:
        row = self._selected_stage()
        if row is None:
            return
        host = row.get("host", "local")
        if host == "local":
            self.refuse("deploy is for worker hosts: select a worker's row")
            return
        host_info = self._host(host)

        def answer(yes: bool | None) -> None:
            if not yes:
                self.log_command(f"deploy to {host}: not confirmed, nothing done")
                return
            self.log_command(f"deploy to {host}: git pull (confirmed with {DEPLOY_PHRASE})")
            self.background(f"deploy to {host}", lambda: self.sources.deploy(self.root, host_info))

        self.push_screen(TypedConfirmScreen(
            f"Deploy to {host}",
            f"Runs git pull in the project folder on {host_info.get('describe', host)}.",
            DEPLOY_PHRASE), answer)

    # ------------------------------------------------------------------ run and pauses
    def action_start_run(self) -> None:
        self.log_command("start the weekly run (pipeline)")
        self.background("start run", lambda: actions.start_local(self.root, "pipeline"),
                        done=lambda kind, data: self.kick("stages", "run"))

    def action_stop_run(self) -> None:
        row = self.row("local/pipeline")
        if row is None or not actions.is_live(row):
            self.refuse("the weekly run is not running")
            return
        self._stop(row)

    def action_pause_all(self) -> None:
        self.log_command("pause all stages")
        self.background("pause all", lambda: actions.pause_all(self.root),
                        done=lambda kind, data: self.kick("stages", "run"))

    def action_resume_all(self) -> None:
        self.log_command("resume all stages")
        self.background("resume all", lambda: actions.resume_all(self.root),
                        done=lambda kind, data: self.kick("stages", "run"))
