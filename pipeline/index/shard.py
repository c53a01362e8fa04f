"""One shard: its manifest, its parts, and the bookkeeping of its derived files."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.core.errors import UserError
from pipeline.core.fsutil import atomic_write_bytes, fsync_dir
from pipeline.index import columns as cols
from pipeline.index import manifest as mf
from pipeline.index import parts as pt

SHARD_PREFIX = "shard_"
DERIVED_NAME = "derived.json"
IMAGE_INDEX_NAME = "image_index.json"


def shard_dir_name(number: int) -> str:
    return f"{SHARD_PREFIX}{number:04d}"


def list_shard_numbers(base: Path) -> list[int]:
    out = []
    try:
        names = os.listdir(base)
    except FileNotFoundError:
        return out
    for name in names:
        if name.startswith(SHARD_PREFIX) and name[len(SHARD_PREFIX):].isdigit():
            out.append(int(name[len(SHARD_PREFIX):]))
    return sorted(out)


@dataclass
class BatchSlice:
    """One committed manifest line of kind "batch": rows start..start+n of the shard."""

    seq: int
    batch_id: int
    start: int
    n: int
    offset: int      # first row of the batch that this slice holds
    total: int       # rows in the whole batch (after filtering)
    fingerprint: str
    entry: dict = field(repr=False)


class Shard:
    def __init__(self, base: Path, number: int):
        self.number = number
        self.path = Path(base) / shard_dir_name(number)
        self.entries: list[dict] = []
        self.slices: list[BatchSlice] = []
        self.manifest_bytes = 0
        self.columns: dict[str, cols.Column] = {}   # re-embedded vectors (index/columns.py)
        self._column_fingerprint: str | None = None

    # ---- files ------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.path / "manifest.jsonl"

    @property
    def parts_dir(self) -> Path:
        return self.path / "parts"

    @property
    def derived_path(self) -> Path:
        return self.path / DERIVED_NAME

    @property
    def image_index_path(self) -> Path:
        return self.path / IMAGE_INDEX_NAME

    def faiss_path(self, model: str) -> Path:
        return self.path / f"{model}.faiss"

    # ---- manifest ---------------------------------------------------------------
    def load(self, repair: bool) -> "Shard":
        """Read the manifest. A writer (``repair``) cuts a torn last line and removes parts
        that no committed line names; a reader ignores both."""
        entries, good, torn = mf.read_manifest(self.manifest_path)
        if torn and repair:
            mf.cut_torn_tail(self.manifest_path, good)
        if not entries:
            raise UserError(f"{self.path}: manifest has no header line")
        if entries[0].get("kind") != "shard" or entries[0].get("shard") != self.number:
            raise UserError(f"{self.manifest_path}: first line is not this shard's header")
        self.entries = entries
        self.manifest_bytes = good
        self.slices = []
        row = 0
        for seq, e in enumerate(entries[1:], start=1):
            if e.get("kind") != "batch":
                continue
            if e["start"] != row or e["seq"] != seq:
                raise UserError(f"{self.manifest_path}: line {seq} starts at row {e['start']}, "
                                f"expected {row} (manifest out of order)")
            self.slices.append(BatchSlice(seq, e["batch_id"], e["start"], e["n"], e["offset"],
                                          e["total"], e["fingerprint"], e))
            row += e["n"]
        self.columns, self._column_fingerprint = cols.for_shard(self.path.parent, self.number)
        if repair:
            self._remove_orphans()
        return self

    def _remove_orphans(self) -> None:
        committed = {s.seq for s in self.slices}
        removed = False
        for seq, _name, path in pt.list_part_files(self.parts_dir):
            if seq not in committed:
                path.unlink(missing_ok=True)
                removed = True
        for tmp in self.path.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
            removed = True
        if removed:
            fsync_dir(self.parts_dir)

    @classmethod
    def create(cls, base: Path, number: int, header: dict, durable: bool = True) -> "Shard":
        shard = cls(base, number)
        shard.path.mkdir(parents=True, exist_ok=True)
        shard.parts_dir.mkdir(exist_ok=True)
        # A folder left by a creation that died before its header is reused from scratch.
        shard.manifest_path.unlink(missing_ok=True)
        mf.append_entry(shard.manifest_path, dict(header, kind="shard", shard=number), durable)
        fsync_dir(shard.path)
        fsync_dir(Path(base))
        return shard.load(repair=True)

    @property
    def header(self) -> dict:
        return self.entries[0]

    @property
    def order(self) -> list[str]:
        return list(self.header["vector_order"])

    @property
    def dims(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.header["dims"].items()}

    @property
    def capacity(self) -> int:
        return int(self.header["capacity"])

    @property
    def first_global_row(self) -> int:
        return int(self.header["first_global_row"])

    @property
    def fingerprint(self) -> str:
        return self._column_fingerprint or self.header["fingerprint"]

    def column_ids(self) -> dict[str, str]:
        """{vector: column id} of the re-embedded columns in force (derived files follow)."""
        return {v: c.column_id for v, c in sorted(self.columns.items())}

    @property
    def rows(self) -> int:
        return sum(s.n for s in self.slices)

    @property
    def full(self) -> bool:
        return self.rows >= self.capacity

    def next_seq(self) -> int:
        return len(self.entries)

    # ---- parts ------------------------------------------------------------------
    def part_file(self, s: BatchSlice, name: str) -> Path:
        """The part's path: a committed re-embedded column's file for this slice, else the
        manifest line's ``"files"`` entry when it names one (an adopted shard's
        ``.flat.faiss`` parts), else ``bSSSSSS.<name>.npy``."""
        column = self.columns.get(name)
        if column is not None and s.seq in column.slices:
            return column.vector_file(s.seq)
        named = (s.entry.get("files") or {}).get(name)
        if named is None:
            return pt.part_path(self.parts_dir, s.seq, name)
        if not isinstance(named, str) or not pt.check_part_name(named, s.seq, name):
            raise UserError(f"{self.manifest_path}: line {s.seq} names {named!r} as its {name} "
                            f"part, not a part file of that line")
        return self.parts_dir / named

    def part(self, s: BatchSlice, name: str, mmap: bool = True) -> np.ndarray:
        path = self.part_file(s, name)
        try:
            if name == "hashes":
                return self._hashes_with_columns(s, pt.read_array(path, mmap=mmap))
            return pt.read_array(path, mmap=mmap)
        except FileNotFoundError:
            raise UserError(f"{self.path.name}: part {path.name} named by manifest line "
                            f"{s.seq} is missing") from None
        except ValueError as exc:
            raise UserError(f"{self.path.name}: part {path.name} named by manifest line "
                            f"{s.seq} is unreadable ({exc})") from None

    def _hashes_with_columns(self, s: BatchSlice, hashes: np.ndarray) -> np.ndarray:
        """The slice's hash part with each re-embedded column's hashes in its place."""
        swaps = [(j, c) for j, m in enumerate(self.order)
                 if (c := self.columns.get(m)) is not None and s.seq in c.slices]
        if not swaps:
            return hashes
        hashes = np.array(hashes)
        for j, c in swaps:
            try:
                col = pt.read_array(c.hash_file(s.seq), mmap=False)
            except FileNotFoundError:
                raise UserError(f"{self.path.name}: re-embedded column {c.column_id} has no "
                                f"{c.hash_file(s.seq).name} for manifest line {s.seq}") from None
            if hashes.ndim != 2 or col.shape != (hashes.shape[0],):
                raise ValueError(f"column file {c.hash_file(s.seq).name} has shape {col.shape}, "
                                 f"the slice {hashes.shape[:1]}")
            hashes[:, j] = col
        return hashes

    def ids(self) -> np.ndarray:
        if not self.slices:
            return np.zeros((0, 2), dtype=np.int64)
        return np.concatenate([np.asarray(self.part(s, "ids")) for s in self.slices])

    def hashes(self) -> np.ndarray:
        if not self.slices:
            return np.zeros((0, len(self.order)), dtype=np.uint64)
        return np.concatenate([np.asarray(self.part(s, "hashes")) for s in self.slices])

    def vector_parts(self, model: str) -> list[tuple[int, np.ndarray]]:
        """(first row, memory-mapped float32 rows) for every slice."""
        return [(s.start, self.part(s, model)) for s in self.slices]

    def slices_from(self, row: int):
        """(slice, first row inside it) of every slice holding rows >= ``row``."""
        for s in self.slices:
            if s.start + s.n > row:
                yield s, max(0, row - s.start)

    # ---- derived state ----------------------------------------------------------
    def derived_state(self) -> dict:
        try:
            with open(self.derived_path, encoding="utf-8") as fh:
                state = json.load(fh)
            if isinstance(state, dict):
                return state
        except (FileNotFoundError, ValueError):
            pass
        return {"files": {}}

    def write_derived_state(self, state: dict, durable: bool = True) -> None:
        atomic_write_bytes(self.derived_path, json.dumps(state, indent=1, sort_keys=True).encode(),
                           durable=durable)

    def signature(self) -> tuple:
        """Changes whenever a commit or a derived-file update lands (readers poll this)."""
        sig = [cols.signature(self.path.parent)]
        for p in (self.manifest_path, self.derived_path):
            try:
                st = p.stat()
                sig.append((st.st_size, st.st_mtime_ns, st.st_ino))
            except FileNotFoundError:
                sig.append(None)
        return tuple(sig)
