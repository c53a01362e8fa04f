"""Helpers for the orchestrator tests: a DB root with downloaded images, a stub worker (the
real worker loop with a model-free embedder), and checks that every image is indexed once."""
from __future__ import annotations

import hashlib
import io
import json
import os
import random
import sys
import threading
import time
from pathlib import Path

import numpy as np

from pipeline.core import db as dbm
from pipeline.batches.batchfile import WorkerDirs
from pipeline.core.fsutil import atomic_write_json
from pipeline.models.registry import VECTOR_DIMS, VECTOR_ORDER
from pipeline.core.root import Root

STUB_FP = "stub-fingerprint-01"

ROOT_TOML = """\
[root]
profile = "sandbox"

[orchestrate]
batch_size = {batch_size}
lease_s = {lease_s}
poll_s = {poll_s}
tick_s = 0.05
worker_start_retry_s = {start_retry_s}
error_retry_s = 600.0
start_workers = {start_workers}
stop_workers = false
lost_after_polls = 3
{extra}
[stage]
heartbeat_s = 0.5
poll_s = 0.1
stale_after_s = 10.0

[remote]
connect_timeout = 3.0
banner_timeout = 3.0
auth_timeout = 3.0
channel_timeout = 3.0
command_timeout = 60.0
transfer_timeout = 60.0
io_timeout = 10.0
heartbeat_timeout = 2.0
keepalive_s = 0
reconnect_attempts = 3
backoff_initial_s = 0.1
backoff_max_s = 0.5
"""


