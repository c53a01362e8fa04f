"""The `reembed` section of the status snapshot: each re-embed started and not yet switched
on (its job file), with how many slices of the index have their new files. It reads the
job files, the shards' manifests and folder listings; the index package (numpy) is imported
only while a re-embed is in progress, so the status start-up stays light."""
from __future__ import annotations

import json
import os
from pathlib import Path

from pipeline.status.registry import status_provider

JOB_PREFIX, JOB_SUFFIX = "reembed_", ".json"


def reembed_progress(base) -> list[dict]:
    out = []
    try:
        names = sorted(os.listdir(base))
    except FileNotFoundError:
        return out
    jobs = []
    for name in names:
        if name.startswith(JOB_PREFIX) and name.endswith(JOB_SUFFIX):
            try:
                with open(os.path.join(base, name), encoding="utf-8") as fh:
                    jobs.append(json.load(fh))
            except (OSError, ValueError):
                continue
    if not jobs:
        return out
    from pipeline.index import columns as cols
    from pipeline.index import manifest as mf
    from pipeline.index.shard import list_shard_numbers, shard_dir_name

    base = Path(base)
    shards = []
    for number in list_shard_numbers(base):
        entries, _good, _torn = mf.read_manifest(base / shard_dir_name(number) / "manifest.jsonl")
        shards.append((number, [e for e in entries[1:] if e.get("kind") == "batch"]))
    committed = cols.committed_ids(base)
    for job in jobs:
        done = rows = rows_done = 0
        total = sum(len(batch) for _, batch in shards)
        for number, batch in shards:
            folder = cols.column_folder(base / shard_dir_name(number), job["model"], job["column_id"])
            try:
                present = set(os.listdir(folder))
            except FileNotFoundError:
                present = set()
            for e in batch:
                rows += e["n"]
                if all(cols.hash_file(folder, e["seq"], v).name in present for v in job["vectors"]):
                    done += 1
                    rows_done += e["n"]
        out.append({"model": job["model"], "column_id": job["column_id"],
                    "fingerprint": job["fingerprint"], "started": job["started"],
                    "slices_done": done, "slices_total": total, "rows_done": rows_done,
                    "rows_total": rows, "switched": job["column_id"] in committed})
    return out


@status_provider("reembed", order=60)
def reembed_section(root, conn, now, errors) -> list[dict]:
    """Re-embeds in progress (``imageselector reembed MODEL``); empty when none."""
    return reembed_progress(root.embeddings_dir)
