"""The index store (DECISIONS.md, "Index store"): shards of aligned vector parts committed by
an append-only manifest, and the files derived from them (FAISS indexes, image_index.json).

Layout of one shard, ``data/embeddings/shard_NNNN/``::

    manifest.jsonl        append-only; line 0 describes the shard, then one line per
                          imported batch (or batch slice); every line carries a checksum
    parts/bSSSSSS.ids.npy      int64 (n, 2): listing_id, image_id
    parts/bSSSSSS.hashes.npy   uint64 (n, models): first 12 hex digits of md5 per vector
    parts/bSSSSSS.<model>.npy  float32 (n, dim), one per model, in the manifest's order
    parts/bSSSSSS.<model>.flat.faiss   instead of the .npy in a shard adopted from the
                          original system (IndexStore.adopt_shard): its IndexFlatIP file, a
                          hard link (never written); the line's "files" names it
    <model>.faiss         derived: IndexFlatIP while active (extended in place), the
                          configured type once the shard is full (written once)
    image_index.json      derived: row N -> [listing_id, image_id, global_row, h1..h7]
    derived.json          how many rows and bytes each derived file holds

The parts plus their manifest line are the durable unit; everything else is rebuilt from
them. The facade below is what the rest of the program uses:

    store = open_store(root, conn)          # recovers whatever a killed writer left
    store.import_batch(batch_id, ids, {model: (n, dim) float32, ...}, fingerprint, conn)
    store.adopt_shard(n, ids, hashes, {model: IndexFlatIP file}, fingerprint, capacity)
                                            # the original's shard, by hard link (adoption)
    problems, summary = verify(root)        # [] when every file and the DB agree
    rebuild(root)                           # re-derive FAISS files and image_index.json

Vector order and dimensions come from the shards' manifests once they exist, else from the
model registry (pipeline.models.registry.VECTOR_ORDER / VECTOR_DIMS).
"""
from __future__ import annotations

from pipeline.index.shard import Shard, list_shard_numbers  # noqa: F401
from pipeline.index.adoption import AdoptResult  # noqa: F401
from pipeline.index.errors import BatchRejected, FingerprintMismatch  # noqa: F401
from pipeline.index.store import ImportResult, IndexStore, registry_layout  # noqa: F401


def open_store(root, conn=None, **overrides) -> IndexStore:
    store = IndexStore.for_root(root, **overrides)
    store.open(conn)
    return store


def verify(root, conn=None, full: bool = True, registry: bool = True, **overrides):
    """(problems, summary): every file's rows and dims against the registry and
    image_index.json, vector hashes recomputed (``full``), and the DB (when ``conn``)."""
    from pipeline.index.verifier import verify_store

    store = IndexStore.for_root(root, **overrides)
    # Recovery of what a killed writer left (torn line, DB change, derived files behind),
    # but damage is reported, not repaired: that is `rebuild`'s job.
    store.open(conn, repair_derived=False)
    with store.locked(exclusive=False):
        return verify_store(store, conn, registry_layout() if registry else None, full)


def rebuild(root, force: bool = True, shards: list[int] | None = None, **overrides) -> list[int]:
    store = IndexStore.for_root(root, **overrides)
    return store.rebuild(force=force, shards=shards)
