"""The re-embed's compute on a home-lab worker (`imageselector reembed MODEL --workers NAME`
naming SSH or local workers): one process per model on the worker's root, started by the
re-embed (`imageselector reembed-serve MODEL --detach`), that loads the model once and
embeds the slices dropped into its inbox. Files, not a pipe, carry the slices: they survive
a dropped SSH connection (the server goes on; the result waits in the outbox), and they pass
unchanged through a Windows host's command wrapper, which decodes a command's output as text.

    ROOT/reembed/<model>/inbox/<name>.slice    a tar: meta.json (labels, texts), the images
    ROOT/reembed/<model>/outbox/<name>.npz     the vectors (written whole, then renamed)
    ROOT/reembed/<model>/outbox/<name>.error   one line: why this slice cannot be embedded
    ROOT/reembed/<model>/serve.json            heartbeat: pid, state, fingerprint, beat
    ROOT/reembed/<model>/KILL_REEMBED          stop after the slice in hand (SIGTERM too)

The heartbeat's ``beat`` counts up every HEARTBEAT_S, so the re-embed tells a live server
from a dead or frozen one without comparing two machines' clocks. The model settings are the
worker's own (its device, its weights), as for the worker stage; the fingerprint in the
heartbeat is what the column records. The server exits after ``idle_exit_s`` with nothing to
do, so one whose re-embed died does not hold a GPU for ever.
"""
from __future__ import annotations

import io
import json
import logging
import os
import signal
import tarfile
import threading
import time
from pathlib import Path

from pipeline.core.errors import UserError
from pipeline.core.fsutil import atomic_write_bytes, atomic_write_json, try_flock
from pipeline.core.testhold import hold_here

SERVE_DIR = "reembed"
HEARTBEAT_NAME = "serve.json"
LOG_NAME = "reembed-serve"        # ROOT/logs/reembed-serve.log
KILL_NAME = "KILL_REEMBED"
HEARTBEAT_S = 1.0
POLL_S = 0.2
ALREADY_RUNNING_EXIT = 3
log = logging.getLogger("imageselector.reembed")


def serve_relpath(model: str, *parts: str) -> str:
    """A path under the worker's root, with forward slashes (the transports take those)."""
    return "/".join((SERVE_DIR, model, *parts))


# ---- the slice and result files (both sides) ---------------------------------------------
def pack_slice(images: list[bytes], texts: list[str] | None, labels: list[str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        meta = json.dumps({"labels": labels, "texts": texts, "n": len(images)}).encode()
        for name, data in [("meta.json", meta)] + [(f"{k:06d}", d) for k, d in enumerate(images)]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def unpack_slice(data: bytes) -> tuple[list[bytes], list[str] | None, list[str]]:
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            meta = json.loads(tar.extractfile("meta.json").read())
            images = [tar.extractfile(f"{k:06d}").read() for k in range(int(meta["n"]))]
    except (tarfile.TarError, KeyError, ValueError, AttributeError) as exc:
        raise UserError(f"the slice file is damaged ({type(exc).__name__}: {exc})") from None
    return images, meta["texts"], meta["labels"]


def pack_result(vectors: dict, fingerprint: str, seconds: float) -> bytes:
    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, __meta__=np.frombuffer(json.dumps(
        {"fingerprint": fingerprint, "seconds": seconds, "vectors": sorted(vectors)}).encode(),
        dtype=np.uint8), **{f"v_{k}": v for k, v in vectors.items()})
    return buf.getvalue()


def unpack_result(data: bytes, rows: int) -> tuple[dict, dict]:
    """({vector name: (rows, dim) float32}, meta); a short or damaged file is a UserError."""
    import numpy as np

    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            meta = json.loads(z["__meta__"].tobytes())
            vectors = {name: np.asarray(z[f"v_{name}"], dtype=np.float32) for name in meta["vectors"]}
    except (OSError, KeyError, ValueError) as exc:
        raise UserError(f"the result file is damaged ({type(exc).__name__}: {exc})") from None
    for name, v in vectors.items():
        if v.ndim != 2 or v.shape[0] != rows:
            raise UserError(f"the result's {name} vectors have shape {v.shape}, not ({rows}, dim)")
    return vectors, meta


# ---- the server ---------------------------------------------------------------------------
class _Heartbeat:
    def __init__(self, path: Path, model: str):
        self.path = path
        self.state = {"pid": os.getpid(), "model": model, "state": "loading", "beat": 0,
                      "fingerprint": None, "slice": None, "slices": 0, "error": None}
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name="reembed-heartbeat", daemon=True)

    def set(self, **values) -> None:
        with self.lock:
            self.state.update(values)
            self._write()

    def _write(self) -> None:
        self.state["beat"] += 1
        self.state["t"] = time.time()
        atomic_write_json(self.path, self.state)

    def _run(self) -> None:
        while not self.done.wait(HEARTBEAT_S):
            with self.lock:
                self._write()

    def start(self) -> None:
        self._write()
        self.thread.start()

    def stop(self, **values) -> None:
        self.done.set()
        self.thread.join(5)
        self.set(**values)


