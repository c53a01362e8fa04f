"""The worker's result format (what the worker gives back for a batch of
pipeline/batches/batchfile.py): writing it, the rows a stopped run keeps, rejections, and
reading a result back whole.

A result is a folder ``<batch_id>/`` in the worker's outbox, staged under a hidden name and
renamed into place only when every file is written and fsynced, so a visible result is
always complete::

    result.json     format, batch_id, status ("ok" or "rejected" with a reason), rows,
                    the vector files in models.VECTOR_ORDER with dim and sha256, the ids
                    file's sha256, failed images with their reasons, the model fingerprint
    ids.json        {"rows": [[listing_id, image_id, jpeg_sha256, jpeg_bytes], ...]}
    <vector>.f32    raw little-endian float32, rows x dim, in ids order (= manifest order,
                    failed images left out)
    images/<listing_id>_<image_id>.jpg      the bg-removed image of each row (JPEG q90)

A worker stopped in the middle of a batch keeps the rows it finished in a hidden
``.<batch_id>.kept/`` in its outbox (their bg-removed images, ``<vector>.kept.f32`` and
``kept.json``: the manifest's keys, the finished and failed row indexes, the model
fingerprint); its next run takes them back and embeds only the rest. The orchestrator never
sees it (hidden names are not results).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.batches.batchfile import (IMAGES, ManifestRow, image_name, json_bytes, remove_tree,
                                        valid_batch_id, write_file)
from pipeline.core.errors import UserError
from pipeline.core.fsutil import fsync_dir
from pipeline.models.registry import VECTOR_DIMS, VECTOR_ORDER

RESULT_FORMAT = "imageselector-result/1"
RESULT = "result.json"
IDS = "ids.json"
KEPT_FORMAT = "imageselector-kept/1"
KEPT = "kept.json"
KEPT_SUFFIX = ".kept"
STATUS_OK = "ok"
STATUS_REJECTED = "rejected"
NORM_TOLERANCE = 1e-3


class ResultError(UserError):
    """A result that is incomplete, corrupt or does not match its batch."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class BatchResult:
    batch_id: str
    path: Path
    status: str
    reason: str | None
    ids: list[tuple[int, int]]
    vectors: dict[str, Any]               # name -> (rows, dim) float32 numpy, VECTOR_ORDER
    failed: list[dict]                    # {"listing_id", "image_id", "reason"}
    fingerprint: str | None
    fingerprint_detail: dict | None
    meta: dict = field(default_factory=dict)
    image_sha256: list[str] = field(default_factory=list)

    def image_path(self, i: int) -> Path:
        lid, iid = self.ids[i]
        return self.path / IMAGES / image_name(lid, iid)


def _keep_only(folder: Path, names: set[str]) -> None:
    """Remove the files of ``folder`` not named in ``names`` (images of unfinished rows)."""
    for p in folder.iterdir():
        if p.name not in names:
            p.unlink()


def kept_path(outbox: Path, batch_id: str) -> Path:
    """Where a stopped run keeps the finished rows of ``batch_id``."""
    return Path(outbox) / f".{batch_id}{KEPT_SUFFIX}"


def clean_orphan_kept(outbox: Path, inbox: Path) -> list[str]:
    """Remove kept rows of batches no longer in the inbox (finished elsewhere or withdrawn)."""
    removed = []
    if not Path(outbox).is_dir():
        return removed
    for entry in Path(outbox).iterdir():
        name = entry.name
        if name.startswith(".") and name.endswith(KEPT_SUFFIX):
            batch_id = name[1:-len(KEPT_SUFFIX)]
            if not (Path(inbox) / batch_id).is_dir():
                remove_tree(entry)
                removed.append(name)
    return removed


