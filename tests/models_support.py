"""Shared helpers for the models and worker tests: test-profile roots, small images, batches,
and one test-profile Embedder per test process (the models load once)."""
from __future__ import annotations

import io
import os
import random
import tempfile
from pathlib import Path

from pipeline.batches.batchfile import ManifestRow, WorkerDirs, write_batch

# rembg only accepts a custom model under $U2NET_HOME: give the tests their own.
if not os.environ.get("U2NET_HOME"):
    os.environ["U2NET_HOME"] = tempfile.mkdtemp(prefix="imageselector-u2net-")

TEST_ROOT_TOML = """\
[root]
profile = "sandbox"

[models]
profile = "test"
device = "cpu"

[worker]
batch_size = 4
prep_threads = 2
prefetch_images = 8
poll_s = 0.2
"""


def sandbox_root(path: Path):
    """A root using the test-profile models."""
    from pipeline.core.root import Root

    path.mkdir(parents=True, exist_ok=True)
    (path / "imageselector.toml").write_text(TEST_ROOT_TOML)
    return Root(path).ensure()


def furniture_jpeg(seed: int, size: tuple[int, int] = (48, 40)) -> bytes:
    """A light background with a dark "piece of furniture" placed by ``seed``."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    image = Image.new("RGB", size, (235, 232, 228))
    draw = ImageDraw.Draw(image)
    w, h = size
    x0, y0 = rng.randrange(0, w // 2), rng.randrange(0, h // 2)
    colour = tuple(rng.randrange(20, 140) for _ in range(3))
    draw.rectangle([x0, y0, x0 + w // 3 + rng.randrange(w // 4), y0 + h // 3], fill=colour)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def make_rows(n: int, first_listing: int = 1000) -> list[ManifestRow]:
    # Two images per listing, so texts repeat as in real batches.
    return [ManifestRow(first_listing + i // 2, 50_000 + i,
                        f"Oak table {i // 2}. oak, steel") for i in range(n)]


def make_batch(inbox: Path, batch_id: str, n: int, bad: dict[int, bytes] | None = None):
    """A complete batch of ``n`` images; ``bad[i]`` replaces image i's bytes."""
    rows = make_rows(n)
    bad = bad or {}

    def source(row: ManifestRow) -> bytes:
        i = rows.index(row)
        return bad.get(i, furniture_jpeg(i))

    inbox.mkdir(parents=True, exist_ok=True)
    return write_batch(inbox, batch_id, rows, source), rows


_embedder = None


def test_embedder(root=None):
    """The test-profile Embedder, built once per process (models load once)."""
    global _embedder
    if _embedder is None:
        from pipeline.stages.worker.entry import build_embedder

        root = root or sandbox_root(Path(tempfile.mkdtemp(prefix="imageselector-models-")))
        _embedder = build_embedder(root)
    return _embedder


def worker_dirs(root) -> WorkerDirs:
    return WorkerDirs.under(root.path).ensure()
