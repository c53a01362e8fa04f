"""Derived files of a shard: the FAISS index per model and image_index.json.

Both are brought up to the committed rows by appending what is missing, from the row count
and byte size recorded in derived.json after the last finished update; bytes past that
record (an update killed half-way) are cut off first. A file that is shorter than its
record, of the wrong kind, or absent is rebuilt from the parts. A full shard gets the
configured index type per model (written once, atomically); an active shard is always an
appendable IndexFlatIP.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from pipeline.core.fsutil import fsync_dir
from pipeline.index import flatfile
from pipeline.index import parts as pt
from pipeline.index.shard import Shard

FLAT = "Flat"
_TAIL = b"\n]\n"


def normalise_type(value: str | None) -> str:
    text = (value or FLAT).strip()
    return FLAT if text.lower() in ("flat", "flatip", "") else text


def image_index_row(lid: int, iid: int, global_row: int, hashes) -> str:
    return json.dumps([int(lid), int(iid), int(global_row), *[pt.hash_hex(h) for h in hashes]],
                      separators=(", ", ": "))


def _extend_image_index(shard: Shard, rec: dict | None, durable: bool, repair: bool) -> dict | None:
    path = shard.image_index_path
    total = shard.rows
    done = int(rec["rows"]) if rec else 0
    size = int(rec["size"]) if rec else 0
    try:
        actual = path.stat().st_size
    except FileNotFoundError:
        actual = -1
    if flatfile.is_shared(path):
        # never written in place while it has other names: rewritten as a new file
        if rec is not None and not repair:
            return rec
        path.unlink()
        actual, rec = -1, None
    if rec is None or actual < size or (done and size < len(_TAIL)):
        if rec is not None and not repair:
            return rec  # damaged, not merely behind: left for verify to report
        done, size = 0, 0
    if done == total and actual == size and rec is not None:
        return rec
    base = size - len(_TAIL) if done else 0
    fresh = not (path.exists() and base > 0)
    # No truncate before writing: new rows overwrite the old tail from `base`, so a kill at
    # any moment leaves the file at least as long as recorded (behind, never "damaged"),
    # and the next update rewrites from `base` again. Written from the start (a re-embedded
    # column switched on rewrites every hash), it is a new file renamed over the old one,
    # so a reader or a backup copy never sees half of it.
    target = path.with_name(f".{path.name}.tmp") if fresh else path
    with open(target, "wb" if fresh else "r+b") as fh:
        fh.seek(base)
        chunks = []
        g0 = shard.first_global_row
        for s, off in shard.slices_from(done):
            ids = shard.part(s, "ids")[off:]
            hashes = shard.part(s, "hashes")[off:]
            chunks.extend(image_index_row(lid, iid, g0 + s.start + off + i, h)
                          for i, ((lid, iid), h) in enumerate(zip(ids, hashes)))
        if done == 0:
            fh.write(b"[\n")
        elif chunks:
            fh.write(b",\n")
        fh.write(",\n".join(chunks).encode())
        fh.write(_TAIL if total else b"]\n")
        fh.truncate()
        fh.flush()
        if durable:
            os.fsync(fh.fileno())
        size = fh.tell()
    if fresh:
        os.replace(target, path)
        if durable:
            fsync_dir(path.parent)
    return {"rows": total, "size": size}


def _extend_flat(shard: Shard, model: str, rec: dict | None, durable: bool, repair: bool) -> dict:
    path = shard.faiss_path(model)
    dim = shard.dims[model]
    total = shard.rows
    done = int(rec["rows"]) if rec and rec.get("type") == FLAT else 0
    try:
        actual = path.stat().st_size
        fdim, _ = flatfile.read_header(path)
        # a file with other hard links (e.g. still the link of an adopted shard's part from
        # when it was full) is never appended to: it is replaced by a new file
        usable = fdim == dim and actual >= flatfile.file_size(dim, done) \
            and not flatfile.is_shared(path)
    except (FileNotFoundError, flatfile.NotFlat):
        usable = False
    if not usable or rec is None or rec.get("type") != FLAT:
        if rec is not None and not repair:
            return rec  # damaged, not merely behind: left for verify to report
        done = 0
        tmp = path.with_name(f".{path.name}.tmp")
        flatfile.create(tmp, dim, durable)
        os.replace(tmp, path)
    if done == total and rec is not None and actual == flatfile.file_size(dim, total):
        return rec
    if done == total:  # bytes past the record: cut them off
        flatfile.truncate_to(path, dim, total, durable)
    for s, off in shard.slices_from(done):
        done = flatfile.append_rows(path, dim, done, shard.part(s, model)[off:], durable)
    return {"rows": total, "size": flatfile.file_size(dim, total), "type": FLAT}


def _flat_part(shard: Shard, model: str) -> Path | None:
    """The one part holding all of a shard's rows of ``model`` as an IndexFlatIP file (an
    adopted shard's), else None."""
    if len(shard.slices) != 1 or shard.slices[0].n != shard.rows:
        return None
    path = shard.part_file(shard.slices[0], model)
    return path if pt.is_flat_part(path) else None


