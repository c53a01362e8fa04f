"""The index store, as the rest of the program uses it (see pipeline/indexstore/).

    store = open_store(root, conn)          # recovers whatever a killed writer left
    store.import_batch(batch_id, ids, {model: (n, dim) float32, ...}, fingerprint, conn)
    store.adopt_shard(n, ids, hashes, {model: IndexFlatIP file}, fingerprint, capacity)
                                            # the original's shard, by hard link (adoption)
    problems, summary = verify(root)        # [] when every file and the DB agree
    rebuild(root)                           # re-derive FAISS files and image_index.json

Vector order and dimensions come from the shards' manifests once they exist, else from the
model registry (pipeline.models.VECTOR_ORDER / VECTOR_DIMS).
"""
from __future__ import annotations

from pipeline.indexstore.shard import Shard, list_shard_numbers  # noqa: F401
from pipeline.indexstore.store import (AdoptResult, BatchRejected,  # noqa: F401
                                       FingerprintMismatch, ImportResult, IndexStore,
                                       registry_layout)


def open_store(root, conn=None, **overrides) -> IndexStore:
    store = IndexStore.for_root(root, **overrides)
    store.open(conn)
    return store


def verify(root, conn=None, full: bool = True, registry: bool = True, **overrides):
    """(problems, summary): every file's rows and dims against the registry and
    image_index.json, vector hashes recomputed (``full``), and the DB (when ``conn``)."""
    from pipeline.indexstore.verify import verify_store

    store = IndexStore.for_root(root, **overrides)
    # Recovery of what a killed writer left (torn line, DB change, derived files behind),
    # but damage is reported, not repaired: that is `rebuild`'s job.
    store.open(conn, repair_derived=False)
    with store.locked(exclusive=False):
        return verify_store(store, conn, registry_layout() if registry else None, full)


def rebuild(root, force: bool = True, shards: list[int] | None = None, **overrides) -> list[int]:
    store = IndexStore.for_root(root, **overrides)
    return store.rebuild(force=force, shards=shards)
