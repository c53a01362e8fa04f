"""Adoption of the original system's shard into the index store (``IndexStore.adopt_shard``,
a mixin ``pipeline.index.store.IndexStore`` inherits): its IndexFlatIP files become a new
shard's parts by hard link (or a checked copy), built in a staging folder and renamed into place.
"""
from __future__ import annotations

import errno
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.core.errors import UserError
from pipeline.core.fsutil import fsync_dir
from pipeline.index import dbsync, flatfile
from pipeline.index import manifest as mf
from pipeline.index import parts as pt
from pipeline.index.errors import BatchRejected, FingerprintMismatch
from pipeline.index.shard import Shard, shard_dir_name

STAGING = ".adopt-staging"      # shards being adopted, renamed into place when complete
LINK_MODES = ("auto", "link", "copy")
_LINK_ERRORS = (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES,
                getattr(errno, "EOPNOTSUPP", errno.ENOTSUP))


@dataclass
class AdoptResult:
    shard: object                                      # the adopted Shard
    linked: list = field(default_factory=list)         # models whose part is a hard link
    copied: list = field(default_factory=list)         # models whose part had to be copied
    copied_bytes: int = 0
    why_copied: str = ""                               # one line: why not linked
    derived_linked: int = 0                            # derived files that are the part's inode