class ResultWriter:
    """Stages a result under a hidden name; ``commit`` makes it visible in one rename."""

    def __init__(self, outbox: Path, batch_id: str):
        self.outbox = Path(outbox)
        self.batch_id = batch_id
        self.final = self.outbox / batch_id
        self.staging = self.outbox / f".{batch_id}.tmp-{os.getpid()}-{time.monotonic_ns()}"
        (self.staging / IMAGES).mkdir(parents=True)
        self._images: dict[tuple[int, int], tuple[str, int]] = {}

    def add_image(self, row: ManifestRow, jpeg: bytes) -> None:
        """Thread-safe: each row has its own file."""
        write_file(self.staging / IMAGES / row.image_name, jpeg)
        self._images[row.key] = (sha256_bytes(jpeg), len(jpeg))

    def read_image(self, row: ManifestRow) -> bytes:
        return (self.staging / IMAGES / row.image_name).read_bytes()

    def abort(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)

    def keep(self, manifest: list[ManifestRow], kept: "BatchVectors", fingerprint: str) -> Path:
        """A stop in mid-batch: keep the finished rows (their images and vectors) for the
        next run instead of throwing hours of work away. Written like a result: staged,
        fsynced, renamed into place in one step."""
        import numpy as np

        _keep_only(self.staging / IMAGES, {manifest[i].image_name for i in kept.ok})
        for name in VECTOR_ORDER:
            arr = np.ascontiguousarray(kept.vectors[name], dtype="<f4")
            if arr.shape != (len(kept.ok), VECTOR_DIMS[name]):
                raise ResultError(f"kept rows of {self.batch_id}: {name} has shape {arr.shape}")
            write_file(self.staging / f"{name}.kept.f32", arr.tobytes())
        images = {manifest[i].image_name: list(self._images[manifest[i].key]) for i in kept.ok}
        write_file(self.staging / KEPT, json_bytes({
            "format": KEPT_FORMAT, "batch_id": self.batch_id, "fingerprint": fingerprint,
            "keys": [[r.listing_id, r.image_id] for r in manifest], "ok": kept.ok,
            "failed": [[i, reason] for i, reason in kept.failed], "images": images}))
        fsync_dir(self.staging / IMAGES)
        fsync_dir(self.staging)
        target = kept_path(self.outbox, self.batch_id)
        remove_tree(target)
        os.replace(self.staging, target)
        fsync_dir(self.outbox)
        return target

    def take_kept(self, manifest: list[ManifestRow],
                  fingerprint: str) -> tuple["BatchVectors | None", str | None]:
        """Adopt the rows an earlier stopped run kept for this batch as this writer's
        staging. Returns (rows, None); (None, None) when nothing was kept; (None, why) when
        what was kept does not fit this manifest or these models (it is then removed)."""
        import numpy as np

        from pipeline.models.embed import BatchVectors

        src = kept_path(self.outbox, self.batch_id)
        if not src.is_dir():
            return None, None
        try:
            meta = json.loads((src / KEPT).read_bytes())
            if meta.get("format") != KEPT_FORMAT or meta.get("batch_id") != self.batch_id:
                raise ValueError(f"not a {KEPT_FORMAT} of {self.batch_id}")
            if meta["fingerprint"] != fingerprint:
                raise ValueError("embedded by other models")
            if [tuple(k) for k in meta["keys"]] != [r.key for r in manifest]:
                raise ValueError("its manifest differs from this batch's")
            ok = [int(i) for i in meta["ok"]]
            failed = [(int(i), str(reason)) for i, reason in meta["failed"]]
            vectors = {}
            for name in VECTOR_ORDER:
                arr = np.fromfile(src / f"{name}.kept.f32", dtype="<f4")
                if arr.size != len(ok) * VECTOR_DIMS[name]:
                    raise ValueError(f"{name}.kept.f32 holds {arr.size} values, not "
                                     f"{len(ok)} x {VECTOR_DIMS[name]}")
                vectors[name] = arr.reshape(len(ok), VECTOR_DIMS[name])
                if ok and np.abs(np.linalg.norm(vectors[name], axis=1) - 1).max() > NORM_TOLERANCE:
                    raise ValueError(f"{name}.kept.f32 holds vectors that are not unit length")
            images = {}
            for i in ok:
                row = manifest[i]
                sha, size = meta["images"][row.image_name]
                if (src / IMAGES / row.image_name).stat().st_size != size:
                    raise ValueError(f"image {row.image_name} is not the size recorded")
                images[row.key] = (sha, size)
        except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
            remove_tree(src)
            return None, str(exc)
        shutil.rmtree(self.staging, ignore_errors=True)
        os.replace(src, self.staging)
        # only finished rows have an image here (a failed row must have none in the result)
        _keep_only(self.staging / IMAGES, {manifest[i].image_name for i in ok})
        for name in VECTOR_ORDER:   # the result gets its own vector files at commit
            (self.staging / f"{name}.kept.f32").unlink()
        (self.staging / KEPT).unlink()
        self._images.update(images)
        return BatchVectors(ok, vectors, failed, {}, 0.0), None

    def commit(self, rows: list[ManifestRow], vectors: dict[str, Any],
               failed: list[tuple[ManifestRow, str]], fingerprint: str,
               fingerprint_detail: dict, extra: dict | None = None) -> Path:
        """``rows``: the embedded rows in manifest order; ``vectors[name]`` aligned with them."""
        import numpy as np

        n = len(rows)
        missing = [r.image_name for r in rows if r.key not in self._images]
        if missing:
            raise ResultError(f"result {self.batch_id}: no bg-removed image for {missing[0]}")
        vector_entries = []
        for name in VECTOR_ORDER:
            arr = np.ascontiguousarray(vectors[name], dtype="<f4")
            if arr.shape != (n, VECTOR_DIMS[name]):
                raise ResultError(f"result {self.batch_id}: {name} has shape {arr.shape}, "
                                  f"expected {(n, VECTOR_DIMS[name])}")
            data = arr.tobytes()
            write_file(self.staging / f"{name}.f32", data)
            vector_entries.append({"name": name, "dim": VECTOR_DIMS[name], "file": f"{name}.f32",
                                   "dtype": "<f4", "sha256": sha256_bytes(data)})
        ids_rows = [[r.listing_id, r.image_id, *self._images[r.key]] for r in rows]
        ids_data = json_bytes({"rows": ids_rows})
        write_file(self.staging / IDS, ids_data)
        result = {
            "format": RESULT_FORMAT, "batch_id": self.batch_id, "status": STATUS_OK,
            "rows": n, "ids": {"file": IDS, "sha256": sha256_bytes(ids_data)},
            "vectors": vector_entries,
            "failed": [{"listing_id": r.listing_id, "image_id": r.image_id, "reason": reason}
                       for r, reason in failed],
            "fingerprint": fingerprint, "fingerprint_detail": fingerprint_detail,
            "host": socket.gethostname(), "created": time.time(),
        }
        result.update(extra or {})
        write_file(self.staging / RESULT, json_bytes(result))
        fsync_dir(self.staging / IMAGES)
        fsync_dir(self.staging)
        os.replace(self.staging, self.final)
        fsync_dir(self.outbox)
        return self.final


