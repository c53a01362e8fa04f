"""The state of one re-embed on disk: which column it writes (its id, the fingerprint it was
started with), which slices are finished, and the writing of one slice's files.

The job file ``data/embeddings/reembed_<model>.json`` names the column id; the files under
``shard_NNNN/columns/<model>.<id>/`` are the progress: a slice is finished once every vector
of the model has its hashes file, which is written (renamed into place) only after its
vectors file. A resumed run with another fingerprint (other weights, other settings) starts
a new column: vectors of two weights never share one.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core.errors import UserError
from pipeline.core.fsutil import atomic_write_bytes, fsync_dir, read_json_or_none
from pipeline.index import columns as cols
from pipeline.index import parts as pt


def job_path(base: Path, model: str) -> Path:
    return Path(base) / f"reembed_{model}.json"


def lock_path(base: Path, model: str) -> Path:
    return Path(base) / f".reembed_{model}.lock"


@dataclass
class Job:
    base: Path
    model: str
    vectors: list[str]
    fingerprint: str
    column_id: str
    started: float

    @classmethod
    def load_or_start(cls, base: Path, model: str, vectors: list[str], fingerprint: str,
                      log=None) -> "Job":
        path = job_path(base, model)
        saved = read_json_or_none(path)
        if isinstance(saved, dict) and saved.get("fingerprint") == fingerprint \
                and saved.get("vectors") == vectors:
            return cls(Path(base), model, vectors, fingerprint, saved["column_id"], saved["started"])
        if isinstance(saved, dict) and log:
            log.warning("reembed %s: the earlier run used fingerprint %s, this one %s: "
                        "starting a new column", model, saved.get("fingerprint"), fingerprint)
        job = cls(Path(base), model, vectors, fingerprint,
                  f"{fingerprint[:8]}-{secrets.token_hex(3)}", time.time())
        atomic_write_bytes(path, json.dumps({"model": model, "vectors": vectors,
                                             "fingerprint": fingerprint,
                                             "column_id": job.column_id,
                                             "started": job.started}, indent=1).encode())
        return job

    def finish(self) -> None:
        job_path(self.base, self.model).unlink(missing_ok=True)

    # ---- per shard -------------------------------------------------------------------
    def folder(self, shard) -> Path:
        return cols.column_folder(shard.path, self.model, self.column_id)

    def slice_done(self, shard, seq: int) -> bool:
        folder = self.folder(shard)
        return all(cols.hash_file(folder, seq, v).is_file() for v in self.vectors)

    def pending(self, shards) -> list[tuple[object, object]]:
        """(shard, slice) of every committed slice without its finished files."""
        return [(sh, s) for sh in shards for s in sh.slices if not self.slice_done(sh, s.seq)]

    def drop_abandoned(self, shards, committed: set[str]) -> list[Path]:
        """Remove this model's column folders that no committed line names and that are not
        this job's (an earlier run with other weights, given up)."""
        removed = []
        for sh in shards:
            parent = sh.path / cols.COLUMNS_DIR
            if not parent.is_dir():
                continue
            for folder in parent.iterdir():
                model, _, cid = folder.name.partition(".")
                if model == self.model and cid not in committed and cid != self.column_id:
                    shutil.rmtree(folder, ignore_errors=True)
                    removed.append(folder)
        return removed

    def write_slice(self, shard, s, vectors: dict, dims: dict, durable: bool = True) -> int:
        """Write one slice's files: vectors, then their hashes (the slice's commit)."""
        folder = self.folder(shard)
        folder.mkdir(parents=True, exist_ok=True)
        for v in self.vectors:
            arr = np.ascontiguousarray(vectors.get(v), dtype="<f4") if v in vectors else None
            if arr is None or arr.shape != (s.n, dims[v]):
                got = None if arr is None else arr.shape
                raise UserError(f"reembed {self.model}: {shard.path.name} batch line {s.seq}: "
                                f"{v} vectors have shape {got}, expected ({s.n}, {dims[v]})")
            if not np.isfinite(arr).all():
                raise UserError(f"reembed {self.model}: {shard.path.name} batch line {s.seq}: "
                                f"{v} has NaN or infinite values")
            _write_atomic(cols.vector_file(folder, s.seq, v), arr, durable)
        for v in self.vectors:
            arr = np.ascontiguousarray(vectors[v], dtype="<f4")
            _write_atomic(cols.hash_file(folder, s.seq, v), pt.vector_hashes(arr), durable)
        if durable:
            fsync_dir(folder)
        return s.n


def _write_atomic(path: Path, array: np.ndarray, durable: bool) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pt.write_array(tmp, array, durable)
    os.replace(tmp, path)
