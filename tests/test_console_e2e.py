"""End to end: the real `imageselector console --root R` in tmux; keys go in with send-keys
and the screen comes back with capture-pane. Start and stop a real stage, open the help,
quit, and the stage started by the console outlives it; the operator's whole walk from
`make run` (start, watch, pause, resume, stop, search, quit) at 160x48, then 80x24."""
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


# ---- the operator's walk (issue 18): `make run`, then the same root at 80x24 -------------
TITLES = ["oak dining chair", "glass coffee table", "velvet sofa", "brass floor lamp"]
FIRST_LISTING = 90_000_001   # far above the sandbox catalogue's listing ids


def seed_search_index(root) -> None:
    """Four listings in the index store (random unit vectors: any text query finds some), so
    a text search in the console has something to answer with."""
    import numpy as np

    from pipeline.index import IndexStore
    from tests.index_support import DIMS, FP, ORDER, add_images, add_listing_rows, open_db

    conn = open_db(root)
    rng = np.random.default_rng(18)
    ids = np.array([(FIRST_LISTING + i, 1) for i in range(len(TITLES))], dtype=np.int64)
    vecs = {}
    for m in ORDER:
        v = rng.standard_normal((len(TITLES), DIMS[m])).astype("float32")
        vecs[m] = v / np.linalg.norm(v, axis=1, keepdims=True)
    for i, title in enumerate(TITLES):
        add_listing_rows(conn, root, FIRST_LISTING + i, 1, title, 4200, "walkshop")
    add_images(conn, 1, ids)
    store = IndexStore.for_root(root)
    store.open(conn)
    store.import_batch(1, ids, vecs, FP, conn)
    conn.close()


def stage_line(text: str, name: str) -> str:
    return next((line for line in text.splitlines() if f" local    {name} " in line), "")


def discovered(text: str) -> int:
    import re

    found = re.search(r"│ discovered\s+([\d,]+) ", text)
    return int(found.group(1).replace(",", "")) if found else -1


def root_processes(root) -> dict[int, str]:
    """Live processes whose command line names this root (pid -> command line)."""
    import psutil

    out = {}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if str(root.path) in cmdline:
            out[proc.info["pid"]] = cmdline
    return out


def test_operator_walk_make_run_at_160x48_then_80x24(tmp_path):
    """`make run` (sandbox up: the local Etsy API, then the console) at 160x48: start sync
    from its row and watch the discovered count move, pause it, resume it, stop it, run a
    text search, quit with q: the console is gone and so is every process it started (the
    search helper, the stage). Then the same root at 80x24: every panel can be reached."""
    import psutil

    from pipeline.sandbox import init_sandbox
    from tests.alerts_support import free_port

    port = free_port()
    folder = tmp_path / "sandbox"
    root = init_sandbox(folder, port)
    seed_search_index(root)
    tmux = Tmux(f"{sys.executable} -m imageselector sandbox up {folder} --port {port}", 160, 48)
    try:
        tmux.wait_for(lambda t: "running" in stage_line(t, "etsy-api"), what="the local Etsy API")
        console = psutil.Process(int(subprocess.run(
            tmux.base + ["display", "-p", "-t", tmux.name, "#{pane_pid}"], capture_output=True,
            text=True, timeout=10).stdout))
        assert "console" in " ".join(console.cmdline())   # sandbox up became the console
        api_pid = stage_status(root, "etsy-api")["pid"]

        tmux.send("s")   # the first row (sync) is highlighted at start
        tmux.wait_for(lambda t: "running" in stage_line(t, "sync"), what="sync running")
        sync_pid = stage_status(root, "sync")["pid"]
        first = tmux.wait_for(lambda t: discovered(t) > 0, what="images discovered")
        tmux.wait_for(lambda t: discovered(t) > discovered(first), what="the count moving")
        tmux.send("p")
        tmux.wait_for(lambda t: "paused" in stage_line(t, "sync"), what="sync paused")
        tmux.send("u")
        tmux.wait_for(lambda t: "running" in stage_line(t, "sync"), what="sync resumed")
        tmux.send("x")
        tmux.wait_for(lambda t: "stopped" in stage_line(t, "sync"), what="sync stopped")
        assert not pid_alive(sync_pid)

        tmux.send("3")
        tmux.send("a")   # the box has the focus once this shows
        tmux.wait_for(lambda t: " a " in box_line(t), what="the search box")
        tmux.send("BSpace", *"oak chair", "Enter")
        answered = ("nothing found", "no results", *TITLES)
        text = tmux.wait_for(lambda t: any(a in t for a in answered), timeout=90,
                             what="the search's answer")
        assert "Traceback" not in text and "error" not in text.lower()
        started = console.children(recursive=True)   # e.g. the search helper
        tmux.send("Escape")   # leaves the box: 1 is then a key, not a letter
        # an ESC and a key within the terminal's escape timeout read as Alt+key: a pause,
        # as between an operator's two key presses
        time.sleep(0.5)
        tmux.send("1")
        tmux.wait_for(lambda t: "Stages" in t, what="back on the Dashboard")
        tmux.send("q")
        gone, alive = psutil.wait_procs([console, *started], timeout=20)
        assert not alive, f"still running after q: {[p.pid for p in alive]}"
        left = root_processes(root)
        assert list(left) == [api_pid], f"left behind: {left}"   # only what `make run` started

        # the same root at 80x24: Tab brings every Dashboard panel into view
        tmux.kill()
        tmux = Tmux(f"{sys.executable} -m imageselector --root {folder} console", 80, 24)
        tmux.wait_for(lambda t: "Stages" in t, what="the console at 80x24")
        seen, screens = set(), []
        titles = ("Stages", "Queues", "Backups", "Log:", "DB locks", "Console commands")
        for _ in range(10):
            screens.append(tmux.screen())
            seen |= {title for title in titles if f"─ {title}" in screens[-1]}
            if len(seen) == len(titles):
                break
            tmux.send("Tab")
            time.sleep(0.3)   # let it draw the focus move (the loop looks again either way)
        assert seen == set(titles), "\n".join(screens)
        tmux.send("2")
        tmux.wait_for(lambda t: "Weekly run" in t, what="the Run tab")
        tmux.send("3")
        tmux.wait_for(lambda t: "─ Search ─" in t, what="the Search tab")
        tmux.send("Escape")   # out of the query box (it has the focus on this tab)
        time.sleep(0.5)
        tmux.send("1")
        tmux.wait_for(lambda t: any(f"─ {title}" in t for title in titles), what="the Dashboard")
        tmux.send("q")
        deadline = time.monotonic() + 20
        while tmux.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not tmux.alive(), "the console did not exit on q"
    finally:
        tmux.kill()
        stop_if_running(root, "sync")
        stop_if_running(root, "etsy-api")