def _link_flat(shard: Shard, model: str, part: Path, rec: dict | None, durable: bool,
               repair: bool) -> dict | None:
    """A full Flat shard whose rows are one IndexFlatIP part: the derived file is a hard link
    of the part (same bytes; neither is ever written). None when linking is impossible here
    (the caller then builds a copy)."""
    path = shard.faiss_path(model)
    dim, total = shard.dims[model], shard.rows
    out = {"rows": total, "size": flatfile.file_size(dim, total), "type": FLAT, "linked": part.name}
    try:
        if os.path.samefile(path, part):
            return out
    except FileNotFoundError:
        pass
    if rec is not None and not repair:
        return rec  # damaged, not merely behind: left for verify to report
    try:
        fdim, ntotal = flatfile.read_exact_header(part)
    except (OSError, flatfile.NotFlat):
        return None  # the part is damaged: verify names it; the derived file is built from it
    if (fdim, ntotal) != (dim, total):
        return None
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(part, tmp)
    except OSError:
        return None
    os.replace(tmp, path)
    if durable:
        fsync_dir(path.parent)
    return out


def _build_final(shard: Shard, model: str, kind: str, rec: dict | None, train_rows: int,
                 durable: bool, log) -> dict:
    total = shard.rows
    path = shard.faiss_path(model)
    if rec and rec.get("type") == kind and rec.get("rows") == total and path.exists() \
            and path.stat().st_size == rec.get("size"):
        return rec
    from pipeline.index.indextypes import build_index, write_index_atomic

    if log:
        log.info("shard %s: building %s index for %s (%d rows)", shard.number, kind, model, total)
    index = build_index(kind, shard.dims[model], shard.vector_parts(model), train_rows)
    write_index_atomic(index, path, durable)
    return {"rows": total, "size": path.stat().st_size, "type": kind}


def refresh(shard: Shard, index_types: dict[str, str], train_rows: int = 100_000,
            durable: bool = True, build_final: bool = True, log=None, force: bool = False,
            repair: bool = True) -> dict:
    """Bring every derived file of ``shard`` up to its committed rows; returns the new state.
    Without ``repair`` only what a killed writer left behind is finished (rows missing at the
    end, bytes past the record); a file shorter than its record or missing stays as it is."""
    state = shard.derived_state()
    files = dict(state.get("files", {}))
    if force:
        files = {}
    columns = shard.column_ids()
    before = state.get("columns", {})
    switched = {v for v in set(columns) | set(before) if columns.get(v) != before.get(v)}
    if switched:  # a re-embedded column switched on: its files and the hashes are rebuilt
        for name in [*switched, "image_index.json"]:
            files.pop(name, None)
    for model in shard.order:
        kind = normalise_type(index_types.get(model))
        rec = files.get(model)
        if shard.full and kind != FLAT and build_final:
            files[model] = _build_final(shard, model, kind, rec, train_rows, durable, log)
        elif shard.full and rec and rec.get("type") not in (None, FLAT) and rec.get("rows") == shard.rows:
            files[model] = rec  # already written once in its final type
        else:
            part = _flat_part(shard, model) if shard.full and kind == FLAT else None
            linked = _link_flat(shard, model, part, rec, durable, repair) if part else None
            files[model] = linked or _extend_flat(shard, model, rec, durable, repair)
    files["image_index.json"] = _extend_image_index(shard, files.get("image_index.json"), durable,
                                                    repair)
    rows = {f.get("rows") for f in files.values()}
    new_state = {"rows": shard.rows if rows == {shard.rows} else min(rows), "files": files,
                 "manifest_bytes": shard.manifest_bytes}
    if columns:
        new_state["columns"] = columns
    if new_state != state:
        shard.write_derived_state(new_state, durable)
    return new_state


def is_current(shard: Shard, state: dict | None = None) -> bool:
    state = state if state is not None else shard.derived_state()
    files = state.get("files", {})
    if state.get("rows") != shard.rows or state.get("columns", {}) != shard.column_ids():
        return False
    for name in [*shard.order, "image_index.json"]:
        rec = files.get(name)
        path = shard.image_index_path if name == "image_index.json" else shard.faiss_path(name)
        if not rec or rec.get("rows") != shard.rows:
            return False
        try:
            if path.stat().st_size != rec.get("size"):
                return False
        except FileNotFoundError:
            return False
    return True


def faiss_kind(path: Path) -> str:
    try:
        flatfile.read_header(path)
        return FLAT
    except flatfile.NotFlat:
        return "other"
