"""The chaos bench's end checks on a root: each returns (ok, figure text). Also the
snapshot of a root that two runs of the same catalogue are compared by."""
from __future__ import annotations

import hashlib
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from pipeline.core import db
from pipeline.core.root import Root

TEMP_MARKERS = (".partial", ".tmp", ".part", ".incoming")
LATER = {"discovered": 0, "downloaded": 1, "batched": 2, "embedded": 3, "tarred": 4,
         "failed": 1, "dead": 1}


def cli(root: Path, *args, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "imageselector", "--root", str(root), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def states(root: Root) -> dict[tuple[int, int], str]:
    conn = db.open_db(root)
    try:
        return {(l, i): s for l, i, s in conn.execute("SELECT listing_id, image_id, state FROM image_status")}
    finally:
        conn.close()


def integrity(root: Root) -> tuple[bool, str]:
    conn = db.open_db(root)
    try:
        got = conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()
    return got == "ok", f"integrity_check: {got}"


def acknowledged(root: Root, acks: dict[tuple[int, int], str]) -> tuple[bool, str]:
    """Every image a stage reported done (its state after a clean exit) is still there, at
    that state or a later one."""
    now = states(root)
    lost = [k for k, s in acks.items() if k not in now or LATER[now[k]] < LATER[s]]
    return not lost, f"acknowledged writes: {len(acks)} images, {len(lost)} lost {lost[:5]}"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files_on_disk(root: Root) -> tuple[bool, str]:
    """downloaded: its raw file, hash as its row; embedded: its loose bg-removed file;
    tarred: in exactly one tar; no file without its row, no temp file anywhere."""
    from pipeline.stages.archive.tarindex import final_tars, idx_members, loose_path, read_idx

    conn = db.open_db(root)
    problems: list[str] = []
    try:
        rows = conn.execute("SELECT s.listing_id, s.image_id, s.state, i.sha256 FROM image_status s "
                            "JOIN images i USING (listing_id, image_id)").fetchall()
    finally:
        conn.close()
    in_tars: Counter = Counter()
    for name in final_tars(root.tars_dir):
        for m in idx_members(read_idx(root.tars_dir, name) or {"members": []}):
            in_tars[m.name] += 1
    raw = {p.name for p in root.download_dir.iterdir()} if root.download_dir.exists() else set()
    loose = {p.name for p in root.bgremoved_dir.iterdir()} if root.bgremoved_dir.exists() else set()
    for lid, iid, state, sha in rows:
        lp = loose_path(root, lid, iid)
        if state == "downloaded":
            hits = [p for p in root.download_dir.glob(f"{lid}_{iid}.*")]
            if len(hits) != 1 or _sha(hits[0]) != sha:
                problems.append(f"downloaded {lid}_{iid}: {len(hits)} files or hash differs")
        elif state == "embedded" and not lp.exists():
            problems.append(f"embedded {lid}_{iid}: no loose file")
        elif state == "tarred" and in_tars[lp.name] != 1:
            problems.append(f"tarred {lid}_{iid}: in {in_tars[lp.name]} tars")
    doubled = [n for n, c in in_tars.items() if c > 1]
    temps = [str(p) for p in root.path.rglob("*") if p.is_file()
             and any(m in p.name for m in TEMP_MARKERS) and "backups" not in p.parts]
    ok = not problems and not doubled and not temps
    return ok, (f"files: {len(rows)} rows, {len(raw)} raw, {len(loose)} loose, {sum(in_tars.values())} "
                f"tar members, {len(problems)} problems {problems[:3]}, {len(doubled)} doubled, "
                f"{len(temps)} temp files {temps[:3]}")


def index_verify(root: Root) -> tuple[bool, str]:
    """`index verify` plus: no (listing, image) twice, every embedded/tarred image once."""
    from pipeline.index import open_store

    proc = cli(root.path, "index", "verify")
    conn = db.open_db(root)
    try:
        store = open_store(root, conn)
        seen = [tuple(map(int, r)) for s in store.shards for r in s.ids().tolist()]
        want = {k for k, s in states(root).items() if s in ("embedded", "tarred")}
    finally:
        conn.close()
    twice = len(seen) - len(set(seen))
    missing, extra = want - set(seen), set(seen) - want
    ok = proc.returncode == 0 and not twice and not missing and not extra
    return ok, (f"index verify exit {proc.returncode}; {len(seen)} rows, {twice} twice, "
                f"{len(missing)} embedded not in index, {len(extra)} in index not embedded")


def tars_verify(root: Root) -> tuple[bool, str]:
    from pipeline.stages.archive.tarindex import final_tars, idx_members, read_idx
    from pipeline.stages.archive.tarmembers import TarError, verify_tar

    bad = []
    names = final_tars(root.tars_dir)
    for name in names:
        try:
            verify_tar(root.tars_dir / name, idx_members(read_idx(root.tars_dir, name)), sample=10_000)
        except (TarError, TypeError) as exc:
            bad.append(f"{name}: {exc}")
    conn = db.open_db(root)
    try:   # the DB's tar column agrees with the tar indexes
        by_db = Counter(r[0] for r in conn.execute("SELECT tar_name FROM image_status WHERE state='tarred'"))
    finally:
        conn.close()
    by_idx = {n: len(idx_members(read_idx(root.tars_dir, n))) for n in names}
    if dict(by_db) != by_idx:
        bad.append(f"DB tar counts {dict(by_db)} != tar indexes {by_idx}")
    return not bad, f"tars: {len(names)} verified, {len(bad)} bad {bad[:3]}"


def fingerprint(root: Root) -> dict:
    """What two runs of one catalogue must share: (listing, image) per state, the vectors by
    key and model, the tar members' names and hashes."""
    from pipeline.index import open_store
    from pipeline.stages.archive.tarindex import final_tars, idx_members, read_idx

    by_state: dict[str, set] = {}
    for k, s in states(root).items():
        by_state.setdefault(s, set()).add(k)
    vectors: dict[str, dict] = {}
    conn = db.open_db(root)
    try:
        store = open_store(root, conn)
        for shard in store.shards:
            ids = [tuple(map(int, r)) for r in shard.ids().tolist()]
            for model in shard.order:
                rows = np.concatenate([np.asarray(v) for _, v in shard.vector_parts(model)]) \
                    if shard.vector_parts(model) else np.zeros((0, 1))
                vectors.setdefault(model, {}).update(zip(ids, rows))
    finally:
        conn.close()
    # the bg-removed bytes of each image, tarred or loose: which embedded images fill the
    # next tar depends on the order they were embedded in, so tars are compared by content
    members: dict = {}
    for name in final_tars(root.tars_dir):
        for m in idx_members(read_idx(root.tars_dir, name)):
            members.setdefault(m.name, []).append(m.sha256)
    for path in root.bgremoved_dir.glob("*"):
        members.setdefault(path.name, []).append(_sha(path))
    indexed = by_state.pop("embedded", set()) | by_state.pop("tarred", set())
    by_state["embedded or tarred"] = indexed
    return {"states": by_state, "vectors": vectors, "members": members}


def same_as(a: dict, b: dict, tol: float = 1e-4) -> tuple[bool, str]:
    diffs = []
    for s in sorted(set(a["states"]) | set(b["states"])):
        x, y = a["states"].get(s, set()), b["states"].get(s, set())
        if x != y:
            diffs.append(f"{s}: {len(x - y)} only here, {len(y - x)} only in reference")
    worst = 0.0
    for model in set(a["vectors"]) | set(b["vectors"]):
        va, vb = a["vectors"].get(model, {}), b["vectors"].get(model, {})
        if set(va) != set(vb):
            diffs.append(f"{model}: vector keys differ ({len(set(va) ^ set(vb))})")
        for k in set(va) & set(vb):
            worst = max(worst, float(np.max(np.abs(va[k] - vb[k]))) if va[k].size else 0.0)
    if worst > tol:
        diffs.append(f"vectors differ by up to {worst:.2e}")
    if a["members"] != b["members"]:
        differ = [k for k in set(a["members"]) | set(b["members"]) if a["members"].get(k) != b["members"].get(k)]
        diffs.append(f"bg-removed images differ or doubled: {len(differ)} {differ[:3]}")
    n = sum(len(v) for v in a["states"].values())
    return not diffs, (f"vs fault-free run: {n} images, max vector difference {worst:.1e}, "
                       f"{len(a['members'])} bg-removed images by content; {len(diffs)} differences {diffs[:4]}")
