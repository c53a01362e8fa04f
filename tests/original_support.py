"""A generator of small roots in the original system's format (ORIGINAL_SYSTEM.md, "The
original's files"), with the truth an adoption must reproduce, and digests of roots.

The original root holds:
- data/db/etsy_data.db (WAL): the original's tables and columns; image_status with
  download_done -1 dead, 0 pending, 1 queued (a .dl marker holds the URL), 2 downloaded
  (stays 2 through embedding), 3 tarred, 4 shard finalized (url cleared);
- data/embeddings/shard_NNNN/: seven IndexFlatIP files written by faiss and image_index.json
  rows [listing_id, image_id, global_row, h1..h7] (first 12 hex of the md5 of each float32
  vector, models in VECTOR_ORDER);
- images/imagetarred/imageall_NNNNN.tar (tar N holds global rows N x per_tar onward) and
  tar_index.json {"tars": {tar: {member: offset}}, "reverse": {"lid_iid": [tar, offset]}},
  offsets being header offsets (Python's TarInfo.offset), the original's meaning;
- images/imageprimary/imageprimary_NNNNN.tar (members {listing_id}.jpg, one listing updated
  by an append) and primary_index.json in the same shape;
- images/imageembedded/ (bg-removed, not yet tarred), images/imagedownload/ (raw, and
  .dl markers), backups/ (finalized shard copies, a DB snapshot folder).

Vectors are random unit vectors, except "twin" listings whose images are near-copies of
another listing's, so a search by listing has one right answer.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import sqlite3
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.models.registry import VECTOR_DIMS, VECTOR_ORDER

ORDER = list(VECTOR_ORDER)
DIMS = dict(VECTOR_DIMS)

ORIGINAL_SCHEMA = """
CREATE TABLE image_status (
    listing_id INTEGER NOT NULL, image_id INTEGER NOT NULL, is_primary INTEGER DEFAULT 0,
    url TEXT, download_done INTEGER DEFAULT 0, PRIMARY KEY (listing_id, image_id));
CREATE TABLE listings_static (
    listing_id INTEGER PRIMARY KEY, snapshot_timestamp REAL, shop_id INTEGER, title TEXT,
    description TEXT, creation_timestamp INTEGER, is_customizable INTEGER,
    is_personalizable INTEGER, listing_type TEXT, tags TEXT, materials TEXT,
    production_partners TEXT, processing_min INTEGER, processing_max INTEGER, who_made TEXT,
    when_made TEXT, item_weight REAL, item_weight_unit TEXT, item_length REAL,
    item_width REAL, item_height REAL, item_dimensions_unit TEXT, should_auto_renew INTEGER,
    language TEXT, taxonomy_id INTEGER, last_dynamic_ts REAL);
CREATE TABLE listings_dynamic (
    id INTEGER PRIMARY KEY AUTOINCREMENT, listing_id INTEGER, snapshot_timestamp REAL,
    state TEXT, ending_timestamp INTEGER, quantity INTEGER, num_favorers INTEGER,
    views INTEGER, price_amount INTEGER, price_divisor INTEGER, price_currency TEXT);
CREATE TABLE shops_static (
    shop_id INTEGER PRIMARY KEY, snapshot_timestamp REAL, create_date INTEGER, url TEXT,
    is_shop_us_based INTEGER, shipping_from_country_iso TEXT, shop_location_country_iso TEXT,
    last_dynamic_ts REAL, prev_review_count INTEGER, curr_review_count INTEGER);
CREATE TABLE shops_dynamic (
    id INTEGER PRIMARY KEY AUTOINCREMENT, shop_id INTEGER, snapshot_timestamp REAL,
    update_date INTEGER, listing_active_count INTEGER, accepts_custom_requests INTEGER,
    num_favorers INTEGER, transaction_sold_count INTEGER, review_average REAL,
    review_count INTEGER);
CREATE TABLE reviews (
    shop_id INTEGER, listing_id INTEGER, buyer_user_id INTEGER, rating INTEGER, review TEXT,
    language TEXT, create_timestamp INTEGER, UNIQUE (shop_id, listing_id, create_timestamp));