def write_rejection(outbox: Path, batch_id: str, reason: str) -> Path:
    """A result that only says why the batch was refused (so the orchestrator need not wait)."""
    outbox = Path(outbox)
    staging = outbox / f".{batch_id}.tmp-{os.getpid()}-{time.monotonic_ns()}"
    staging.mkdir(parents=True)
    write_file(staging / RESULT, json_bytes({
        "format": RESULT_FORMAT, "batch_id": batch_id, "status": STATUS_REJECTED,
        "reason": reason, "host": socket.gethostname(), "created": time.time()}))
    fsync_dir(staging)
    final = outbox / batch_id
    if final.exists():
        remove_tree(final)
    os.replace(staging, final)
    fsync_dir(outbox)
    return final


def list_results(outbox: Path) -> list[Path]:
    """Complete results in an outbox (staging folders are hidden until their rename)."""
    if not Path(outbox).is_dir():
        return []
    return sorted(p for p in Path(outbox).iterdir()
                  if p.is_dir() and valid_batch_id(p.name) and (p / RESULT).is_file())


def read_result(path: Path, manifest: list[ManifestRow] | None = None, *,
                verify_images: bool = True) -> BatchResult:
    """Read a result and prove it whole: checksums, shapes, unit norms, images, and (given the
    batch's manifest) that its rows and failures are exactly the manifest's, in order."""
    import numpy as np

    path = Path(path)
    where = f"result {path.name}"

    def fail(msg: str):
        raise ResultError(f"{where}: {msg}")

    try:
        meta = json.loads((path / RESULT).read_bytes().decode("utf-8"))
    except FileNotFoundError:
        fail(f"{RESULT} is missing")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        fail(f"{RESULT} is not valid JSON ({exc})")
    if not isinstance(meta, dict) or meta.get("format") != RESULT_FORMAT:
        fail(f"format is not {RESULT_FORMAT}")
    if meta.get("batch_id") != path.name:
        fail(f"names batch {meta.get('batch_id')!r}, but its folder is {path.name!r}")
    status = meta.get("status")
    if status == STATUS_REJECTED:
        return BatchResult(path.name, path, status, str(meta.get("reason")), [], {}, [], None,
                           None, meta)
    if status != STATUS_OK:
        fail(f"unknown status {status!r}")
    n = meta.get("rows")
    if not isinstance(n, int) or n < 0:
        fail("rows must be a non-negative integer")
    ids_data = _read_checked(path / IDS, meta.get("ids", {}).get("sha256"), fail)
    ids_rows = json.loads(ids_data.decode("utf-8")).get("rows")
    if not isinstance(ids_rows, list) or len(ids_rows) != n:
        fail(f"{IDS} has {len(ids_rows) if isinstance(ids_rows, list) else '?'} rows, expected {n}")
    ids = [(int(r[0]), int(r[1])) for r in ids_rows]
    entries = meta.get("vectors", [])
    names = [e.get("name") for e in entries]
    if names != list(VECTOR_ORDER):
        fail(f"vector files {names} differ from {list(VECTOR_ORDER)}")
    vectors = {}
    for entry in entries:
        name = entry["name"]
        dim = VECTOR_DIMS[name]
        if entry.get("dim") != dim:
            fail(f"{name} has dim {entry.get('dim')}, the registry says {dim}")
        data = _read_checked(path / entry["file"], entry.get("sha256"), fail)
        if len(data) != n * dim * 4:
            fail(f"{entry['file']} holds {len(data)} bytes, expected {n} x {dim} float32")
        arr = np.frombuffer(data, dtype="<f4").reshape(n, dim)
        if n:
            if not np.isfinite(arr).all():
                fail(f"{name} has non-finite values")
            norms = np.linalg.norm(arr, axis=1)
            if np.abs(norms - 1).max() > NORM_TOLERANCE:
                fail(f"{name} has vectors that are not unit length")
        vectors[name] = arr
    shas = [str(r[2]) for r in ids_rows]
    for (lid, iid), sha, size in zip(ids, shas, (r[3] for r in ids_rows)):
        image = path / IMAGES / image_name(lid, iid)
        if not image.is_file():
            fail(f"image {IMAGES}/{image.name} is missing")
        if verify_images:
            data = image.read_bytes()
            if len(data) != size or sha256_bytes(data) != sha:
                fail(f"image {IMAGES}/{image.name} does not match its checksum")
    failed = meta.get("failed", [])
    if manifest is not None:
        _check_against_manifest(ids, failed, manifest, fail)
    return BatchResult(path.name, path, status, None, ids, vectors, failed,
                       meta.get("fingerprint"), meta.get("fingerprint_detail"), meta, shas)


def _read_checked(path: Path, sha: str | None, fail) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        fail(f"{path.name} is missing")
    if not sha or sha256_bytes(data) != sha:
        fail(f"{path.name} does not match its checksum")
    return data


def _check_against_manifest(ids, failed, manifest, fail) -> None:
    failed_keys = {(int(f["listing_id"]), int(f["image_id"])) for f in failed}
    expected = [r.key for r in manifest if r.key not in failed_keys]
    if len(failed_keys) + len(expected) != len(manifest) or len(failed_keys) != len(failed):
        fail("failed images are not rows of the batch's manifest")
    if ids != expected:
        fail("rows do not follow the batch's manifest order")
