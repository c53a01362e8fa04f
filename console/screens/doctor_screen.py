"""H: the doctor's checks (`imageselector doctor`), the same lines, run in the background.

The checks can take seconds (SSH to each worker, a live Etsy call), so they run in a daemon
thread one area at a time; the screen shows which area is being checked and each area's lines
as they come, and Escape closes it at any time (a check still running is left to finish in
its thread and its answer dropped). Failures are red, warnings yellow, with the fix under each.
"""
from __future__ import annotations

import threading
import time

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Static

# Check.severity -> how its lines look (console.tcss has no say inside a Static's text)
SEVERITY_STYLE = {"failure": "bold red", "warning": "yellow", "note": "dim", "ok": "green"}


class AreasListed(Message):
    def __init__(self, run: int, areas: list[str]):
        super().__init__()
        self.run = run
        self.areas = areas


class AreaStarted(Message):
    def __init__(self, run: int, area: str):
        super().__init__()
        self.run = run
        self.area = area


class AreaChecked(Message):
    """One area's checks are in (checks: list of pipeline.doctor.check.Check)."""

    def __init__(self, run: int, area: str | None, checks: list | None, error: str | None):
        super().__init__()
        self.run = run
        self.area = area
        self.checks = checks
        self.error = error


class DoctorDone(Message):
    def __init__(self, run: int):
        super().__init__()
        self.run = run


def check_text(check) -> Text:
    """A check's CLI line (Check.line(): the mark, area, name, text and the fix under it),
    coloured by its severity."""
    return Text(check.line(), style=SEVERITY_STYLE.get(check.severity, ""))


class DoctorScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q", "close", "Close", show=True),
                Binding("r", "rerun", "Run again", show=True),
                Binding("v", "verbose", "Show ok lines", show=True)]

    def __init__(self, root, sources, clock=time.monotonic):
        super().__init__()
        self.root = root
        self.sources = sources
        self.clock = clock
        self.run = 0                  # bumped by each run: a late answer of an old run is dropped
        self.checks: list = []
        self.errors: list[str] = []
        self.area: str | None = None
        self.areas: list[str] = []
        self.done = False
        self.verbose = False
        self.started = 0.0

    def compose(self) -> ComposeResult:
        with Vertical(id="doctor-box"):
            yield Static("Doctor: what the weekly run needs (imageselector doctor)",
                         id="doctor-title")
            yield Static("", id="doctor-progress")
            with VerticalScroll(id="doctor-body"):
                yield Static("", id="doctor-lines")
            yield Static("Escape: close   r: run again   v: show or hide the ok lines",
                         id="doctor-keys")

    def on_mount(self) -> None:
        self.set_interval(0.5, self._show_progress)
        self.action_rerun()

    # ------------------------------------------------------------------ running
    def action_rerun(self) -> None:
        if not self.done and self.run:
            self.notify("the doctor is still running", severity="warning")
            return
        self.run += 1
        self.checks, self.errors, self.done, self.area = [], [], False, None
        self.started = self.clock()
        run = self.run
        threading.Thread(target=self._work, args=(run,), name="doctor", daemon=True).start()
        self._show()

    def _work(self, run: int) -> None:
        """In the thread: each area in the CLI's order, posted as it finishes."""
        try:
            areas = list(self.sources.doctor_areas(self.root))
        except Exception as exc:
            self.post_message(AreaChecked(run, None, None, f"{type(exc).__name__}: {exc}"))
            self.post_message(DoctorDone(run))
            return
        self.post_message(AreasListed(run, areas))
        for area in areas:
            self.post_message(AreaStarted(run, area))
            try:
                checks = list(self.sources.doctor_checks(self.root, [area]))
                self.post_message(AreaChecked(run, area, checks, None))
            except Exception as exc:  # one area's failure is a line; the others still run
                self.post_message(AreaChecked(run, area, None, f"{type(exc).__name__}: {exc}"))
        self.post_message(DoctorDone(run))

    def on_areas_listed(self, message: AreasListed) -> None:
        if message.run == self.run:
            self.areas = message.areas
            self._show()

    def on_area_started(self, message: AreaStarted) -> None:
        if message.run == self.run:
            self.area = message.area
            self._show_progress()

    def on_area_checked(self, message: AreaChecked) -> None:
        if message.run != self.run:
            return
        if message.checks:
            self.checks.extend(message.checks)
        if message.error:
            self.errors.append(f"FAIL {message.area or 'doctor'}: could not run: {message.error}")
        self._show()

    def on_doctor_done(self, message: DoctorDone) -> None:
        if message.run == self.run:
            self.done, self.area = True, None
            self._show()

    # ------------------------------------------------------------------ showing
    def action_verbose(self) -> None:
        self.verbose = not self.verbose
        self._show()

    def action_close(self) -> None:
        self.run += 1   # whatever is still running is dropped
        self.dismiss(None)

    def _show_progress(self) -> None:
        if not self.is_attached:
            return
        elapsed = self.clock() - self.started
        if self.done:
            text = f"done in {elapsed:.0f} s"
        else:
            step = (f"{self.areas.index(self.area) + 1} of {len(self.areas)}: "
                    if self.area in self.areas else "")
            text = f"checking {step}{self.area or '...'}  ({elapsed:.0f} s; SSH and a live Etsy " \
                   f"call can take a while)"
        self.query_one("#doctor-progress", Static).update(text)

    def _show(self) -> None:
        if not self.is_attached:
            return
        from pipeline.doctor.check import summary

        out = Text()
        shown = [c for c in self.checks if self.verbose or c.severity != "ok"]
        for check in shown:
            out.append_text(check_text(check))
            out.append("\n")
        for error in self.errors:
            out.append(error + "\n", style="bold red")
        if self.done:
            # the CLI's last line (its --verbose hint is the v key here)
            out.append(summary(self.checks, verbose=True), style="bold")
        elif not shown:
            out.append("no problem found so far", style="dim")
        self.query_one("#doctor-lines", Static).update(out)
        self._show_progress()