CREATE TABLE sync_state (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE sync_progress (
    id INTEGER PRIMARY KEY CHECK (id = 1), crawl_unit_index INTEGER, "offset" INTEGER,
    exhausted TEXT);
"""
BAND_CONFIG = {"description": "test bands",
               "taxonomies": [{"id": 967, "name": "Furniture",
                               "price_breaks": [0, 50, 100, 200, 1000000]}]}
SYNC_PROGRESS = (2, 300, [0, 1])      # crawl_unit_index, offset, exhausted


@dataclass
class Spec:
    listings: int = 90
    shard_rows: int = 100
    per_tar: int = 20
    primary_per_tar: int = 12
    embedded: int = 250          # images in the shards (global rows 0..embedded-1)
    downloaded: int = 12         # code 2, not embedded
    pending: int = 8
    queued: int = 6
    dead: int = 6
    twins: int = 3               # pairs of near-duplicate listings
    seed: int = 7
    order: list = field(default_factory=lambda: list(ORDER))
    dims: dict = field(default_factory=lambda: dict(DIMS))
    backups: bool = True
    leave_wal: bool = False
    jpeg_px: int = 32
    jpeg_pool: int = 0           # > 0: images share this many JPEGs (benchmarks at scale)


@dataclass
class Truth:
    path: Path
    spec: Spec
    images: dict           # (lid, iid) -> dict(code, url, is_primary, grow, tar, state)
    jpeg: dict             # (lid, iid) -> bytes of the image (bg-removed for embedded)
    listings: dict         # lid -> dict(title, shop_id, price)
    twins: dict            # lid -> its twin
    primary: dict          # lid -> bytes of its primary image in the primary tars
    shards: list           # rows per shard
    tars: list             # tar names

    def states(self) -> dict:
        c = Counter(v["state"] for v in self.images.values())
        return {s: c.get(s, 0) for s in ("discovered", "downloaded", "batched", "embedded",
                                         "tarred", "failed", "dead")}


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype("float32")


def short_hash(vec: np.ndarray) -> str:
    return hashlib.md5(np.ascontiguousarray(vec, dtype="<f4").tobytes()).hexdigest()[:12]


_POOL: dict = {}


def make_jpeg(seed: int, px: int, pool: int = 0) -> bytes:
    if pool:
        key = (seed % pool, px)
        if key not in _POOL:
            _POOL[key] = make_jpeg(seed % pool, px)
        return _POOL[key]
    from PIL import Image

    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (px, px, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _write_tar(path: Path, members: list[tuple[str, bytes]], mode: str = "w") -> dict[str, int]:
    """Members as Python's tarfile writes them; {member: data offset}."""
    offsets = {}
    with tarfile.open(path, mode) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_700_000_000
            tf.addfile(info, io.BytesIO(data))
    with tarfile.open(path, "r:") as tf:
        for info in tf:
            offsets[info.name] = info.offset_data
    return offsets


def header_offsets(path: Path) -> dict[str, int]:
    """{member: header offset (TarInfo.offset)}: what the original's index files hold."""
    with tarfile.open(path, "r:") as tf:
        return {info.name: info.offset for info in tf}


def build_original(path: Path, spec: Spec | None = None, **overrides) -> Truth:
    """Build an original root at ``path``; returns the truth an adoption must give."""
    import faiss

    spec = spec or Spec(**overrides)
    rng = np.random.default_rng(spec.seed)
    prng = random.Random(spec.seed)
    path = Path(path)
    (path / "data" / "db").mkdir(parents=True)
    (path / "data" / "embeddings").mkdir(parents=True)
    for d in ("imagetarred", "imageprimary", "imageembedded", "imagedownload"):
        (path / "images" / d).mkdir(parents=True)
    (path / "data" / "db" / "furniture_taxonomy_config.json").write_text(json.dumps(BAND_CONFIG))

    # ---- listings and their images, in discovery order -----------------------------------
    listings, keys = {}, []
    for i in range(spec.listings):
        lid = 1_000_000 + i * 7
        listings[lid] = {"title": f"oak table {i}", "shop_id": 500 + i % 9,
                         "price": (1000 + 37 * i, 100)}
        n_img = 2 + (i * 5) % 4
        for k in range(n_img):
            keys.append((lid, 9_000_000 + i * 10 + k))
    total = spec.embedded + spec.downloaded + spec.pending + spec.queued + spec.dead
    if total > len(keys):
        raise ValueError(f"spec needs {total} images, {len(keys)} generated")
    keys = keys[:total]
    primary_of = {}
    for lid, iid in keys:
        primary_of.setdefault(lid, iid)
    listings = {lid: v for lid, v in listings.items() if lid in primary_of}

    # ---- vectors: random, twins near-copies --------------------------------------------
    emb = keys[:spec.embedded]
    n_rows = len(emb)
    vecs = {m: unit(rng.standard_normal((n_rows, spec.dims[m])).astype("float32")) for m in spec.order}
    rows_of: dict[int, list[int]] = {}
    for g, (lid, _) in enumerate(emb):
        rows_of.setdefault(lid, []).append(g)
    emb_set = set(emb)
    full_listings = [lid for lid in rows_of if all(k in emb_set for k in keys if k[0] == lid)]
    twins = {}
    for p in range(spec.twins):
        a, b = full_listings[2 * p], full_listings[2 * p + 1]
        twins[a], twins[b] = b, a
        for j, g in enumerate(rows_of[b]):
            src = rows_of[a][j % len(rows_of[a])]
            for m in spec.order:
                noise = 0.05 * rng.standard_normal(spec.dims[m]).astype("float32") / np.sqrt(spec.dims[m])
                vecs[m][g] = unit(vecs[m][src] + noise)

    # ---- states ---------------------------------------------------------------------------
    n_shards = (n_rows + spec.shard_rows - 1) // spec.shard_rows
    full_ranges = n_rows // spec.per_tar
    tarred_rows = max(0, (full_ranges - 1) * spec.per_tar)   # the tar stage lags one range
    images, jpeg = {}, {}
    for g, key in enumerate(emb):
        shard = g // spec.shard_rows
        finalized = shard < n_shards - 1
        tarred = g < tarred_rows
        code = (4 if finalized else 3) if tarred else 2
        url = None if code == 4 else f"https://i.etsystatic.com/{key[0]}/{key[1]}/il_570xN.jpg"
        images[key] = {"code": code, "url": url, "grow": g, "tar": None,
                       "state": "tarred" if tarred else "embedded"}
        jpeg[key] = make_jpeg(key[1], spec.jpeg_px, spec.jpeg_pool)
    rest = keys[spec.embedded:]
    groups = [("downloaded", 2, spec.downloaded), ("discovered", 0, spec.pending),
              ("discovered", 1, spec.queued), ("dead", -1, spec.dead)]
    pos = 0
    for state, code, n in groups:
        for key in rest[pos:pos + n]:
            url = f"https://i.etsystatic.com/{key[0]}/{key[1]}/il_570xN.jpg"
            images[key] = {"code": code, "url": url, "grow": None, "tar": None, "state": state}
            if code == 2:
                jpeg[key] = make_jpeg(key[1] + 1, spec.jpeg_px, spec.jpeg_pool)
        pos += n
    for key, v in images.items():
        v["is_primary"] = int(primary_of[key[0]] == key[1])

    # ---- shards -----------------------------------------------------------------------------
    shards = []
    for s in range(n_shards):
        lo, hi = s * spec.shard_rows, min(n_rows, (s + 1) * spec.shard_rows)
        d = path / "data" / "embeddings" / f"shard_{s:04d}"
        d.mkdir()
        for m in spec.order:
            index = faiss.IndexFlatIP(spec.dims[m])
            index.add(vecs[m][lo:hi])
            faiss.write_index(index, str(d / f"{m}.faiss"))
        rows = [[emb[g][0], emb[g][1], g, *[short_hash(vecs[m][g]) for m in spec.order]]
                for g in range(lo, hi)]
        (d / "image_index.json").write_text(json.dumps(rows))
        shards.append(hi - lo)
        if spec.backups and hi - lo == spec.shard_rows:
            shutil.copytree(d, path / "backups" / f"shard_{s:04d}")

    # ---- all-image tars and loose files --------------------------------------------------------
    tars_dir = path / "images" / "imagetarred"
    index = {"tars": {}, "reverse": {}}
    tar_names = []
    for t in range(tarred_rows // spec.per_tar):
        name = f"imageall_{t:05d}.tar"
        members = [(f"{emb[g][0]}_{emb[g][1]}.jpg", jpeg[emb[g]])
                   for g in range(t * spec.per_tar, (t + 1) * spec.per_tar)]
        _write_tar(tars_dir / name, members)
        offsets = header_offsets(tars_dir / name)
        index["tars"][name] = offsets
        for member, off in offsets.items():
            index["reverse"][member[:-4]] = [name, off]
            lid, iid = map(int, member[:-4].split("_"))
            images[(lid, iid)]["tar"] = (name, off)
        tar_names.append(name)
    (tars_dir / "tar_index.json").write_text(json.dumps(index))
    for key, v in images.items():
        name = f"{key[0]}_{key[1]}.jpg"
        if v["code"] == 2 and v["grow"] is not None:
            (path / "images" / "imageembedded" / name).write_bytes(jpeg[key])
        elif v["code"] == 2:
            (path / "images" / "imagedownload" / name).write_bytes(jpeg[key])
        elif v["code"] == 1:
            (path / "images" / "imagedownload" / f"{key[0]}_{key[1]}.dl").write_text(v["url"])

    # ---- primary tars: listings whose primary image is tarred, one update appended ------------
    prim_dir = path / "images" / "imageprimary"
    pindex = {"tars": {}, "reverse": {}}
    prim = [lid for lid in listings if images.get((lid, primary_of[lid]), {}).get("tar")]
    primary = {}
    chunks = [prim[i:i + spec.primary_per_tar] for i in range(0, len(prim), spec.primary_per_tar)]
    for t, chunk in enumerate(chunks):
        name = f"imageprimary_{t:05d}.tar"
        _write_tar(prim_dir / name, [(f"{lid}.jpg", jpeg[(lid, primary_of[lid])]) for lid in chunk])
        offsets = header_offsets(prim_dir / name)
        pindex["tars"][name] = offsets
        for lid in chunk:
            pindex["reverse"][str(lid)] = [name, offsets[f"{lid}.jpg"]]
            primary[lid] = jpeg[(lid, primary_of[lid])]
    if chunks:   # the first listing's primary image was re-extracted: appended to the last tar
        lid = chunks[0][0]
        name = f"imageprimary_{len(chunks) - 1:05d}.tar"
        newer = make_jpeg(lid, spec.jpeg_px)
        _append_tar(prim_dir / name, f"{lid}.jpg", newer)
        with tarfile.open(prim_dir / name, "r:") as tf:
            infos = [i for i in tf if i.name == f"{lid}.jpg"]
        pindex["tars"][name][f"{lid}.jpg"] = infos[-1].offset
        pindex["reverse"][str(lid)] = [name, infos[-1].offset]
        primary[lid] = newer
    (prim_dir / "primary_index.json").write_text(json.dumps(pindex))

    # ---- the DB ------------------------------------------------------------------------------
    db = path / "data" / "db" / "etsy_data.db"
    build_db = db.with_name("building.db") if spec.leave_wal else db
    conn = sqlite3.connect(build_db)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.executescript(ORIGINAL_SCHEMA)
    with conn:
        conn.executemany("INSERT INTO image_status VALUES (?, ?, ?, ?, ?)",
                         [(k[0], k[1], v["is_primary"], v["url"], v["code"]) for k, v in images.items()])
        for i, (lid, info) in enumerate(listings.items()):
            conn.execute("INSERT INTO listings_static (listing_id, snapshot_timestamp, shop_id, title, "
                         "description, creation_timestamp, tags, materials, production_partners, "
                         "taxonomy_id, last_dynamic_ts) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                         (lid, 1.7e9 + i, info["shop_id"], info["title"], f"solid oak, {i}",
                          1_600_000_000 + i, json.dumps(["oak", "table"]), json.dumps(["oak"]),
                          json.dumps([]), 967, 1.7e9 + i))
            for snap in (0, 1):
                conn.execute("INSERT INTO listings_dynamic (listing_id, snapshot_timestamp, state, "
                             "quantity, num_favorers, views, price_amount, price_divisor, "
                             "price_currency) VALUES (?,?,?,?,?,?,?,?,?)",
                             (lid, 1.7e9 + i + snap * 86400 * 6, "active", 1, i, 10 * i,
                              info["price"][0] + snap, info["price"][1], "USD"))
        for shop in sorted({v["shop_id"] for v in listings.values()}):
            conn.execute("INSERT INTO shops_static VALUES (?,?,?,?,?,?,?,?,?,?)",
                         (shop, 1.7e9, 1_500_000_000, f"https://etsy.com/shop/s{shop}", 1, "US",
                          "US", 1.7e9, 3, 4))
            conn.execute("INSERT INTO shops_dynamic (shop_id, snapshot_timestamp, update_date, "
                         "listing_active_count, accepts_custom_requests, num_favorers, "
                         "transaction_sold_count, review_average, review_count) VALUES "
                         "(?,?,?,?,?,?,?,?,?)", (shop, 1.7e9, 1_690_000_000, 12, 1, 40, 90, 4.8, 4))
            for r in range(4):
                lid = next(iter(listings))
                conn.execute("INSERT INTO reviews VALUES (?,?,?,?,?,?,?)",
                             (shop, lid + r * 7, 77 + r, 5, f"great {r}", "en", 1_650_000_000 + r))
        conn.execute("INSERT INTO sync_state VALUES ('last_review_timestamps', ?)",
                     (json.dumps({"500": 1_650_000_003}),))
        conn.execute("INSERT INTO sync_state VALUES ('reviews_done_shops', ?)", (json.dumps([500, 501]),))
        conn.execute("INSERT INTO sync_progress VALUES (1, ?, ?, ?)",
                     (SYNC_PROGRESS[0], SYNC_PROGRESS[1], json.dumps(SYNC_PROGRESS[2])))
    if spec.leave_wal:
        # an original killed with a write in its log: copy the DB and the log while open
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        with conn:
            conn.execute("INSERT INTO sync_state VALUES ('in_the_wal', '1')")
        shutil.copyfile(build_db, db)
        shutil.copyfile(f"{build_db}-wal", f"{db}-wal")
        conn.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{build_db}{suffix}").unlink(missing_ok=True)
    else:
        conn.close()
    if spec.backups:
        snap = path / "backups" / "data_20260501_210000" / "db"
        snap.mkdir(parents=True)
        shutil.copyfile(db, snap / "etsy_data.db")
    return Truth(path, spec, images, jpeg, listings, twins, primary, shards, tar_names)


def _append_tar(path: Path, name: str, data: bytes) -> None:
    with tarfile.open(path, "a") as tf:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = 1_700_000_001
        tf.addfile(info, io.BytesIO(data))


def root_config(root_path: Path, spec: Spec, **extra) -> None:
    """The new root's imageselector.toml matching the generated original; ``extra`` keys
    are "section.key" (e.g. **{"adopt.batch_rows": 5})."""
    sections = {
        "root": {"profile": "sandbox"},
        "models": {"profile": "test"},
        "index": {"shard_rows": spec.shard_rows, "fsync": False},
        "archive": {"images_per_tar": spec.per_tar, "primary_per_tar": spec.primary_per_tar},
        "adopt": {"original_shard_rows": spec.shard_rows, "original_images_per_tar": spec.per_tar,
                  "batch_rows": 37, "tar_sample": 3, "threads": 2},
    }
    for dotted, v in extra.items():
        section, key = dotted.split(".", 1)
        sections.setdefault(section, {})[key] = v
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    root_path.mkdir(parents=True, exist_ok=True)
    (root_path / "imageselector.toml").write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------------------
# Bad inputs (each changes a built original in place)
# ---------------------------------------------------------------------------
def drop_last_row(orig: Path, shard: int, model: str) -> None:
    """One index file of a shard one row short (files disagree in row count)."""
    import faiss

    f = orig / "data" / "embeddings" / f"shard_{shard:04d}" / f"{model}.faiss"
    index = faiss.read_index(str(f))
    vecs = index.reconstruct_n(0, index.ntotal)
    new = faiss.IndexFlatIP(index.d)
    new.add(vecs[:-1])
    faiss.write_index(new, str(f))


def flip_vector(orig: Path, shard: int, row: int, model: str, dim: int) -> None:
    """Change one float of one vector in place (its hash no longer matches)."""
    f = orig / "data" / "embeddings" / f"shard_{shard:04d}" / f"{model}.faiss"
    with open(f, "r+b") as fh:
        fh.seek(45 + row * dim * 4 + 8)
        b = fh.read(4)
        fh.seek(45 + row * dim * 4 + 8)
        fh.write(bytes([b[0] ^ 0x55]) + b[1:])


def truncate_file(path: Path, keep: float = 0.5) -> None:
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.truncate(int(size * keep))


def rename_column(orig: Path, table: str, old: str, new: str) -> None:
    conn = sqlite3.connect(orig / "data" / "db" / "etsy_data.db")
    conn.execute(f"ALTER TABLE {table} RENAME COLUMN {old} TO {new}")
    conn.commit()
    conn.close()


# ---------------------------------------------------------------------------
# Digests
# ---------------------------------------------------------------------------
def tree_digest(path: Path, with_mtime: bool = True) -> dict:
    """Every file and folder under ``path``: size, sha256 (and mtime)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(path):
        rel = os.path.relpath(dirpath, path)
        out[rel + "/"] = sorted(dirnames + filenames)
        for f in filenames:
            p = Path(dirpath) / f
            st = p.stat()
            h = hashlib.sha256(p.read_bytes()).hexdigest()
            out[os.path.join(rel, f)] = (st.st_size, h, st.st_mtime_ns if with_mtime else 0)
    return out


TIME_COLUMNS = {"image_status": {"updated_at"}, "crawl_units": {"updated_at"}}


def db_dump(db_path: Path, times: bool = True) -> dict:
    """Every table's rows, sorted (time columns blanked unless ``times``)."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    out = {}
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                "AND name NOT LIKE 'sqlite_%' ORDER BY name"):
        cols = [r[1] for r in conn.execute(f'PRAGMA table_info("{name}")')]
        rows = conn.execute(f'SELECT * FROM "{name}"').fetchall()
        if not times:
            drop = [i for i, c in enumerate(cols) if c in TIME_COLUMNS.get(name, ())]
            rows = [tuple(None if i in drop else v for i, v in enumerate(r)) for r in rows]
            if name == "sync_state":
                rows = [(k, _no_times(v)) for k, v in rows]
        out[name] = sorted(rows, key=repr)
    conn.close()
    return out


