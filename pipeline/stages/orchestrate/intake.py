"""A result, from its verified folder to the index: the bg-removed images into
``images/imageall_new/``, the vectors through the index store's import (all-or-nothing with
the DB change, exactly once per batch), then the raw downloads deleted.

Order matters for a crash at any point: the archive copies are placed before the import (so
the tar stage never sees an embedded image without its file), and the raw downloads are
deleted only after it; every step can be done again.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from pipeline.batches import batchfile, results
from pipeline.batches.batchfile import ManifestRow
from pipeline.batches.results import BatchResult
from pipeline.core.fsutil import fsync_dir


def verify(path: Path, manifest: list[ManifestRow] | None) -> BatchResult:
    """Checksums, shapes, unit norms, images, and the rows against the batch's manifest
    (raises results.ResultError)."""
    return results.read_result(Path(path), manifest)


def place_images(result: BatchResult, target_dir: Path) -> int:
    """Hard-link (else copy) each bg-removed image into the archive folder, atomically."""
    target_dir = Path(target_dir)
    target_dir.mkdir(parents=True, exist_ok=True)
    n = 0
    for i in range(len(result.ids)):
        src = result.image_path(i)
        dst = target_dir / src.name
        n += 1
        try:
            if os.path.samefile(src, dst):
                continue                   # placed before (an import redone after a crash)
        except FileNotFoundError:
            pass
        tmp = target_dir / f".{src.name}.{os.getpid()}.tmp"
        tmp.unlink(missing_ok=True)
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, dst)
        tmp.unlink(missing_ok=True)        # rename between two links of one file is a no-op
    fsync_dir(target_dir)
    return n


_PLACING = re.compile(r"^\.[0-9]+_[0-9]+\.jpg\.[0-9]+\.tmp$")


def tidy_placing(target_dir: Path) -> int:
    """Temp names a killed place_images left in the archive folder."""
    n = 0
    if Path(target_dir).is_dir():
        for p in Path(target_dir).iterdir():
            if _PLACING.match(p.name):
                p.unlink(missing_ok=True)
                n += 1
    return n


def remove_placed(result: BatchResult, target_dir: Path) -> None:
    """Undo place_images for a result that was refused after all."""
    for lid, iid in result.ids:
        (Path(target_dir) / batchfile.image_name(lid, iid)).unlink(missing_ok=True)


def import_vectors(store, conn, batch_id: int, result: BatchResult):
    import numpy as np

    ids = np.asarray(result.ids, dtype=np.int64).reshape(-1, 2)
    return store.import_batch(int(batch_id), ids, result.vectors, result.fingerprint, conn)


def delete_downloads(download_dir: Path, keys) -> int:
    """The raw downloads of imported images (their bg-removed copy is in the archive)."""
    n = 0
    for lid, iid in keys:
        try:
            (Path(download_dir) / batchfile.image_name(lid, iid)).unlink()
            n += 1
        except FileNotFoundError:
            pass
    return n


def result_rate(result: BatchResult) -> float | None:
    """The worker's own images/s for this batch (its wall time, not the transfers)."""
    wall = result.meta.get("wall_s")
    n = len(result.ids) + len(result.failed)
    if isinstance(wall, (int, float)) and wall > 0 and n:
        return n / float(wall)
    return None
