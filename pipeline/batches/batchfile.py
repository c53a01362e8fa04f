"""The worker's batch format (what the orchestrator sends) and the worker's folders, with
the functions both sides use to write, list and verify a batch (the result the worker gives
back is pipeline/batches/results.py).

A batch is a folder ``<batch_id>/`` in the worker's inbox::

    manifest.json   {"format": BATCH_FORMAT, "batch_id": ..., "rows": [
                       {"listing_id": int, "image_id": int, "text": str}, ...]}
    images/<listing_id>_<image_id>.jpg      one file per row, nothing else

A sender writes it under ``<batch_id>.partial`` and renames it when complete; the worker
ignores ``.partial`` and hidden names. ``text`` is built once by the orchestrator as
``title + ". " + ", ".join(materials)``.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from pipeline.core.errors import UserError
from pipeline.core.fsutil import fsync_dir

BATCH_FORMAT = "imageselector-batch/1"
MANIFEST = "manifest.json"
IMAGES = "images"
PARTIAL_SUFFIX = ".partial"
# The worker's folders, relative to the root of the host it runs on.
INBOX = "worker/inbox"
OUTBOX = "worker/outbox"
REJECTED = "worker/rejected"
_BATCH_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


class BatchError(UserError):
    """A batch the worker cannot take: the message says what is wrong with it."""


@dataclass(frozen=True)
class WorkerDirs:
    inbox: Path
    outbox: Path
    rejected: Path

    @classmethod
    def under(cls, root_path: str | os.PathLike) -> "WorkerDirs":
        base = Path(root_path)
        return cls(base / INBOX, base / OUTBOX, base / REJECTED)

    def ensure(self) -> "WorkerDirs":
        for d in (self.inbox, self.outbox, self.rejected):
            d.mkdir(parents=True, exist_ok=True)
        return self


@dataclass(frozen=True)
class ManifestRow:
    listing_id: int
    image_id: int
    text: str

    @property
    def key(self) -> tuple[int, int]:
        return (self.listing_id, self.image_id)

    @property
    def image_name(self) -> str:
        return image_name(self.listing_id, self.image_id)


@dataclass
class Batch:
    batch_id: str
    path: Path
    rows: list[ManifestRow]

    def image_path(self, row: ManifestRow) -> Path:
        return self.path / IMAGES / row.image_name


def image_name(listing_id: int, image_id: int) -> str:
    return f"{listing_id}_{image_id}.jpg"


def valid_batch_id(batch_id: str) -> bool:
    return bool(_BATCH_ID.match(batch_id)) and not batch_id.endswith(PARTIAL_SUFFIX)


def write_file(path: Path, data: bytes) -> None:
    """Write ``data`` and fsync it (batches and results alike)."""
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def json_bytes(value: Any) -> bytes:
    """The JSON of a manifest, result or kept file, as written."""
    return json.dumps(value, indent=1, ensure_ascii=False).encode("utf-8")


def remove_tree(path: Path) -> None:
    """Delete a folder so that a crash midway never leaves a valid-looking part: rename it
    to a hidden name first."""
    path = Path(path)
    if not path.exists():
        return
    trash = path.with_name(f".{path.name}.trash-{os.getpid()}-{time.monotonic_ns()}")
    os.replace(path, trash)
    fsync_dir(path.parent)
    shutil.rmtree(trash, ignore_errors=True)


def clean_stale(folder: Path) -> list[str]:
    """Remove what a crashed writer left: hidden staging and trash folders."""
    removed = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        if entry.name.startswith(".") and (".tmp-" in entry.name or ".trash-" in entry.name):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry.name)
    return removed


# ---- batches ----------------------------------------------------------------------------

def manifest_dict(batch_id: str, rows: Iterable[ManifestRow]) -> dict:
    return {"format": BATCH_FORMAT, "batch_id": batch_id,
            "rows": [{"listing_id": r.listing_id, "image_id": r.image_id, "text": r.text}
                     for r in rows]}


def write_batch(parent: Path, batch_id: str, rows: list[ManifestRow],
                image_source: Callable[[ManifestRow], Path | bytes]) -> Path:
    """Build a complete batch folder ``parent/<batch_id>`` (staged as ``.partial``).

    ``image_source(row)`` gives the downloaded file's path (copied) or its bytes.
    """
    if not valid_batch_id(batch_id):
        raise BatchError(f"batch id {batch_id!r} is not a valid name")
    _check_rows(rows, f"batch {batch_id}")
    final = Path(parent) / batch_id
    if final.exists():
        raise BatchError(f"batch {final} already exists")
    staging = Path(parent) / (batch_id + PARTIAL_SUFFIX)
    if staging.exists():
        shutil.rmtree(staging)
    (staging / IMAGES).mkdir(parents=True)
    for row in rows:
        source = image_source(row)
        target = staging / IMAGES / row.image_name
        if isinstance(source, (bytes, bytearray)):
            write_file(target, bytes(source))
        else:
            shutil.copyfile(source, target)
            with open(target, "rb+") as fh:
                os.fsync(fh.fileno())
    write_file(staging / MANIFEST, json_bytes(manifest_dict(batch_id, rows)))
    fsync_dir(staging / IMAGES)
    fsync_dir(staging)
    os.replace(staging, final)
    fsync_dir(Path(parent))
    return final


def _check_rows(rows: list[ManifestRow], where: str) -> None:
    seen: set[tuple[int, int]] = set()
    for i, row in enumerate(rows):
        for name in ("listing_id", "image_id"):
            value = getattr(row, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise BatchError(f"{where}: row {i}: {name} must be a positive integer, got {value!r}")
        if not isinstance(row.text, str):
            raise BatchError(f"{where}: row {i}: text must be a string")
        if row.key in seen:
            raise BatchError(f"{where}: duplicate image {row.listing_id}_{row.image_id} (row {i})")
        seen.add(row.key)


def list_batches(inbox: Path) -> list[Path]:
    """Complete batches waiting in the inbox, oldest name first (skips partial and hidden)."""
    if not inbox.is_dir():
        return []
    ready = [p for p in inbox.iterdir()
             if p.is_dir() and valid_batch_id(p.name) and (p / MANIFEST).is_file()]
    return sorted(ready, key=lambda p: p.name)


def read_batch(path: Path) -> Batch:
    """Read and check a batch: manifest well-formed, no duplicate image, files match rows."""
    path = Path(path)
    where = f"batch {path.name}"
    try:
        manifest = json.loads((path / MANIFEST).read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise BatchError(f"{where}: {MANIFEST} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BatchError(f"{where}: {MANIFEST} is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BATCH_FORMAT:
        raise BatchError(f"{where}: {MANIFEST} format is not {BATCH_FORMAT}")
    if manifest.get("batch_id") != path.name:
        raise BatchError(f"{where}: {MANIFEST} names batch {manifest.get('batch_id')!r}, "
                         f"but its folder is {path.name!r}")
    raw_rows = manifest.get("rows")
    if not isinstance(raw_rows, list):
        raise BatchError(f"{where}: {MANIFEST} rows must be a list")
    rows = []
    for i, raw in enumerate(raw_rows):
        if not isinstance(raw, dict) or set(raw) != {"listing_id", "image_id", "text"}:
            raise BatchError(f"{where}: row {i} must have exactly listing_id, image_id, text")
        rows.append(ManifestRow(raw["listing_id"], raw["image_id"], raw["text"]))
    _check_rows(rows, where)
    images_dir = path / IMAGES
    present = {p.name for p in images_dir.iterdir()} if images_dir.is_dir() else set()
    expected = {r.image_name for r in rows}
    missing = sorted(expected - present)
    extra = sorted(present - expected)
    if missing:
        raise BatchError(f"{where}: {len(missing)} image(s) in the manifest have no file "
                         f"(first: {IMAGES}/{missing[0]})")
    if extra:
        raise BatchError(f"{where}: {len(extra)} file(s) are not in the manifest "
                         f"(first: {IMAGES}/{extra[0]})")
    return Batch(path.name, path, rows)