def _no_times(value: str) -> str:
    try:
        v = json.loads(value)
    except (TypeError, ValueError):
        return value
    if isinstance(v, dict):
        v = {k: x for k, x in v.items() if k not in ("started_at",)}
    return json.dumps(v, sort_keys=True)


def adopted_digest(root, times: bool = True) -> dict:
    """What an adoption produced: the DB's rows and the files under data/ and images/
    (manifest lines and per-tar indexes without their creation times)."""
    out = {"db": db_dump(root.db_path, times)}
    for top in ("data/embeddings", "images"):
        base = root.path / top
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith(".adopt")]
            for f in sorted(filenames):
                if f.startswith(".") or f.endswith(".lock"):
                    continue
                p = Path(dirpath) / f
                rel = os.path.relpath(p, root.path)
                data = p.read_bytes()
                if f == "manifest.jsonl" and not times:
                    lines = [json.loads(x) for x in data.decode().splitlines()]
                    data = json.dumps([{k: v for k, v in e.items() if k not in ("t", "created", "sum")}
                                       for e in lines], sort_keys=True).encode()
                elif f.endswith(".idx.json") and not times:
                    body = json.loads(data)
                    body.pop("created", None)
                    data = json.dumps(body, sort_keys=True).encode()
                elif f == "derived.json" and not times:
                    body = json.loads(data)
                    body.pop("manifest_bytes", None)
                    data = json.dumps(body, sort_keys=True).encode()
                out[rel] = hashlib.sha256(data).hexdigest()
    return out


