"""The doctor screen (H): the same lines as `imageselector doctor`, run in the background (the
console keeps answering and Escape closes the screen while a check is still running),
failures red and warnings yellow with the fix under each."""
from __future__ import annotations

import asyncio
import subprocess
import threading

import pytest

from console.adapters import Sources, doctor_areas, doctor_checks
from console.app import ConsoleApp
from console.screens.doctor_screen import DoctorScreen, check_text
from pipeline.doctor.check import noted, passed, problem, summary
from tests.console_support import PYTHON, make_root, wait_until

pytestmark = pytest.mark.timeout(120)

CHECKS = {
    "etsy": [problem("etsy", "key", "no Etsy API key", "set ETSY_API_KEY"),
             passed("etsy", "quota", "5000 a day left")],
    "workers": [problem("workers", "mbp", "host key changed", "ssh-keygen -R mbp",
                        severity="warning"),
                noted("workers", "sleight", "not checked: --host mbp")],
}


def screen_lines(app) -> list[str]:
    return str(app.screen.query_one("#doctor-lines").content).splitlines()


def progress(app) -> str:
    return str(app.screen.query_one("#doctor-progress").content)


def test_doctor_runs_in_the_background_and_escape_closes_it(tmp_path):
    root = make_root(tmp_path / "root")
    release = threading.Event()
    asked: list[list[str]] = []

    def checks(root_, areas):
        asked.append(list(areas))
        if areas == ["workers"]:
            release.wait(60)        # an SSH host that takes its time
        return CHECKS[areas[0]]

    app = ConsoleApp(root, sources=Sources(doctor_areas=lambda r: list(CHECKS),
                                           doctor_checks=checks))

    async def scenario() -> None:
        async with app.run_test(size=(140, 45)) as pilot:
            await pilot.press("H")
            await wait_until(pilot, lambda: isinstance(app.screen, DoctorScreen))
            await wait_until(pilot, lambda: "checking 2 of 2: workers" in progress(app),
                             what="the progress names the area being checked")
            # the first area's lines are shown while the second one still runs
            assert screen_lines(app)[0] == CHECKS["etsy"][0].line().splitlines()[0]
            await pilot.press("v")     # the screen answers keys meanwhile
            assert any("ok   etsy: quota" in line for line in screen_lines(app))
            await pilot.press("escape")
            await wait_until(pilot, lambda: not isinstance(app.screen, DoctorScreen),
                             what="Escape closes it while a check runs")
            release.set()
            await pilot.pause(0.2)     # its late answer is dropped, nothing breaks
            assert not isinstance(app.screen, DoctorScreen)

    try:
        asyncio.run(scenario())
    finally:
        release.set()
    assert asked == [["etsy"], ["workers"]]


def test_doctor_lines_are_the_cli_lines_coloured_by_severity(tmp_path):
    root = make_root(tmp_path / "root")
    app = ConsoleApp(root, sources=Sources(doctor_areas=lambda r: list(CHECKS),
                                           doctor_checks=lambda r, areas: CHECKS[areas[0]]))

    async def scenario() -> list[str]:
        async with app.run_test(size=(140, 45)) as pilot:
            await pilot.press("H")
            await wait_until(pilot, lambda: isinstance(app.screen, DoctorScreen)
                             and app.screen.done, what="the doctor done")
            return screen_lines(app)

    lines = asyncio.run(scenario())
    problems = [c for area in CHECKS.values() for c in area if c.severity != "ok"]
    expected = [line for c in problems for line in c.line().splitlines()]
    assert lines[:len(expected)] == expected            # the fix under each problem
    assert lines[-1] == summary([c for area in CHECKS.values() for c in area], verbose=True)
    assert lines[-1].startswith("4 checks: 2 ok, 1 would stop or spoil the run, 1 warnings")
    failure, warning = CHECKS["etsy"][0], CHECKS["workers"][0]
    assert "red" in str(check_text(failure).style)
    assert "yellow" in str(check_text(warning).style)


def test_doctor_screen_shows_what_the_cli_prints(tmp_path):
    """The real checks on a real root: the screen's lines are `imageselector doctor`'s."""
    root = make_root(tmp_path / "root")
    cli = subprocess.Popen([PYTHON, "-m", "imageselector", "--root", str(root.path), "doctor"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           stdin=subprocess.DEVNULL)
    app = ConsoleApp(root, sources=Sources(doctor_areas=doctor_areas, doctor_checks=doctor_checks))

    async def scenario() -> list[str]:
        async with app.run_test(size=(160, 48)) as pilot:
            await pilot.press("H")
            await wait_until(pilot, lambda: isinstance(app.screen, DoctorScreen)
                             and app.screen.done, timeout=90, what="the doctor done")
            return screen_lines(app)

    try:
        lines = asyncio.run(scenario())
        out, err = cli.communicate(timeout=90)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    assert cli.returncode == 1, err            # a bare root: the run would stop
    printed = out.splitlines()
    assert lines[:-1] == printed[:-1]          # every problem line and fix, in the same order
    assert any(line.startswith("FAIL ") for line in lines)
    # the same verdict (the CLI adds its --verbose hint; the screen has the v key)
    assert printed[-1].startswith(lines[-1])
