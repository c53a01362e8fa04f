"""End to end: the real `imageselector console --root R` in tmux; keys go in with send-keys
and the screen comes back with capture-pane. Start and stop a real stage, open the help,
quit, and the stage started by the console outlives it."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid

import pytest

from pipeline.core.procs import pid_alive
from pipeline.core.stage_observe import stage_status
from tests.console_support import make_root, run_selftest_once, seed_images, stop_if_running

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")]


class Tmux:
    """One tmux server and session of our own (private socket, unique name)."""

    def __init__(self, command: str, width: int = 150, height: int = 45):
        self.name = f"isconsole-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.base = ["tmux", "-L", self.name]
        subprocess.run(self.base + ["new-session", "-d", "-s", self.name, "-x", str(width),
                                    "-y", str(height), command], check=True, timeout=20,
                       env={**os.environ, "TERM": "xterm-256color"})

    def send(self, *keys: str) -> None:
        subprocess.run(self.base + ["send-keys", "-t", self.name, *keys], check=True, timeout=10)

    def screen(self) -> str:
        out = subprocess.run(self.base + ["capture-pane", "-p", "-t", self.name],
                             capture_output=True, text=True, timeout=10)
        return out.stdout

    def alive(self) -> bool:
        return subprocess.run(self.base + ["has-session", "-t", self.name],
                              capture_output=True, timeout=10).returncode == 0

    def wait_for(self, predicate, timeout: float = 40.0, what: str = "screen") -> str:
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = self.screen()
            if predicate(text):
                return text
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}; screen:\n{text}")

    def kill(self) -> None:
        subprocess.run(self.base + ["kill-session", "-t", self.name], capture_output=True,
                       timeout=10)


def selftest_line(text: str) -> str:
    return next((line for line in text.splitlines() if " selftest " in line), "")


def test_console_in_tmux(tmp_path):
    root = make_root(tmp_path / "root", console={"refresh_s": 0.5})
    seed_images(root, 30)
    run_selftest_once(root)
    command = f"{sys.executable} -m imageselector --root {root.path} console"
    tmux = Tmux(command)
    try:
        tmux.wait_for(lambda t: "Stages" in t and " selftest " in t, what="the stages panel")
        # the selftest row is the last local one: go there and start it
        tmux.send("C-End")
        tmux.wait_for(lambda t: "Log: local/selftest" in t, what="selftest selected")
        tmux.send("s")
        text = tmux.wait_for(lambda t: "running" in selftest_line(t), what="running")
        pid = stage_status(root, "selftest")["pid"]
        assert pid and str(pid) in selftest_line(text)
        tmux.send("?")
        tmux.wait_for(lambda t: "Keys" in t and "force_stop" in t, what="the help screen")
        tmux.send("Escape")
        tmux.wait_for(lambda t: "force_stop" not in t, what="help closed")
        tmux.send("x")
        tmux.wait_for(lambda t: "stopped" in selftest_line(t), what="stopped")
        assert not pid_alive(pid)
        # start it again, then quit: the stage keeps running
        tmux.send("s")
        tmux.wait_for(lambda t: "running" in selftest_line(t), what="running again")
        pid = stage_status(root, "selftest")["pid"]
        tmux.send("q")
        deadline = time.monotonic() + 20
        while tmux.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not tmux.alive(), "the console did not exit on q"
        assert pid_alive(pid)
    finally:
        tmux.kill()
        stop_if_running(root)


def box_line(text: str, marker: str = "▊") -> str:
    """The text line of the first text box on screen (its left edge is drawn with ▊)."""
    lines = [line for line in text.splitlines() if marker in line]
    return lines[1] if len(lines) > 1 else ""


def test_a_fast_burst_of_keys_lands_in_order_in_tmux(tmp_path):
    """Typing, ten backspaces, typing, sent as one send-keys call (the bytes reach the app in
    one burst): the search box and the palette end with the last word only."""
    root = make_root(tmp_path / "root", console={"refresh_s": 0.5})
    tmux = Tmux(f"{sys.executable} -m imageselector --root {root.path} console")
    burst = [*"hello", *["BSpace"] * 10, *"world"]
    try:
        tmux.wait_for(lambda t: "Stages" in t, what="the console")
        tmux.send("3")
        tmux.send("a")   # the box has the focus once this shows
        tmux.wait_for(lambda t: " a " in box_line(t), what="the search box")
        tmux.send("BSpace", *burst)
        text = tmux.wait_for(lambda t: "world" in box_line(t), what="the burst typed")
        assert box_line(text).split("▊", 1)[1].strip(" ▎│") == "world"
        tmux.send("Escape")
        tmux.send("C-p")
        tmux.wait_for(lambda t: "🔎" in t, what="the palette")
        tmux.send(*burst)
        text = tmux.wait_for(lambda t: "world" in next(
            (line for line in t.splitlines() if "🔎" in line), ""), what="the burst in the palette")
        palette_line = next(line for line in text.splitlines() if "🔎" in line)
        assert palette_line.split("🔎", 1)[1].strip() == "world"
    finally:
        tmux.kill()
