"""Putting each source's answer on its panel: the stages table (local and worker rows), queues,
backups, locks, the run, the log and the status bar; notices when a stage exits or crashes;
and showing a recorded `status --json` snapshot."""
from __future__ import annotations

from typing import Any

from console import actions
from console.polling import MESSAGE, OK, UNAVAILABLE
from console.widgets.stages_panel import clock_messages, row_key, shown_rate
from console.widgets.scale_out import ray_line, ray_row, reembed_text
from pipeline.status.queue_reasons import IMAGE_STAGES


def running_rates(rows: list[dict]) -> dict[str, float | None]:
    """Each stage that moves images and runs now (on any host), in pipeline order, with its
    rate summed over its hosts; None while it runs without one. A paused or stopped stage's
    last average is not a rate (shown_rate), so it is not here."""
    running: dict[str, float | None] = {}
    for name in IMAGE_STAGES:
        rows_running = [r for r in rows if r.get("name") == name and r.get("state") == "running"]
        if rows_running:
            rates = [float(shown_rate(r)) for r in rows_running if shown_rate(r)]
            running[name] = sum(rates) if rates else None
    return running


class PanelFeed:
    """Mixed into ConsoleApp: the rows it holds (local_rows, host_rows, hosts, stopping) and
    the panels they are shown on."""

    def _apply(self, source: str, kind: str, data: Any, text: str | None) -> None:
        if source == "stages":
            if kind == OK:
                self.local_rows = data
                self._note_exits()
            self._render_stages(None if kind == OK else f"local stages: {text}")
            if kind == OK:
                runner_row = next((r for r in data if r["name"] == "pipeline"), None)
                self.panels.runner.show_runner(runner_row)
        elif source == "db":
            if kind == OK:
                self.history.add(self.clock(), data["queues"])
                self._render_queues()
            else:
                self.panels.queues.show_message(text)
        elif source == "backups":
            if kind == OK:
                self.panels.backups.show(data["backups"], data.get("schedule"),
                                         data["backup_jobs"], data.get("notes"))
            else:
                self.panels.backups.show_message(text)
        elif source == "locks":
            if kind == OK:
                self.panels.locks.show(self.sources.name_lock_holders(data, self.local_rows),
                                       self.clock())
            else:
                self.panels.locks.show_message(f"lock holders: {text}")
        elif source == "hosts":
            self._apply_hosts(kind, data, text)
        elif source.startswith("host:"):
            host = source.split(":", 1)[1]
            if kind == OK:
                self.host_rows[host] = [{**r, "host": host} for r in data]
            elif kind == UNAVAILABLE:
                self.host_rows[host] = [self._host_row(host, "n/a", text)]
            else:
                self.host_rows[host] = [self._host_row(host, "unreachable", text)]
            self._render_stages()
        elif source == "ray":
            # a failure is the orchestrator's or hosts.toml's, said by those rows: keep the last
            if kind == OK:
                self.ray_workers = data
                self._render_stages()
        elif source == "serving":
            if kind == OK:
                self.local_serving = data
                self._render_stages()
        elif source == "reembed":
            self.panels.queues.show_reembed(reembed_text(data, self.clock()) if kind == OK
                                            else f"reembed: {text}")
        elif source == "run":
            if kind == OK:
                states = {r["name"]: r["state"] for r in self.local_rows}
                self.panels.runner.show_view(data, states)
            else:
                self.panels.runner.show_message(text)
        elif source == "log":
            logs = self.panels.logs
            if kind == OK:
                logs.show_lines(data)
            else:
                logs.show_message(text)

    def all_rows(self) -> list[dict]:
        rows = list(self.local_rows) + self.local_serving
        for host in self.hosts:
            rows += self.host_rows.get(host["name"], [])
        return rows + [ray_row(w) for w in self.ray_workers]

    def _render_stages(self, message: str | None = None) -> None:
        rows = self.all_rows()
        messages = [m for m in (message, self.hosts_message) if m] + clock_messages(rows)
        self.panels.stages.show(rows, self.stopping, messages,
                                [ray_line(w) for w in self.ray_workers])
        if self.selected_key is None:
            self._selection_changed(self.panels.stages.selected_key())

    def _render_queues(self) -> None:
        rows = self.all_rows()
        depths = self.history.samples[-1][1] if self.history.samples else {}
        reasons, message = {}, None
        if depths:
            try:
                reasons = self.sources.queue_reasons(self.root, depths, rows, self.clock())
            except Exception as exc:  # the reasons are extra: never lose the queues for them
                message = f"queue reasons: {type(exc).__name__}: {exc}"
        self.panels.queues.show(self.history, running_rates(rows), message, reasons=reasons)

    def _note_exits(self) -> None:
        """A stage the console asked to stop has exited: say so once. A stage that was
        running and is now crashed or stale: a notification."""
        rows = {row_key(r): r for r in self.all_rows()}
        for key, row in rows.items():
            before = self._last_states.get(key)
            state = row.get("state")
            if before in actions.LIVE and state in ("crashed", "stale") and before != state:
                self.notify(f"{key} is {state}", title="stage", severity="error")
            self._last_states[key] = state
        for key in list(self.stopping):
            row = rows.get(key)
            if row is None or actions.is_live(row):
                continue
            self.stopping.discard(key)
            last = row.get("last_exit") or {}
            if row.get("state") == "stopped" and last:
                self.log_command(f"{key} exited: {last.get('code', '?')} "
                                 f"{last.get('outcome', '')} ({last.get('reason', '')})", "ok")
            else:
                self.log_command(f"{key} is gone: {row.get('state')}", "ok")
            self.notify(f"{key} stopped")

    def _update_status_bar(self) -> None:
        self.panels.status_bar.show(self.root_text, self.refresh_s, self.refresh_paused,
                                       self.last_refresh_at, self.last_took_s,
                                       sorted(self.problems), self.unsafe)

    def feed_status(self, snapshot: dict) -> None:
        """Show a recorded `status --json` snapshot (snapshot tests, replays)."""
        at = snapshot.get("at") or self.clock()
        self._apply("stages", OK, snapshot.get("stages", []), None)
        queues = snapshot.get("queues") or {}
        if all(v is None for v in queues.values()):
            self._apply("db", MESSAGE, None, "; ".join(snapshot.get("errors", [])) or "no DB")
        else:
            self.history.add(at, queues)
            self._render_queues()
            self.panels.backups.show(snapshot.get("backups", []),
                                     snapshot.get("schedule"), snapshot.get("backup_jobs", []))
        self._apply("locks", OK, snapshot.get("locks", []), None)
        self._apply("ray", OK, [w for w in snapshot.get("workers") or [] if w.get("kind") == "ray"],
                    None)
        self._apply("reembed", OK, snapshot.get("reembed") or [], None)
        self.unsafe = [p["key"] for p in snapshot.get("safety") or []]
        self.last_refresh_at = at
        self._update_status_bar()

    def row(self, key: str | None) -> dict | None:
        return next((r for r in self.all_rows() if row_key(r) == key), None)
