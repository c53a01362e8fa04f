"""The original system's root, read-only: where its files are, its DB schema, and a
connection to its DB that can never write (ORIGINAL_SYSTEM.md, "The original's files").

The DB is opened with SQLite's URI ``mode=ro&immutable=1`` when it has no write-ahead log
to replay: no lock, no -shm or -wal file is created, nothing in its folder changes. A DB
with a non-empty -wal (the original still running, or killed) cannot be read that way
without touching its -shm, so the DB and its -wal are copied into the new root's
run/adopt/ first (twice-checked for a stable copy) and the copy is read.
"""
from __future__ import annotations

import os
import shutil
import sqlite3
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.core.errors import UserError

# The original's tables and columns, exactly as the reference lists them. ``key`` columns
# are the ones without which a table cannot be mapped at all.
TABLES: dict[str, dict] = {
    "image_status": {
        "columns": ("listing_id", "image_id", "is_primary", "url", "download_done"),
        "key": ("listing_id", "image_id", "download_done")},
    "listings_static": {
        "columns": ("listing_id", "snapshot_timestamp", "shop_id", "title", "description",
                    "creation_timestamp", "is_customizable", "is_personalizable", "listing_type",
                    "tags", "materials", "production_partners", "processing_min", "processing_max",
                    "who_made", "when_made", "item_weight", "item_weight_unit", "item_length",
                    "item_width", "item_height", "item_dimensions_unit", "should_auto_renew",
                    "language", "taxonomy_id", "last_dynamic_ts"),
        "key": ("listing_id",)},
    "listings_dynamic": {
        "columns": ("id", "listing_id", "snapshot_timestamp", "state", "ending_timestamp",
                    "quantity", "num_favorers", "views", "price_amount", "price_divisor",
                    "price_currency"),
        "key": ("id", "listing_id", "snapshot_timestamp")},
    "shops_static": {
        "columns": ("shop_id", "snapshot_timestamp", "create_date", "url", "is_shop_us_based",
                    "shipping_from_country_iso", "shop_location_country_iso", "last_dynamic_ts",
                    "prev_review_count", "curr_review_count"),
        "key": ("shop_id",)},
    "shops_dynamic": {
        "columns": ("id", "shop_id", "snapshot_timestamp", "update_date", "listing_active_count",
                    "accepts_custom_requests", "num_favorers", "transaction_sold_count",
                    "review_average", "review_count"),
        "key": ("id", "shop_id", "snapshot_timestamp")},
    "reviews": {
        "columns": ("shop_id", "listing_id", "buyer_user_id", "rating", "review", "language",
                    "create_timestamp"),
        "key": ("shop_id", "listing_id", "create_timestamp")},
    "sync_state": {"columns": ("key", "value"), "key": ("key", "value")},
    "sync_progress": {"columns": ("id",), "key": ("id",)},
}

DB_REL = Path("data/db/etsy_data.db")
# (the reference's name, the seed's name): the original used the first, the seed the second.
TARS_DIRS = ("images/imagetarred", "images/imageall_tars")
EMBEDDED_DIRS = ("images/imageembedded", "images/imageall_new")
DOWNLOAD_DIR = "images/imagedownload"
PRIMARY_DIR = "images/imageprimary"


@dataclass
class TableCheck:
    name: str
    present: bool
    columns: list[str] = field(default_factory=list)   # columns present that we map
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    usable: bool = False
    problem: str | None = None


@dataclass
class SchemaCheck:
    tables: dict[str, TableCheck]
    extra_tables: list[str]
    problem: str | None = None        # the DB as a whole cannot be used

    def usable(self, name: str) -> bool:
        t = self.tables.get(name)
        return bool(t and t.usable)