class ShardAdoption:
    """``adopt_shard`` for IndexStore (which provides the lock, the shards, layout, open and
    the derived-file refresh)."""

    def adopt_shard(self, number: int, ids, hashes, sources: dict, fingerprint: str,
                    capacity: int, source_info: dict | None = None, link: str = "auto",
                    conn=None) -> AdoptResult:
        """Take an existing shard of IndexFlatIP files (the original system's) into the store
        as shard ``number``, the next of the chain, without copying its vectors.

        ``sources`` maps each model to its IndexFlatIP file; ``ids`` (n, 2) and ``hashes``
        (n, models) are the rows the caller has checked against those files. A full shard's
        files become its parts by hard link (``link`` "auto": else a copy, e.g. across file
        systems; "link": a link or an error; "copy": always a copy); a shard with room left is
        always copied, since its source is the original's active shard, which the original
        rewrites in place. The shard is built in a staging folder and renamed into place (the
        commit: in the store whole or not at all); the DB's applied pointer moves with
        ``conn``. Nothing opens a source, or a part made from one, for writing."""
        if link not in LINK_MODES:
            raise UserError(f"link must be one of {', '.join(LINK_MODES)}, got {link!r}")
        capacity = int(capacity)
        with self.locked():
            if not self.shards or self._stale():
                self.open(refresh_derived=False)
            order, dims = self.layout()
            ids = np.asarray(ids)
            hashes = np.asarray(hashes)
            n = len(ids)
            if ids.shape != (n, 2) or not np.issubdtype(ids.dtype, np.integer):
                raise BatchRejected(f"adopted shard {number}: ids of shape {ids.shape}, expected (n, 2)")
            if hashes.shape != (n, len(order)):
                raise BatchRejected(f"adopted shard {number}: hashes of shape {hashes.shape}, "
                                    f"expected ({n}, {len(order)})")
            if sorted(sources) != sorted(order):
                raise BatchRejected(f"adopted shard {number}: files for {sorted(sources)}, the "
                                    f"store holds {order}")
            if not 0 < n <= capacity:
                raise BatchRejected(f"adopted shard {number}: {n} rows for a capacity of {capacity}")
            if number != len(self.shards):
                raise BatchRejected(f"adopted shard {number}: the store's next shard is "
                                    f"{len(self.shards)} (shards are a chain without gaps)")
            prev = self.active
            if prev is not None and not prev.full:
                raise BatchRejected(f"adopted shard {number}: {prev.path.name} is not full "
                                    f"({prev.rows} of {prev.capacity})")
            if not fingerprint:
                raise BatchRejected(f"adopted shard {number}: no model fingerprint")
            if self.fingerprint is not None and fingerprint != self.fingerprint:
                raise FingerprintMismatch(f"adopted shard {number}: fingerprint {fingerprint} "
                                          f"differs from the index store's {self.fingerprint}")
            for m in order:
                try:
                    got = flatfile.read_exact_header(Path(sources[m]))
                except (OSError, flatfile.NotFlat) as exc:
                    raise BatchRejected(f"adopted shard {number} model {m}: {exc}") from None
                if got != (dims[m], n):
                    raise BatchRejected(f"adopted shard {number} model {m}: {sources[m]} holds "
                                        f"{got[1]} rows of dim {got[0]}, expected {n} of dim {dims[m]}")
            full = n >= capacity
            first = 0 if prev is None else prev.first_global_row + prev.capacity
            staging = self.base / STAGING
            staged_path = staging / shard_dir_name(number)
            if staged_path.exists():
                shutil.rmtree(staged_path)  # left by an adoption that died before its rename
            staging.mkdir(parents=True, exist_ok=True)
            header = {"capacity": capacity, "first_global_row": first, "vector_order": order,
                      "dims": {m: int(dims[m]) for m in order}, "fingerprint": fingerprint,
                      "created": time.time()}
            if source_info is not None:
                header["adopted_from"] = source_info
            shard = Shard.create(staging, number, header, self.durable)
            seq = shard.next_seq()
            result = AdoptResult(shard)
            files = {}
            for m in order:
                name = pt.part_name(seq, m, pt.FLAT)
                how, nbytes, why = _place_part(Path(sources[m]), shard.parts_dir / name,
                                               link if full else "copy", self.durable)
                files[m] = name
                if how == "linked":
                    result.linked.append(m)
                else:
                    result.copied.append(m)
                    result.copied_bytes += nbytes
                    result.why_copied = result.why_copied or (
                        why if full else "the shard has room left (the original's active shard, "
                                         "which the original rewrites in place)")
            pt.write_array(pt.part_path(shard.parts_dir, seq, "ids"), ids.astype(np.int64), self.durable)
            pt.write_array(pt.part_path(shard.parts_dir, seq, "hashes"), hashes.astype(np.uint64),
                           self.durable)
            if self.durable:
                fsync_dir(shard.parts_dir)
            shard.load(repair=False)  # the header line only, so far
            self._check_copied(shard, seq, files, result.copied, hashes, order, number)
            entry = {"kind": "batch", "seq": seq, "batch_id": -(int(number) + 1), "start": 0,
                     "n": n, "offset": 0, "total": n, "fingerprint": fingerprint,
                     "first": [int(number), first], "t": time.time(), "files": files,
                     "adopted": source_info if source_info is not None else True}
            mf.append_entry(shard.manifest_path, entry, self.durable)
            shard.load(repair=False)
            state = self._refresh(shard)
            result.derived_linked = sum(1 for m in order if state["files"][m].get("linked"))
            final = self.base / shard_dir_name(number)
            if final.exists():
                raise UserError(f"{final} exists (a shard folder the store did not list); "
                                f"nothing adopted")
            os.rename(shard.path, final)
            if self.durable:
                fsync_dir(self.base)
            shutil.rmtree(staging, ignore_errors=True)
            placed = Shard(self.base, number).load(repair=False)
            self.shards.append(placed)
            result.shard = placed
            if conn is not None:
                dbsync.move_pointer(conn, number, seq)
        return result

    def _check_copied(self, shard, seq, files, copied, hashes, order, number) -> None:
        """A copied part is a new file: its rows are hashed again against the checked hashes
        (a linked part is the very inode the caller checked)."""
        for m in copied:
            rows = pt.read_array(shard.parts_dir / files[m])
            j = order.index(m)
            for lo in range(0, len(rows), 50_000):
                got = pt.vector_hashes(rows[lo:lo + 50_000])
                bad = np.nonzero(got != hashes[lo:lo + 50_000, j])[0]
                if len(bad):
                    r = lo + int(bad[0])
                    shutil.rmtree(shard.path, ignore_errors=True)
                    raise BatchRejected(f"adopted shard {number} row {r} model {m}: the copy "
                                        f"hashes to {pt.hash_hex(got[bad[0]])}, expected "
                                        f"{pt.hash_hex(hashes[r, j])} (source changed while "
                                        f"adopting?); nothing adopted")


def _place_part(src: Path, dst: Path, mode: str, durable: bool) -> tuple[str, int, str]:
    """(how, bytes copied, why not linked): ``dst`` becomes a hard link of ``src`` ("auto",
    "link") or a copy ("copy", or "auto" where the file system refuses a link). The source
    is only ever opened for reading."""
    why = "adopt.link is copy"
    if mode in ("auto", "link"):
        try:
            os.link(src, dst)
            return "linked", 0, ""
        except OSError as exc:
            if mode == "link" or exc.errno not in _LINK_ERRORS:
                raise
            why = (f"{src.parent} is on another file system" if exc.errno == errno.EXDEV
                   else f"the file system refused a hard link ({os.strerror(exc.errno)})")
    with open(src, "rb") as fin, open(dst, "xb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 22)
        fout.flush()
        if durable:
            os.fsync(fout.fileno())
        return "copied", fout.tell(), why
