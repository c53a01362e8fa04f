"""Pause, resume and restart of ONE stage (the highlighted row), as k9s and lazydocker users
expect; pause all and resume all stay on the Run tab (stage_actions.py)."""
from __future__ import annotations

from console import actions
from console.widgets.stages_panel import row_key


class StageLifecycle:
    """Mixed into ConsoleApp: action_pause_stage, action_resume_stage, action_restart_stage."""

    def _pausable(self, row: dict, verb: str) -> str | None:
        """The stage's pause file, or None after saying why it cannot be paused."""
        from pipeline.core.stage import spec

        if row.get("host", "local") != "local":
            self.refuse(f"{verb}: {row_key(row)} runs on a worker host, which has no pause "
                        f"protocol (stop it with x)")
            return None
        pause_file = spec(row["name"]).pause_file
        if not pause_file:
            self.refuse(f"{verb}: {row['name']} has no pause protocol (stop it with x)")
        return pause_file

    def action_pause_stage(self) -> None:
        row = self._selected_stage()
        if row is None or not self._pausable(row, "pause"):
            return
        state = row.get("state")
        if state in ("pausing", "paused"):
            self.refuse(f"{row_key(row)} is already {state} (u resumes it)")
            return
        if not actions.is_live(row):
            self.refuse(f"{row_key(row)} is not running ({state})")
            return
        name = row["name"]
        self.log_command(f"pause {name}")
        self.background(f"pause {name}", lambda: actions.pause_local(self.root, name),
                        done=lambda kind, data: self.kick("stages", "run"))

    def action_resume_stage(self) -> None:
        row = self._selected_stage()
        pause_file = row and self._pausable(row, "resume")
        if not pause_file:
            return
        if row.get("state") not in ("pausing", "paused") and not self.root.file(pause_file).exists():
            self.refuse(f"{row_key(row)} is not paused ({row.get('state')})")
            return
        name = row["name"]
        self.log_command(f"resume {name}")
        self.background(f"resume {name}", lambda: actions.resume_local(self.root, name),
                        done=lambda kind, data: self.kick("stages", "run"))

    def action_restart_stage(self) -> None:
        row = self._selected_stage()
        if row is None:
            return
        if not actions.is_live(row):
            self.refuse(f"{row_key(row)} is not running ({row.get('state')}): s starts it")
            return
        key, name, host = row_key(row), row["name"], row.get("host", "local")
        wait_s = float(self.root.config.get("stage.stop_wait_s"))
        if host == "local":
            from pipeline.core.stage_control import request_stop
            from pipeline.core.stage_observe import stage_status

            def stop():
                return request_stop(self.root, name)

            def stopped() -> bool:
                return not actions.is_live(stage_status(self.root, name))

            def start() -> str:
                return actions.start_local(self.root, name)
        else:
            host_info = self._host(host)
            timeout_s = float(self.settings.source_timeout_s)

            def stop():
                return self.sources.stop_remote(self.root, host_info, name)

            def stopped() -> bool:
                rows = self.sources.host_stages(self.root, host_info, timeout_s)
                return not any(r["name"] == name and actions.is_live(r) for r in rows)

            def start() -> str:
                return self.sources.start_remote(self.root, host_info, name)

        self.log_command(f"restart {key}: stop, wait until it has exited, start")
        self.stopping.add(key)
        self._render_stages()

        def done(kind, data) -> None:
            self.stopping.discard(key)
            self.kick("stages")

        self.background(f"restart {key}", lambda: actions.restart(
            key, stop, stopped, start, wait_s, max(0.1, float(self.root.config.get("stage.poll_s"))),
            say=self.log_command), done=done)
