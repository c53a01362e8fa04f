"""Benchmark of the operations console (issue 11): CPU of the idle console at a 1 s refresh,
the time of one full refresh, and key-to-screen latency while refreshes run.

    .venv/bin/python bench/bench_console.py [--rows 10000000] [--procs 300] [--idle-s 60]
    .venv/bin/python bench/bench_console.py --sandbox DIR [--runs 7] [--idle-s 30] [--keys 20]

The second form (issue 18) takes `make run`'s root, a sandbox with its local Etsy API running:
launch to first draw (median of --runs fresh processes), idle CPU, key to screen.

It builds (once) a root whose DB has --rows image_status rows (executemany in big
transactions; the trigger-kept queue counters make the console's queue read O(1)), starts
--procs idle processes so the /proc scans of the lock view see a busy machine, and runs a
real selftest stage that holds the DB. The console runs for real in tmux (its own socket);
CPU comes from psutil cpu_times of its process, latency from send-keys to capture-pane.
Prints the figures; never run as a test.
"""
from __future__ import annotations

import argparse
import tempfile
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

STATE_MIX = ["tarred"] * 53 + ["discovered"] * 30 + ["downloaded"] * 5 + ["embedded"] * 5 + \
    ["failed"] * 1 + ["dead"] * 6


def build_root(path: Path, rows: int):
    from pipeline.core.db import open_db
    from pipeline.core.root import Root

    path.mkdir(parents=True, exist_ok=True)
    (path / "imageselector.toml").write_text("[console]\nthumbnails = \"none\"\n")
    root = Root(path).ensure()
    conn = open_db(root)
    have = sum(n for _, n in conn.execute("SELECT state, n FROM queue_counts"))
    if have >= rows:
        print(f"DB: {have:,} image_status rows already at {root.db_path}")
        conn.close()
        return root
    conn.execute("PRAGMA synchronous = OFF")  # building the fixture only
    t0 = time.perf_counter()
    batch = 250_000
    now = time.time()
    for start in range(have, rows, batch):
        stop = min(rows, start + batch)
        data = [(i // 8, i, STATE_MIX[i % 100], now) for i in range(start, stop)]
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO image_status(listing_id, image_id, state, updated_at) "
                         "VALUES (?, ?, ?, ?)", data)
        conn.execute("COMMIT")
        if (stop // batch) % 8 == 0:
            print(f"  {stop:,} rows, {time.perf_counter() - t0:.0f} s", flush=True)
    conn.close()
    print(f"DB: built {rows:,} rows in {time.perf_counter() - t0:.0f} s "
          f"({root.db_path.stat().st_size / 1e9:.2f} GB)")
    return root


def start_idle_processes(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen(["sleep", "3600"], stdin=subprocess.DEVNULL) for _ in range(n)]


def time_sources(root, reps: int = 20) -> dict[str, tuple[float, float]]:
    """Each source alone: (mean wall ms, mean CPU ms)."""
    from console import adapters
    from console.lock_view import LockView
    from pipeline.core.locks import LockTracker

    tracker = LockTracker(None)
    view = LockView(None, open_scan_s=3600)
    sources = {
        "stages": lambda: adapters.local_stages(root, time.time()),
        "db": lambda: adapters.read_db(root, time.time()),
        "backups": lambda: adapters.read_backups(root, time.time()),
        "locks": lambda: adapters.lock_holders(root, view, time.time()),
        "locks+fd scan": lambda: [h.as_json() for h in tracker.holders(root.db_path)],
        "hosts": lambda: adapters.worker_hosts(root),
        "run": lambda: adapters.runner_view(root, time.time()),
        "log": lambda: adapters.local_log_tail(root.log_path("selftest"), 500),
    }
    out = {}
    for name, fn in sources.items():
        fn()
        walls, cpus = [], []
        for _ in range(reps):
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            walls.append(time.perf_counter() - w0)
            cpus.append(time.process_time() - c0)
        out[name] = (1000 * statistics.mean(walls), 1000 * statistics.mean(cpus))
    return out


async def full_refresh_in_app(root, reps: int = 10) -> list[float]:
    """Kick every source at once in a headless app; time until the last answer is applied."""
    from console.app import ConsoleApp

    arrivals: dict[str, float] = {}

    class Timed(ConsoleApp):
        def on_poll_result(self, result):
            super().on_poll_result(result)
            arrivals[result.source] = time.perf_counter()

    app = Timed(root, image_class=None)
    app.refresh_s = 3600  # only the kicks below poll
    times = []
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause(2.0)
        for _ in range(reps):
            arrivals.clear()
            t0 = time.perf_counter()
            app.kick()
            while len(arrivals) < len(app.pollers) and time.perf_counter() - t0 < 30:
                await asyncio.sleep(0.001)
            times.append(max(arrivals.values()) - t0)
            await pilot.pause(0.2)
    return times


class Tmux:
    def __init__(self, command: str):
        self.name = f"isbench-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.base = ["tmux", "-L", self.name]
        subprocess.run(self.base + ["new-session", "-d", "-s", self.name, "-x", "160", "-y", "48",
                                    command], check=True, env={**os.environ, "TERM": "xterm-256color"})

    def send(self, *keys):
        subprocess.run(self.base + ["send-keys", "-t", self.name, *keys], check=True)

    def screen(self) -> str:
        return subprocess.run(self.base + ["capture-pane", "-p", "-t", self.name],
                              capture_output=True, text=True).stdout

    def pane_pid(self) -> int:
        out = subprocess.run(self.base + ["list-panes", "-t", self.name, "-F", "#{pane_pid}"],
                             capture_output=True, text=True).stdout
        return int(out.split()[0])

    def kill(self):
        subprocess.run(self.base + ["kill-session", "-t", self.name], capture_output=True)


def console_process(tmux: Tmux):
    import psutil

    pane = psutil.Process(tmux.pane_pid())
    for proc in [pane] + pane.children(recursive=True):
        if "console" in " ".join(proc.cmdline()):
            return proc
    return pane


def wait_screen(tmux: Tmux, predicate, timeout: float = 30.0) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if predicate(tmux.screen()):
            return time.perf_counter() - t0
        time.sleep(0.005)  # capture-pane is a process: do not starve the console of CPU
    raise RuntimeError("screen never showed what was expected")


async def key_latency_in_app(root, refresh_s: float = 0.1, presses: int = 30) -> list[float]:
    """Inside the app (no terminal): a key event posted while sources poll every refresh_s,
    until the help screen's table has been drawn."""
    from textual import events

    from console.app import ConsoleApp
    from console.screens.help_screen import HelpScreen

    from textual.widgets import Static

    painted: list[float] = []
    render_lines = Static.render_lines

    def spy(self, crop):  # when the help table is first drawn
        lines = render_lines(self, crop)
        if self.id == "help-table":
            painted.append(time.perf_counter())
        return lines

    Static.render_lines = spy
    app = ConsoleApp(root, image_class=None)
    app.refresh_s = refresh_s
    out = []
    try:
        async with app.run_test(size=(160, 48)) as pilot:
            await pilot.pause(1.0)
            for i in range(presses):
                await asyncio.sleep(0.037 * (i % 5))  # land at different points of the cycle
                painted.clear()
                t0 = time.perf_counter()
                app.post_message(events.Key("question_mark", "?"))
                while not painted:
                    await asyncio.sleep(0.0005)
                out.append(painted[0] - t0)
                assert isinstance(app.screen, HelpScreen)
                app.pop_screen()
                await pilot.pause(0.05)
    finally:
        Static.render_lines = render_lines
    return out


def idle_cpu_and_latency(root, refresh_s: float, idle_s: float, keys: int,
                         ready: str = "selftest") -> dict:
    command = f"{sys.executable} -m imageselector --root {root.path} console --refresh {refresh_s}"
    tmux = Tmux(command)
    try:
        wait_screen(tmux, lambda t: "Stages" in t and ready in t, 60)
        proc = console_process(tmux)
        time.sleep(5)  # warm-up: first polls, layout
        c0 = proc.cpu_times()
        t0 = time.perf_counter()
        time.sleep(idle_s)
        c1 = proc.cpu_times()
        wall = time.perf_counter() - t0
        cpu = (c1.user - c0.user) + (c1.system - c0.system)
        latencies = []
        for _ in range(keys):
            tmux.send("?")
            latencies.append(wait_screen(tmux, lambda t: "force_stop" in t))
            tmux.send("Escape")
            wait_screen(tmux, lambda t: "force_stop" not in t)
            time.sleep(0.13)  # land the next key at another point of the refresh cycle
        moves = []  # a light key: the cursor to the next stage (the log panel's title follows)
        tmux.send("C-Home")
        wait_screen(tmux, lambda t: "Log: local/sync" in t)
        for i in range(keys):
            key, want = ("Down", "Log: local/download") if i % 2 == 0 else ("Up", "Log: local/sync")
            tmux.send(key)
            moves.append(wait_screen(tmux, lambda t: want in t))
            time.sleep(0.13)
        tmux.send("q")
        return {"cpu_percent": 100 * cpu / wall, "wall_s": wall, "latencies": latencies,
                "moves": moves}
    finally:
        tmux.kill()


def launch_to_first_draw(root, runs: int) -> tuple[list[float], list[float]]:
    """Seconds from starting the console process (in a tmux pane) to its first frame on
    screen (the tab bar and the Stages panel drawn), and to its first data (the stage rows
    filled), one fresh process per run."""
    first_frame, first_data = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        tmux = Tmux(f"{sys.executable} -m imageselector --root {root.path} console")
        try:
            wait_screen(tmux, lambda t: "Dashboard" in t and "Stages" in t, 60)
            first_frame.append(time.perf_counter() - t0)
            wait_screen(tmux, lambda t: " etsy-api " in t, 60)
            first_data.append(time.perf_counter() - t0)
            tmux.send("q")
            wait_screen(tmux, lambda t: "Stages" not in t, 20)
        finally:
            tmux.kill()
        time.sleep(1.0)
    return first_frame, first_data


def quantiles(values: list[float]) -> str:
    v = sorted(values)
    return (f"median {1000 * statistics.median(v):.0f} ms, p90 {1000 * v[int(0.9 * (len(v) - 1))]:.0f} ms, "
            f"max {1000 * v[-1]:.0f} ms (n={len(v)})")


def operator_figures(folder: Path, runs: int, idle_s: float, keys: int) -> int:
    """`make run`'s root (a sandbox with its local Etsy API running, nothing else): launch to
    first draw, idle CPU at the default 1 s refresh, key to screen."""
    import socket

    from pipeline.core.stage_control import request_stop, start_detached, wait_stopped
    from pipeline.core.stage_observe import is_live, stage_status
    from pipeline.sandbox import init_sandbox

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    root = init_sandbox(folder, port)
    if not is_live(stage_status(root, "etsy-api")):
        start_detached(root, "etsy-api")
    api_pid = stage_status(root, "etsy-api")["pid"]
    n_procs = len([p for p in os.listdir("/proc") if p.isdigit()])
    print(f"machine: {os.cpu_count()} cores, {n_procs} processes, load average "
          f"{os.getloadavg()[0]:.2f}; sandbox root {root.path} (local Etsy API running)")
    try:
        frame, data = launch_to_first_draw(root, runs)
        print(f"launch to first draw (process start to the first frame in tmux): {quantiles(frame)}")
        print(f"launch to first data (the stage rows filled):                    {quantiles(data)}")
        r = idle_cpu_and_latency(root, 1.0, idle_s, keys, ready="etsy-api")
        print(f"idle CPU at the default 1 s refresh: {r['cpu_percent']:.2f}% of one core over "
              f"{r['wall_s']:.0f} s")
        print(f"key '?' to the help screen (send-keys to capture-pane): {quantiles(r['latencies'])}")
        print(f"key Down/Up to the next stage row:                      {quantiles(r['moves'])}")
    finally:
        request_stop(root, "etsy-api")
        wait_stopped(root, "etsy-api", api_pid, 20)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sandbox", default=None, metavar="DIR",
                        help="instead: the operator figures on `make run`'s root (a sandbox at "
                             "DIR): launch to first draw, idle CPU, key to screen")
    parser.add_argument("--runs", type=int, default=7, help="launches for launch-to-first-draw")
    parser.add_argument("--root", default="/tmp/imageselector-bench-console")
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--procs", type=int, default=300)
    parser.add_argument("--idle-s", type=float, default=60.0)
    parser.add_argument("--keys", type=int, default=20)
    parser.add_argument("--ssh-workers", type=int, default=0,
                        help="worker hosts behind real sshd servers on loopback (hosts.toml), each "
                             "with a running worker heartbeat: the console reads them every refresh")
    parser.add_argument("--no-stage", action="store_true",
                        help="no stage running (the floor: nothing on screen changes)")
    args = parser.parse_args()
    if shutil.which("tmux") is None:
        print("tmux is needed")
        return 2
    if args.sandbox:
        return operator_figures(Path(args.sandbox), args.runs, args.idle_s, args.keys)
    root = build_root(Path(args.root), args.rows)
    servers = start_ssh_workers(root, args.ssh_workers)
    idle = start_idle_processes(args.procs)
    from pipeline.core.stage_control import request_stop, start_detached
    from pipeline.core.stage_observe import stage_status

    try:
        if not args.no_stage and stage_status(root, "selftest")["pid"] is None:
            start_detached(root, "selftest", ["--work-s", "1.0"])
        n_procs = len([p for p in os.listdir("/proc") if p.isdigit()])
        print(f"machine: {os.cpu_count()} cores, {n_procs} processes, "
              + ("no stage running" if args.no_stage else
                 "one selftest stage holding the DB and moving an image a second"))
        print("\none poll of each source (mean of 20, ms wall / ms CPU; 'locks' is the console's"
              " every-second read, 'locks+fd scan' the full scan it does every 5 s):")
        for name, (wall, cpu) in time_sources(root).items():
            print(f"  {name:<13} {wall:7.2f} / {cpu:6.2f}")
        times = asyncio.run(full_refresh_in_app(root))
        print(f"\nfull refresh in the app (all sources at once, until the last is shown): "
              f"median {1000 * statistics.median(times):.1f} ms, max {1000 * max(times):.1f} ms")
        lat = sorted(asyncio.run(key_latency_in_app(root)))
        print(f"\nkey to help screen inside the app (headless) while sources poll every 0.1 s: median "
              f"{1000 * statistics.median(lat):.1f} ms, max {1000 * lat[-1]:.1f} ms ({len(lat)} presses)")
        for refresh in (1.0, 0.25):
            r = idle_cpu_and_latency(root, refresh, args.idle_s if refresh == 1.0 else 15, args.keys)
            print(f"\nconsole in tmux at a {refresh:g} s refresh:")
            print(f"  idle CPU: {r['cpu_percent']:.2f}% of one core over {r['wall_s']:.0f} s")
            for label, values in (("key '?' to the help screen", r["latencies"]),
                                  ("key Down/Up to the next row", r["moves"])):
                lat = sorted(values)
                print(f"  {label} (send-keys to capture-pane): median "
                      f"{1000 * statistics.median(lat):.0f} ms, p90 "
                      f"{1000 * lat[int(0.9 * (len(lat) - 1))]:.0f} ms, max {1000 * lat[-1]:.0f} ms "
                      f"({len(lat)} presses)")
    finally:
        request_stop(root, "selftest")
        for p in idle:
            p.kill()
            p.wait()
        for server in servers:
            server.stop()
        if servers:
            root.hosts_path.unlink()
    return 0


def start_ssh_workers(root, n: int) -> list:
    """n real sshd servers on 127.0.0.1 (tests/sshd_support.py), one worker host each, whose
    root holds a fresh worker heartbeat (rewritten every second by a thread, as a live worker
    would), so the console polls n SSH hosts the way it polls the iMac's two workers."""
    if n <= 0:
        return []
    import json
    import threading
    import time as _time

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.sshd_support import SSHServer

    base = Path(tempfile.mkdtemp(prefix="bench-console-ssh-"))
    servers, roots, lines = [], [], []
    for i in range(n):
        server = SSHServer(base / f"sshd{i}").start()
        servers.append(server)
        wroot = base / f"wroot{i}"
        (wroot / "run").mkdir(parents=True)
        roots.append(wroot)
        lines.append(f'[workers.w{i}]\naddress = "127.0.0.1"\nport = {server.port}\n'
                     f'user = "{server.user}"\nkey_file = "{server.client_key}"\nroot = "{wroot}"\n'
                     f'python = "{sys.executable}"\n')
    known = base / "known_hosts"
    known.write_text("".join(s.host_public_line() for s in servers))
    root.hosts_path.write_text(f'known_hosts = "{known}"\n' + "\n".join(lines))

    def beat() -> None:
        started = _time.time()
        while servers:
            for i, wroot in enumerate(roots):
                hb = {"stage": "worker", "pid": 40000 + i, "host": f"w{i}", "state": "running",
                      "started": started, "heartbeat": _time.time(), "counters": {"done": 1},
                      "rate": 1.0, "progress_at": _time.time(), "exit": None}
                tmp = wroot / "run" / ".worker.json.tmp"
                tmp.write_text(json.dumps(hb))
                os.replace(tmp, wroot / "run" / "worker.json")
            _time.sleep(1.0)

    threading.Thread(target=beat, daemon=True).start()
    return servers


if __name__ == "__main__":
    sys.exit(main())
