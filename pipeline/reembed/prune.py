"""`imageselector index prune-columns`: remove the column folders no shard reads any more: a
column a later re-embed of the same model replaced, or one left by a re-embed given up with
other weights. Kept: every column in force, and the column of a re-embed in progress (its
job file). Refused while a re-embed runs on this root (it holds its lock), so a folder is
never removed while it is being written. A prune killed midway leaves only superseded
folders, partly removed; the next one finishes them."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from pipeline.core.errors import UserError
from pipeline.core.fsutil import read_json_or_none, try_flock
from pipeline.index import columns as cols
from pipeline.reembed.job import job_path, lock_path


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def prune_columns(root, dry_run: bool = False) -> list[dict]:
    """[{folder, model, column_id, bytes}] removed (or that would be, ``dry_run``)."""
    from pipeline.index.shard import list_shard_numbers, shard_dir_name
    from pipeline.models.registry import MODELS

    base = root.embeddings_dir
    held = []
    try:
        for model in (spec.name for spec in MODELS):
            fd = try_flock(lock_path(base, model))
            if fd is None:
                raise UserError(f"a `imageselector reembed {model}` is running on this root: "
                                f"prune the columns once it has ended")
            held.append(fd)
        keep = set(cols.in_force_ids(base).values())
        for model in (spec.name for spec in MODELS):
            job = read_json_or_none(job_path(base, model))
            if isinstance(job, dict) and job.get("column_id"):
                keep.add(job["column_id"])
        out = []
        shard_paths = [base / shard_dir_name(n) for n in list_shard_numbers(base)]
        for folder in cols.folders(shard_paths):
            model, _, column_id = folder.name.partition(".")
            if column_id in keep:
                continue
            out.append({"folder": str(folder.relative_to(base)), "model": model,
                        "column_id": column_id, "bytes": _size(folder)})
            if not dry_run:
                shutil.rmtree(folder)
        return out
    finally:
        for fd in held:
            os.close(fd)