# ---------------------------------------------------------------------------
# The original's settings (adopt settings): .env, qps_config.json, workers, crontab, volumes
# ---------------------------------------------------------------------------
ORIGINAL_QPS = {"qps": 4, "daily_floor": 60, "slowdown_fraction": 0.9,
                "note": "the original's own keys stay in its file"}
ORIGINAL_WORKERS = [
    {"name": "iMac", "host": "localhost", "project_dir": "/Users/op/418Dreamworks/imageselector"},
    {"name": "MacBook Pro", "host": "mbp.local", "user": "embed", "ssh_key": "~/.ssh/id_ed25519",
     "project_dir": "/Users/embed/imageselector", "python": "venv/bin/python3"},
    {"name": "sleight", "host": "sleight.local", "port": 2222, "user": "embed",
     "ssh_key": "~/.ssh/id_ed25519", "os": "windows", "enabled": False,
     "project_dir": "C:\\Users\\embed\\imageselector"},
]


def write_original_settings(orig: Path, volumes: Path, password_file: Path, smtp_port: int,
                            env: dict | None = None, key: str = "testkeystring1:testsharedsecret2") -> Path:
    """The original's settings files in ``orig`` (its .env, data/db/qps_config.json,
    bin/embedding/workers.json, backups/ as a link to the backup disk) and its crontab under
    ``volumes`` (folders standing in for /Volumes/SSD500GB, HDD500GB, HDD1TB, HDD3TB, each with
    a .Spotlight-V100/ the mirrors exclude). Returns the crontab file."""
    keystring, _, secret = key.partition(":")
    values = {"ETSY_KEYSTRING": keystring, "ETSY_SHARED_SECRET": secret,
              "SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(smtp_port), "SMTP_USER": "alerts",
              "SMTP_PASSWORD_FILE": str(password_file), "ALERT_EMAIL": "op@example.net",
              "SMS_GATEWAY": "5551234567@sms.example.net", "SMTP_FROM": "pipeline@imac.local"}
    values.update(env or {})
    (orig / "data" / "db").mkdir(parents=True, exist_ok=True)
    lines = ["# the original's settings", *(f'export {k}="{v}"' for k, v in values.items() if v is not None)]
    (orig / ".env").write_text("\n".join(lines) + "\n")
    (orig / "data" / "db" / "qps_config.json").write_text(json.dumps(ORIGINAL_QPS))
    (orig / "bin" / "embedding").mkdir(parents=True, exist_ok=True)
    (orig / "bin" / "embedding" / "workers.json").write_text(json.dumps({"workers": ORIGINAL_WORKERS}))
    for vol in ("SSD500GB", "HDD500GB", "HDD1TB", "HDD3TB"):
        (volumes / vol / ".Spotlight-V100").mkdir(parents=True, exist_ok=True)
        (volumes / vol / ".Spotlight-V100" / "store.db").write_bytes(vol.encode() * 10)
    (volumes / "HDD1TB" / "backups").mkdir(exist_ok=True)
    if not (orig / "backups").exists():
        (orig / "backups").symlink_to(volumes / "HDD1TB" / "backups")
    v, o = volumes, orig
    cron = volumes.parent / "crontab.txt"
    cron.write_text("\n".join([
        "MAILTO=\"\"",
        "# m h dom mon dow command",
        f"0 21 * * 6 cd {o} && venv/bin/python3 bin/run_weekly.py >> logs/weekly.log 2>&1",
        f"0 */12 * * * cd {o} && venv/bin/python3 bin/tar_images.py && venv/bin/python3 bin/update_primary.py",
        f"15 * * * * rsync -a --delete {o}/data/db/ {v}/SSD500GB/imageselector/data/db/ >> {o}/logs/rsync.log 2>&1",
        f"30 */6 * * * cd {o} && venv/bin/python3 bin/backup_db.py",
        f"0 4 * * * rsync -a --delete --exclude '.Spotlight-V100/' {v}/HDD1TB/ {v}/HDD3TB/HDD1TB_mirror/",
        f"0 6 * * * rsync -a --delete --exclude=.Spotlight-V100/ {v}/SSD500GB/ {v}/HDD500GB/",
        "@reboot echo started",
    ]) + "\n")
    return cron