def serve(root, model: str, batch_size: int = 0, idle_exit_s: float = 600.0) -> int:
    """Embed slices until the kill file, or ``idle_exit_s`` without a slice. Exit status: 0,
    2 when the model cannot load (the heartbeat says why), 3 when one already serves."""
    from pipeline.models.registry import ModelSettings
    from pipeline.reembed.compute import ColumnEmbedder

    base = Path(root.path) / SERVE_DIR / model
    inbox, outbox = base / "inbox", base / "outbox"
    for d in (inbox, outbox):
        d.mkdir(parents=True, exist_ok=True)
    fd = try_flock(base / "serve.lock")
    if fd is None:
        log.info("reembed-serve %s: another server holds %s", model, base)
        return ALREADY_RUNNING_EXIT
    kill = base / KILL_NAME
    kill.unlink(missing_ok=True)          # a stop meant for a server that is gone
    asked = threading.Event()             # SIGTERM: the same as the kill file
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: asked.set())
    hb = _Heartbeat(base / HEARTBEAT_NAME, model)
    hb.start()
    try:
        try:
            settings = ModelSettings.from_config(root.config, root_profile=root.profile)
            embedder = ColumnEmbedder(settings, model, batch_size)
            fingerprint = embedder.fingerprint()
            embedder.models.get(model)            # load now: the first slice is not the slow one
        except Exception as exc:                  # noqa: BLE001 - said in the heartbeat, one line
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            hb.stop(state="error", error=f"{model} cannot load: {message}")
            log.error("reembed-serve %s: %s", model, message)
            return 2
        hb.set(state="ready", fingerprint=fingerprint)
        log.info("reembed-serve %s: ready (fingerprint %s)", model, fingerprint)
        idle_since = time.monotonic()
        while not (kill.exists() or asked.is_set()):
            waiting = sorted(inbox.glob("*.slice"))
            if not waiting:
                if time.monotonic() - idle_since > idle_exit_s:
                    log.info("reembed-serve %s: idle for %.0f s: exiting", model, idle_exit_s)
                    break
                time.sleep(POLL_S)
                continue
            _one(embedder, waiting[0], outbox, fingerprint, hb)
            idle_since = time.monotonic()
        kill.unlink(missing_ok=True)
        hb.stop(state="stopped", slice=None)
        return 0
    finally:
        os.close(fd)


def _one(embedder, path: Path, outbox: Path, fingerprint: str, hb: _Heartbeat) -> None:
    name = path.name[:-len(".slice")]
    hb.set(state="busy", slice=name)
    t0 = time.monotonic()
    try:
        images, texts, labels = unpack_slice(path.read_bytes())
        hold_here(name)                       # tests: the server killed mid-slice
        vectors = embedder.embed(images, texts, labels)
    except FileNotFoundError:                 # taken back by the re-embed meanwhile
        hb.set(state="ready", slice=None)
        return
    except UserError as exc:
        atomic_write_bytes(outbox / f"{name}.error", f"{exc}\n".encode())
    else:
        atomic_write_bytes(outbox / f"{name}.npz",
                           pack_result(vectors, fingerprint, time.monotonic() - t0))
    path.unlink(missing_ok=True)
    hb.set(state="ready", slice=None, slices=hb.state["slices"] + 1)
