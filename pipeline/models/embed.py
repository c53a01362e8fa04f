"""The compute pipeline of one batch: decode -> background removal -> batched inference.

Preparation (read, decode, background removal, JPEG q90, per-model preprocessing) runs in a
small thread pool ahead of the models, bounded by ``prefetch`` images, so on a GPU it
overlaps with inference; the models run in batches of ``batch_size`` in the calling thread.
The models see the archived JPEG's pixels, so an image taken back from the tars gives the
same vector.

An image that is empty or cannot be decoded is reported with its reason and gets no vectors
(the original embedded a grey placeholder, which polluted the index).

With ``unload_between_models`` (a device with little memory; "auto" decides by the
device's memory, see ModelSet.unload_decision) the order is model-major: every image is
prepared first, then each model is loaded, run over the whole batch and freed.
"""
from __future__ import annotations

import io
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

from pipeline.models.loading import ModelSet
from pipeline.models.registry import VECTOR_DIMS, VECTOR_ORDER


class Stopped(Exception):
    """A stop was requested in the middle of a batch. ``finished``: the rows done by then
    (every model run, or failed), which the caller may keep; None in model-major order,
    where no row is finished before the last model."""

    def __init__(self, finished: "BatchVectors | None" = None):
        super().__init__("stopped")
        self.finished = finished


class ImageStore(Protocol):
    def add_image(self, row, jpeg: bytes) -> None: ...
    def read_image(self, row) -> bytes: ...


@dataclass
class Job:
    index: int        # position in the manifest
    row: Any          # batchfile.ManifestRow
    path: Path


@dataclass
class _Prepared:
    index: int
    tensors: dict[str, Any]


@dataclass
class _Failed:
    index: int
    reason: str


@dataclass
class BatchVectors:
    ok: list[int]                         # manifest indices embedded, in manifest order
    vectors: dict[str, Any]               # VECTOR_ORDER name -> (len(ok), dim) float32
    failed: list[tuple[int, str]]         # (manifest index, reason)
    seconds: dict[str, float]             # per step (thread-seconds for preparation steps)
    wall_s: float

    def merged(self, earlier: "BatchVectors | None") -> "BatchVectors":
        """These rows and those of an earlier (stopped) run of the same batch, in manifest order."""
        import numpy as np

        if earlier is None:
            return self
        ok = earlier.ok + self.ok
        order = np.argsort(np.asarray(ok, dtype=np.int64), kind="stable")
        vectors = {name: np.concatenate([earlier.vectors[name], self.vectors[name]])[order]
                   for name in VECTOR_ORDER}
        seconds = dict(earlier.seconds)
        for step, s in self.seconds.items():
            seconds[step] = seconds.get(step, 0.0) + s
        return BatchVectors([ok[i] for i in order], vectors, sorted(earlier.failed + self.failed),
                            seconds, earlier.wall_s + self.wall_s)


class StepClock:
    """Seconds spent per step, added from several threads."""

    def __init__(self):
        self._lock = threading.Lock()
        self.seconds: dict[str, float] = {}
        self.images: dict[str, int] = {}

    def add(self, step: str, seconds: float, images: int = 1) -> None:
        with self._lock:
            self.seconds[step] = self.seconds.get(step, 0.0) + seconds
            self.images[step] = self.images.get(step, 0) + images

    def rates(self) -> dict[str, float]:
        """Images per second of each step alone."""
        with self._lock:
            return {s: round(self.images[s] / t, 2) for s, t in self.seconds.items() if t > 0}


