"""The scratch DB of one adoption (run/adopt/scratch.db): where each image sits in the
adopted shards and tars, and which were refused. It is attached to the read-only connection
of the original DB as ``scratch``, so mapping the original's image rows is one join per
batch. Everything in it can be derived again from the adopted files; it is removed when
an adoption finishes.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS scratch.pos (
        listing_id INTEGER NOT NULL, image_id INTEGER NOT NULL,
        shard INTEGER NOT NULL, shard_row INTEGER NOT NULL, global_row INTEGER NOT NULL,
        PRIMARY KEY (listing_id, image_id)) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS scratch.dup (
        listing_id INTEGER, image_id INTEGER, shard INTEGER, shard_row INTEGER,
        global_row INTEGER PRIMARY KEY)""",
    """CREATE TABLE IF NOT EXISTS scratch.refused (
        listing_id INTEGER NOT NULL, image_id INTEGER NOT NULL, reason TEXT,
        PRIMARY KEY (listing_id, image_id)) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS scratch.tarpos (
        listing_id INTEGER NOT NULL, image_id INTEGER NOT NULL, tar_name TEXT NOT NULL,
        tar_offset INTEGER NOT NULL, tar_header INTEGER,
        PRIMARY KEY (listing_id, image_id)) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS scratch.tarbad (
        listing_id INTEGER NOT NULL, image_id INTEGER NOT NULL, tar_name TEXT, reason TEXT,
        PRIMARY KEY (listing_id, image_id)) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS scratch.rev (
        listing_id INTEGER NOT NULL, image_id INTEGER NOT NULL, tar_name TEXT,
        tar_offset INTEGER, PRIMARY KEY (listing_id, image_id)) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS scratch.done (
        item TEXT PRIMARY KEY, value TEXT)""",
]


def attach(conn: sqlite3.Connection, path: Path) -> None:
    conn.execute("ATTACH DATABASE ? AS scratch", (str(path),))
    conn.execute("PRAGMA scratch.journal_mode = WAL")
    conn.execute("PRAGMA scratch.synchronous = NORMAL")
    for sql in SCHEMA:
        conn.execute(sql)


def is_done(conn: sqlite3.Connection, item: str) -> str | None:
    row = conn.execute("SELECT value FROM scratch.done WHERE item = ?", (item,)).fetchone()
    return row[0] if row else None


def mark_done(conn: sqlite3.Connection, item: str, value: str = "1") -> None:
    conn.execute("INSERT OR REPLACE INTO scratch.done(item, value) VALUES (?, ?)", (item, value))


class Tx:
    """BEGIN IMMEDIATE ... COMMIT on the scratch connection (autocommit mode)."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self):
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.conn.execute("COMMIT")
        elif self.conn.in_transaction:
            self.conn.execute("ROLLBACK")
        return False