def jpeg(seed: int, size: int = 40) -> bytes:
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    image = Image.new("RGB", (size, size), (235, 232, 228))
    draw = ImageDraw.Draw(image)
    x0, y0 = rng.randrange(0, size // 2), rng.randrange(0, size // 2)
    draw.rectangle([x0, y0, x0 + size // 3, y0 + size // 3],
                   fill=tuple(rng.randrange(20, 140) for _ in range(3)))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def db_root(path: Path, batch_size: int = 8, lease_s: float = 600.0, poll_s: float = 0.2,
            start_workers: bool = False, extra: str = "", start_retry_s: float = 2.0) -> Root:
    path.mkdir(parents=True, exist_ok=True)
    (path / "imageselector.toml").write_text(ROOT_TOML.format(
        batch_size=batch_size, lease_s=lease_s, poll_s=poll_s, start_retry_s=start_retry_s,
        start_workers="true" if start_workers else "false", extra=extra))
    root = Root(path).ensure()
    dbm.open_db(root).close()
    return root


def add_downloaded(root: Root, n: int, first_listing: int = 7000, size: int = 40,
                   per_listing: int = 2) -> list[tuple[int, int]]:
    """``n`` images in state downloaded with their files, listings with title and materials."""
    conn = dbm.open_db(root)
    keys = [(first_listing + i // per_listing, 900 + i) for i in range(n)]
    now = time.time()
    root.download_dir.mkdir(parents=True, exist_ok=True)
    for lid, iid in keys:
        (root.download_dir / f"{lid}_{iid}.jpg").write_bytes(jpeg(lid * 1000 + iid, size))
    with dbm.transaction(conn):
        for lid in sorted({k[0] for k in keys}):
            conn.execute("INSERT OR IGNORE INTO listings_static(listing_id, snapshot_timestamp, "
                         "title, materials) VALUES (?, ?, ?, ?)",
                         (lid, now, f"Walnut chair {lid}", json.dumps(["walnut", "linen"])))
        dbm.add_discovered_images(conn, keys)
        dbm.set_image_state(conn, keys, dbm.DOWNLOADED, expect=dbm.DISCOVERED, attempts=1)
    conn.close()
    return keys


def states(root: Root) -> dict[str, int]:
    conn = dbm.open_db(root)
    try:
        return dbm.count_states_slowly(conn)
    finally:
        conn.close()


def batches(root: Root) -> list[tuple]:
    conn = dbm.open_db(root)
    try:
        return conn.execute("SELECT batch_id, worker, state, n_images, error FROM batches "
                            "ORDER BY batch_id").fetchall()
    finally:
        conn.close()


def write_hosts(root: Root, text: str) -> None:
    root.hosts_path.write_text(text)


def local_hosts(worker_root: Path | None = None, name: str = "here") -> str:
    line = f'root = "{worker_root}"\n' if worker_root else ""
    return f"[workers.{name}]\nlocal = true\n{line}"


# ---- checks --------------------------------------------------------------------------------

def assert_indexed_once(root: Root, keys) -> None:
    """Every key embedded once, in the index once, at the row the DB names; verify passes."""
    from pipeline.index import open_store, verify

    conn = dbm.open_db(root)
    try:
        problems, summary = verify(root, conn)
        assert problems == [], problems
        store = open_store(root, conn)
        seen = [tuple(map(int, r)) for s in store.shards for r in s.ids().tolist()]
        assert len(seen) == len(set(seen)), "an image is in the index twice"
        assert set(seen) == set(keys), (f"index has {len(seen)} images, expected {len(keys)}; "
                                        f"missing {sorted(set(keys) - set(seen))[:5]}")
        embedded = conn.execute("SELECT COUNT(*) FROM image_status WHERE state = 'embedded'").fetchone()[0]
        assert embedded == len(keys)
    finally:
        conn.close()


# ---- a stub worker: the real worker loop, an embedder without models -----------------------

class _Clock:
    def rates(self):
        return {}


class _Models:
    def fingerprint(self):
        return STUB_FP

    def fingerprint_detail(self):
        return {"profile": "stub"}


class StubEmbedder:
    """Vectors that depend only on the image's bytes; the 'bg-removed' JPEG is the input.
    ``dims`` overrides a model's width (a broken worker); ``delay`` slows each image."""

    def __init__(self, delay: float = 0.0, dims: dict | None = None, fingerprint: str = STUB_FP):
        self.clock = _Clock()
        self.models = _Models()
        self.models.fingerprint = lambda: fingerprint
        self.delay = delay
        self.dims = dims or {}
        self.texts_seen: dict = {}

    def run(self, jobs, texts, store, should_stop=lambda: False, on_progress=lambda n: None):
        from pipeline.models.embed import BatchVectors, Stopped

        for job, text in zip(jobs, texts):
            self.texts_seen[job.row.key] = text
        t0 = time.perf_counter()
        out = {m: [] for m in VECTOR_ORDER}
        ok = []
        for job in jobs:
            if should_stop():
                raise Stopped()
            data = Path(job.path).read_bytes()
            store.add_image(job.row, data)
            seed = int.from_bytes(hashlib.sha256(data).digest()[:8], "little")
            for j, m in enumerate(VECTOR_ORDER):
                v = np.random.default_rng([seed, j]).standard_normal(self.dims.get(m, VECTOR_DIMS[m]))
                out[m].append((v / np.linalg.norm(v)).astype("float32"))
            ok.append(job.index)
            on_progress(1)
            if self.delay:
                time.sleep(self.delay)
        vectors = {m: np.stack(v) if v else np.zeros((0, self.dims.get(m, VECTOR_DIMS[m])), "float32")
                   for m, v in out.items()}
        return BatchVectors(ok, vectors, [], {}, time.perf_counter() - t0)


class _HeartbeatReport:
    """Writes run/worker.json as the stage runtime would (state, heartbeat, batch in hand)."""

    def __init__(self, root_path: Path):
        self.path = Path(root_path) / "run" / "worker.json"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.batch = None
        self.state = "running"
        self.write()

    def write(self):
        atomic_write_json(self.path, {"stage": "worker", "pid": os.getpid(), "state": self.state,
                                      "heartbeat": time.time(), "info": {"batch": self.batch}})

    def start(self, batch_id):
        self.batch = batch_id
        self.write()

    def images(self, n):
        pass

    def finish(self, outcome):
        self.batch = None
        self.write()


class StubWorker:
    """A worker thread on ``root_path`` (its inbox/outbox), alive until ``stop()``."""

    def __init__(self, root_path: Path, embedder: StubEmbedder | None = None, poll_s: float = 0.05):
        self.root_path = Path(root_path)
        self.embedder = embedder or StubEmbedder()
        self.poll_s = poll_s
        self._stop = threading.Event()
        self.report = _HeartbeatReport(self.root_path)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.beat = threading.Thread(target=self._beat, daemon=True)

    def _beat(self):
        while not self._stop.wait(0.2):
            self.report.write()

    def _run(self):
        from pipeline.stages.worker.entry import work

        work(WorkerDirs.under(self.root_path), self.embedder, once=False,
             checkpoint=lambda: not self._stop.is_set(), stop_requested=self._stop.is_set,
             sleep=lambda s: not self._stop.wait(s), poll_s=self.poll_s, report=self.report)

    def start(self) -> "StubWorker":
        self.thread.start()
        self.beat.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(10)
        self.beat.join(2)
        self.report.state = "stopped"
        self.report.write()


def run_orchestrator(root: Root, once: bool = True, timeout_s: float = 60.0, store=None,
                     stop: threading.Event | None = None, until=None, report=None):
    """The orchestrator in this process, as the stage would run it (no stage lock). It stops
    on ``stop``, or when ``until()`` turns true, or (a failure) at the time limit."""
    from pipeline.stages.orchestrate.core import Orchestrator
    from pipeline.stages.orchestrate.settings import OrchestrateSettings

    deadline = time.monotonic() + timeout_s
    conn = dbm.open_db(root)
    settings = OrchestrateSettings.from_config(root.config)
    state = {"timed_out": False}

    def checkpoint():
        if time.monotonic() > deadline:
            state["timed_out"] = True
            return False
        return not (stop is not None and stop.is_set()) and not (until is not None and until())

    orch = Orchestrator(root, conn, settings, once=once, store=store, checkpoint=checkpoint,
                        report=report if report is not None else FakeReport())
    try:
        orch.exit_code = orch.run()
    finally:
        conn.close()
    assert not state["timed_out"], "the orchestrator did not finish in time"
    return orch


def in_thread(fn, *args, **kwargs):
    """Run ``fn`` in a thread; ``.result()`` joins it and re-raises its exception."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()

    class Handle:
        def result(self, timeout=60.0):
            t.join(timeout)
            assert not t.is_alive(), "thread did not finish"
            if "error" in box:
                raise box["error"]
            return box.get("value")

    return Handle()


class FakeReport:
    def __init__(self):
        self.counters: dict = {}
        self.info: dict = {}
        self.blocked_reason = None

    def progress(self, n=1, counter="done", current=None):
        self.counters[counter] = self.counters.get(counter, 0) + n

    def set_counter(self, name, value):
        self.counters[name] = value

    def set_info(self, **fields):
        self.info.update(fields)

    def blocked(self, reason):
        self.blocked_reason = reason

    def unblocked(self):
        self.blocked_reason = None


PYTHON = sys.executable


def tamper_result(path: Path, kind: str) -> None:
    """Make a committed result wrong but self-consistent (checksums recomputed): ``dims``
    gives the first model 100-wide vectors, ``rows`` drops the last row."""
    path = Path(path)
    meta = json.loads((path / "result.json").read_text())
    sha = lambda b: hashlib.sha256(b).hexdigest()  # noqa: E731
    n = meta["rows"]
    if kind == "dims":
        entry = meta["vectors"][0]
        v = np.random.default_rng(0).standard_normal((n, 100)).astype("<f4")
        data = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype("<f4").tobytes()
        (path / entry["file"]).write_bytes(data)
        entry["dim"], entry["sha256"] = 100, sha(data)
    elif kind == "rows":
        ids = json.loads((path / "ids.json").read_text())
        lid, iid = ids["rows"][-1][:2]
        ids["rows"] = ids["rows"][:-1]
        data = json.dumps(ids).encode()
        (path / "ids.json").write_bytes(data)
        meta["ids"]["sha256"] = sha(data)
        for entry in meta["vectors"]:
            raw = (path / entry["file"]).read_bytes()
            cut = raw[: (n - 1) * entry["dim"] * 4]
            (path / entry["file"]).write_bytes(cut)
            entry["sha256"] = sha(cut)
        (path / "images" / f"{lid}_{iid}.jpg").unlink()
        meta["rows"] = n - 1
    else:
        raise ValueError(kind)
    (path / "result.json").write_text(json.dumps(meta))


def process_inbox(worker_root: Path, embedder: StubEmbedder | None = None) -> list[str]:
    """What a worker would do with its inbox now (no heartbeat): the result names."""
    from pipeline.batches.batchfile import list_batches
    from pipeline.models.batch_run import process_batch

    dirs = WorkerDirs.under(worker_root).ensure()
    done = []
    for batch in list_batches(dirs.inbox):
        process_batch(dirs, batch, embedder or StubEmbedder())
        done.append(batch.name)
    return done


def heartbeat(worker_root: Path, state: str = "running", batch: str | None = None,
              age_s: float = 0.0) -> None:
    """A worker heartbeat as run/worker.json (a worker that is, or seems, there)."""
    path = Path(worker_root) / "run" / "worker.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    pid = os.getpid() if state != "stopped" else 999_999_999     # a stopped one has no process
    atomic_write_json(path, {"stage": "worker", "pid": pid, "state": state,
                             "heartbeat": time.time() - age_s, "info": {"batch": batch}})


def inbox_names(worker_root: Path) -> list[str]:
    d = Path(worker_root) / "worker" / "inbox"
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []
