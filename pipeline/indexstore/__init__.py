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
them. ``pipeline/index.py`` is the facade the rest of the program uses.
"""