class OriginalRoot:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).expanduser().absolute()

    # ---- layout ---------------------------------------------------------------------
    @property
    def db_path(self) -> Path:
        return self.path / DB_REL

    @property
    def embeddings_dir(self) -> Path:
        return self.path / "data" / "embeddings"

    @property
    def backups_dir(self) -> Path:
        return self.path / "backups"

    @property
    def band_config(self) -> Path:
        return self.path / "data" / "db" / "furniture_taxonomy_config.json"

    def _first_dir(self, names) -> Path:
        for rel in names:
            if (self.path / rel).is_dir():
                return self.path / rel
        return self.path / names[0]

    @property
    def tars_dir(self) -> Path:
        return self._first_dir(TARS_DIRS)

    @property
    def embedded_dir(self) -> Path:
        return self._first_dir(EMBEDDED_DIRS)

    @property
    def download_dir(self) -> Path:
        return self.path / DOWNLOAD_DIR

    @property
    def primary_dir(self) -> Path:
        return self.path / PRIMARY_DIR

    def shard_dirs(self) -> list[tuple[int, Path]]:
        out = []
        try:
            names = os.listdir(self.embeddings_dir)
        except (FileNotFoundError, NotADirectoryError):
            return out
        for name in names:
            if name.startswith("shard_") and name[6:].isdigit() and (self.embeddings_dir / name).is_dir():
                out.append((int(name[6:]), self.embeddings_dir / name))
        return sorted(out)

    def backup_shard_dir(self, number: int) -> Path:
        return self.backups_dir / f"shard_{number:04d}"

    # ---- checks ---------------------------------------------------------------------
    def check(self, target_path: Path | None = None) -> None:
        """Refuse a folder that is not an original root (one line, nothing written)."""
        p = self.path
        if not p.exists():
            raise UserError(f"original root {p} does not exist")
        if not p.is_dir():
            raise UserError(f"original root {p} is not a folder")
        if target_path is not None:
            t = Path(target_path).absolute()
            rp, rt = os.path.realpath(p), os.path.realpath(t)
            if rp == rt:
                raise UserError(f"original root {p} is the root being adopted into")
            if os.path.commonpath([rp, rt]) in (rp, rt):
                raise UserError(f"original root {p} and the new root {t} are inside each other")
        if (p / "imageselector.toml").exists() or any(
                (d / "manifest.jsonl").exists() for _, d in self.shard_dirs()):
            raise UserError(f"{p} is a root of this program, not the original system's "
                            f"(it has imageselector.toml or index manifests); nothing adopted")
        if not self.db_path.is_file():
            raise UserError(f"{p} is not an original root: {DB_REL} is missing; nothing adopted")

    def check_schema(self, conn: sqlite3.Connection | None) -> SchemaCheck:
        if conn is None:
            return SchemaCheck({}, [], "the DB could not be opened")
        try:
            names = [r[0] for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
        except sqlite3.DatabaseError as exc:
            return SchemaCheck({}, [], f"not a readable SQLite database ({exc})")
        tables = {}
        for name, spec in TABLES.items():
            if name not in names:
                tables[name] = TableCheck(name, False, problem="table missing")
                continue
            cols = [r[1] for r in conn.execute(f'PRAGMA table_info("{name}")')]
            check = TableCheck(name, True)
            check.columns = [c for c in spec["columns"] if c in cols]
            check.missing = [c for c in spec["columns"] if c not in cols]
            check.extra = [c for c in cols if c not in spec["columns"]]
            missing_key = [c for c in spec["key"] if c not in cols]
            if name == "sync_progress":
                check.columns = cols
                check.extra = []
            if missing_key:
                check.problem = f"no column {', '.join(missing_key)}"
            else:
                check.usable = True
            tables[name] = check
        problem = None
        status = tables["image_status"]
        if status.present and "state" in status.extra and "download_done" in status.missing:
            problem = "it is a DB of this program (image_status.state), not the original's"
        return SchemaCheck(tables, sorted(n for n in names if n not in TABLES), problem)

    # ---- the DB, read-only ------------------------------------------------------------
    def wal_bytes(self) -> int:
        try:
            return os.path.getsize(f"{self.db_path}-wal")
        except OSError:
            return 0

    def connect(self, copy_dir: Path) -> tuple[sqlite3.Connection, str]:
        """A read-only connection to the original DB, and how it was opened."""
        if self.wal_bytes() == 0:
            uri = f"file:{urllib.parse.quote(str(self.db_path))}?mode=ro&immutable=1"
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
            return conn, "read in place (read-only, immutable)"
        copy = self._stable_copy(copy_dir)
        uri = f"file:{urllib.parse.quote(str(copy))}?mode=ro"
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        return conn, (f"read from a copy (the original DB has an unreplayed write-ahead log of "
                      f"{self.wal_bytes():,} bytes: was the original still running?)")

    def _stable_copy(self, copy_dir: Path, tries: int = 3) -> Path:
        copy_dir.mkdir(parents=True, exist_ok=True)
        dst = copy_dir / "etsy_data.db"
        sources = [self.db_path, Path(f"{self.db_path}-wal")]

        def stamp():
            return [(s.stat().st_size, s.stat().st_mtime_ns) if s.exists() else None for s in sources]

        for _ in range(tries):
            before = stamp()
            for suffix in ("", "-wal", "-shm"):
                Path(f"{dst}{suffix}").unlink(missing_ok=True)
            shutil.copyfile(sources[0], dst)
            if sources[1].exists():
                shutil.copyfile(sources[1], f"{dst}-wal")
            if stamp() == before:
                # replay the log into our copy once, so later reads need no -shm writes
                conn = sqlite3.connect(str(dst), isolation_level=None)
                try:
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                finally:
                    conn.close()
                return dst
        raise UserError(f"{self.db_path} changed while it was being copied: the original "
                        f"system is still writing it; stop it first (its kill files), then adopt")

    def identity(self) -> dict:
        st = self.db_path.stat()
        return {"root": str(self.path), "db_size": st.st_size, "db_mtime_ns": st.st_mtime_ns}