def decode_image(data: bytes):
    """Bytes -> an RGB PIL image (alpha flattened onto white); ValueError with the reason."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ValueError("empty file (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except UnidentifiedImageError:
        raise ValueError(f"undecodable image (not a known image format, {len(data)} bytes)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ValueError(f"undecodable image ({exc})") from None
    if image.width == 0 or image.height == 0:
        raise ValueError("image has no pixels")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


class Embedder:
    """Runs batches through background removal and the models of a ModelSet."""

    def __init__(self, models: ModelSet, remover, batch_size: int = 0, prep_threads: int = 2,
                 prefetch: int = 64):
        self.models = models
        self.remover = remover
        self.batch_size = batch_size
        self.prep_threads = max(1, prep_threads)
        self.prefetch = max(1, prefetch)
        self.clock = StepClock()

    def effective_batch_size(self) -> int:
        if self.batch_size > 0:
            return self.batch_size
        return 8 if self.models.device == "cpu" else 32

    # ---- preparation (threads) ------------------------------------------------------
    def _prepare(self, job: Job, store: ImageStore, names: list[str]) -> _Prepared | _Failed:
        t0 = time.perf_counter()
        try:
            data = job.path.read_bytes()
        except OSError as exc:
            return _Failed(job.index, f"unreadable file ({exc.strerror or exc})")
        try:
            image = decode_image(data)
        except ValueError as exc:
            return _Failed(job.index, str(exc))
        t1 = time.perf_counter()
        self.clock.add("decode", t1 - t0)
        try:
            jpeg = self.remover.remove_to_jpeg(image)
        except Exception as exc:  # this image only; the session itself was checked at start
            return _Failed(job.index, f"background removal failed ({type(exc).__name__}: {exc})")
        t2 = time.perf_counter()
        self.clock.add("bgremove", t2 - t1)
        try:
            tensors = self._preprocess(jpeg, names) if names else {}
        except Exception as exc:
            return _Failed(job.index, f"preprocessing failed ({type(exc).__name__}: {exc})")
        # Stored last: a failed image leaves no bg-removed file in the result.
        store.add_image(job.row, jpeg)
        self.clock.add("preprocess", time.perf_counter() - t2)
        return _Prepared(job.index, tensors)

    def _preprocess(self, jpeg: bytes, names: list[str]) -> dict[str, Any]:
        from PIL import Image

        fed = Image.open(io.BytesIO(jpeg)).convert("RGB")
        return {name: self.models.get(name).preprocess(fed) for name in names}

    def _prepared_stream(self, jobs: list[Job], store: ImageStore, names: list[str],
                         should_stop: Callable[[], bool]):
        """Prepared images in manifest order, at most ``prefetch`` ahead of the consumer."""
        pool = ThreadPoolExecutor(self.prep_threads, thread_name_prefix="prep")
        pending: deque = deque()
        todo = iter(jobs)
        try:
            while True:
                while len(pending) < self.prefetch:
                    job = next(todo, None)
                    if job is None:
                        break
                    pending.append(pool.submit(self._prepare, job, store, names))
                if not pending:
                    return
                future = pending.popleft()
                while True:
                    try:
                        item = future.result(timeout=0.5)
                        break
                    except TimeoutError:
                        if should_stop():
                            raise Stopped() from None
                yield item
        finally:
            for f in pending:
                f.cancel()
            pool.shutdown(wait=True, cancel_futures=True)

    # ---- inference -------------------------------------------------------------------
    def _run_model(self, name: str, chunk: list[_Prepared], out: dict, texts: list[str],
                   text_cache: dict) -> None:
        import torch

        model = self.models.get(name)
        idx = [p.index for p in chunk]
        t0 = time.perf_counter()
        pixels = torch.stack([p.tensors[name] for p in chunk])
        out[name][idx] = model.embed_pixels(pixels)
        self.clock.add(name, time.perf_counter() - t0, len(chunk))
        if model.spec.text:
            t1 = time.perf_counter()
            cache = text_cache.setdefault(name, {})
            wanted = [texts[i] for i in idx]
            new = sorted({t for t in wanted if t not in cache})
            if new:
                for text, vec in zip(new, model.embed_texts(new)):
                    cache[text] = vec
            out[model.spec.text_name][idx] = [cache[t] for t in wanted]
            self.clock.add(model.spec.text_name, time.perf_counter() - t1, len(chunk))

    def run(self, jobs: list[Job], texts: list[str], store: ImageStore,
            should_stop: Callable[[], bool] = lambda: False,
            on_progress: Callable[[int], None] = lambda n: None) -> BatchVectors:
        """Embed ``jobs`` (``texts[i]`` is the listing text of manifest row i; the jobs may be
        some rows of a manifest). Raises Stopped when ``should_stop()`` turns true, with the
        rows finished by then."""
        import numpy as np

        start = time.perf_counter()
        n = max((j.index for j in jobs), default=-1) + 1
        out = {name: np.zeros((n, VECTOR_DIMS[name]), dtype=np.float32) for name in VECTOR_ORDER}
        names = list(self.models.names)
        failed: list[tuple[int, str]] = []
        ok: list[int] = []
        text_cache: dict = {}
        size = self.effective_batch_size()
        self.remover.session  # create the session before the clock runs
        clock_before = dict(self.clock.seconds)

        def rows_done() -> BatchVectors:
            ok.sort()
            failed.sort()
            seconds = {s: t - clock_before.get(s, 0.0) for s, t in self.clock.seconds.items()}
            return BatchVectors(list(ok), {name: out[name][ok] for name in VECTOR_ORDER},
                                list(failed), seconds, time.perf_counter() - start)

        if self.models.unload_between_models:
            self._run_model_major(jobs, texts, store, names, out, failed, ok, text_cache,
                                  size, should_stop, on_progress)
            return rows_done()
        for name in names:  # load every model once, before the threads need them
            self.models.get(name)
        chunk: list[_Prepared] = []
        try:
            for item in self._prepared_stream(jobs, store, names, should_stop):
                if isinstance(item, _Failed):
                    failed.append((item.index, item.reason))
                    on_progress(1)
                else:
                    chunk.append(item)
                if len(chunk) >= size:
                    self._run_chunk(chunk, names, out, texts, text_cache, ok, should_stop)
                    on_progress(len(chunk))
                    chunk = []
            if chunk:
                self._run_chunk(chunk, names, out, texts, text_cache, ok, should_stop)
                on_progress(len(chunk))
        except Stopped:
            raise Stopped(rows_done()) from None
        return rows_done()

    def _run_chunk(self, chunk, names, out, texts, text_cache, ok, should_stop) -> None:
        for name in names:
            self._run_model(name, chunk, out, texts, text_cache)
        ok.extend(p.index for p in chunk)
        if should_stop():
            raise Stopped()

    def _run_model_major(self, jobs, texts, store, names, out, failed, ok, text_cache, size,
                         should_stop, on_progress) -> None:
        prepared: list[_Prepared] = []
        for item in self._prepared_stream(jobs, store, [], should_stop):
            if isinstance(item, _Failed):
                failed.append((item.index, item.reason))
            else:
                prepared.append(item)
        by_index = {j.index: j for j in jobs}
        for k, name in enumerate(names):
            self.models.get(name)
            for start in range(0, len(prepared), size):
                chunk = [_Prepared(p.index, self._preprocess(store.read_image(by_index[p.index].row),
                                                             [name]))
                         for p in prepared[start:start + size]]
                self._run_model(name, chunk, out, texts, text_cache)
                if k == len(names) - 1:
                    on_progress(len(chunk))
                if should_stop():
                    raise Stopped()
            self.models.unload(name)
        ok.extend(p.index for p in prepared)
        on_progress(len(failed))
