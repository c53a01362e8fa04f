"""The state database's schema: each entry of MIGRATIONS brings the DB from version i to i+1
(PRAGMA user_version holds the version). docs/data_structure.md explains every table;
pipeline/core/db.py applies them. Never edit a released migration: append a new one."""
from __future__ import annotations

_V1 = """
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT
);

-- Taxonomy: static description of each node, and a time series of its listing counts.
CREATE TABLE taxonomy_static (
    taxonomy_id   INTEGER PRIMARY KEY,
    parent_id     INTEGER,
    name          TEXT NOT NULL,
    level         INTEGER,
    full_path_ids TEXT,              -- JSON list of ids from the root
    is_leaf       INTEGER NOT NULL DEFAULT 0,
    fetched_at    REAL NOT NULL
);
CREATE TABLE taxonomy_dynamic (
    id                 INTEGER PRIMARY KEY,
    taxonomy_id        INTEGER NOT NULL,
    snapshot_timestamp REAL NOT NULL,
    listing_count      INTEGER
);
CREATE INDEX taxonomy_dynamic_node ON taxonomy_dynamic(taxonomy_id, snapshot_timestamp);

-- Listings: one static row, and a time series of the fields that change.
CREATE TABLE listings_static (
    listing_id            INTEGER PRIMARY KEY,
    snapshot_timestamp    REAL NOT NULL,
    shop_id               INTEGER,
    user_id               INTEGER,
    title                 TEXT,
    description           TEXT,
    url                   TEXT,
    creation_timestamp    INTEGER,
    is_customizable       INTEGER,
    is_personalizable     INTEGER,
    listing_type          TEXT,
    tags                  TEXT,      -- JSON list
    materials             TEXT,      -- JSON list
    style                 TEXT,      -- JSON list
    production_partners   TEXT,      -- JSON list
    processing_min        INTEGER,
    processing_max        INTEGER,
    who_made              TEXT,
    when_made             TEXT,
    item_weight           REAL,
    item_weight_unit      TEXT,
    item_length           REAL,
    item_width            REAL,
    item_height           REAL,
    item_dimensions_unit  TEXT,
    should_auto_renew     INTEGER,
    language              TEXT,
    taxonomy_id           INTEGER,
    last_dynamic_ts       REAL       -- time of the newest listings_dynamic row
);
CREATE INDEX listings_static_shop ON listings_static(shop_id);
CREATE INDEX listings_static_dynamic_ts ON listings_static(last_dynamic_ts);
CREATE TABLE listings_dynamic (
    id                  INTEGER PRIMARY KEY,
    listing_id          INTEGER NOT NULL,
    snapshot_timestamp  REAL NOT NULL,
    state               TEXT,
    ending_timestamp    INTEGER,
    last_modified_timestamp INTEGER,
    quantity            INTEGER,
    num_favorers        INTEGER,
    views               INTEGER,
    price_amount        INTEGER,
    price_divisor       INTEGER,
    price_currency      TEXT,
    UNIQUE (listing_id, snapshot_timestamp)
);

-- Shops: static row (with the review counts that decide a review fetch) and a time series.
CREATE TABLE shops_static (
    shop_id                   INTEGER PRIMARY KEY,
    snapshot_timestamp        REAL NOT NULL,
    shop_name                 TEXT,
    user_id                   INTEGER,
    title                     TEXT,
    create_date               INTEGER,
    url                       TEXT,
    currency_code             TEXT,
    is_shop_us_based          INTEGER,
    shipping_from_country_iso TEXT,
    shop_location_country_iso TEXT,
    last_dynamic_ts           REAL,
    last_activity_ts          REAL,  -- newest listing activity seen for this shop
    prev_review_count         INTEGER,
    curr_review_count         INTEGER
);
CREATE TABLE shops_dynamic (
    id                      INTEGER PRIMARY KEY,
    shop_id                 INTEGER NOT NULL,
    snapshot_timestamp      REAL NOT NULL,
    update_date             INTEGER,
    listing_active_count    INTEGER,
    accepts_custom_requests INTEGER,
    num_favorers            INTEGER,
    transaction_sold_count  INTEGER,
    review_average          REAL,
    review_count            INTEGER,
    UNIQUE (shop_id, snapshot_timestamp)
);
CREATE TABLE reviews (
    shop_id           INTEGER NOT NULL,
    listing_id        INTEGER NOT NULL,
    transaction_id    INTEGER,
    buyer_user_id     INTEGER,
    rating            INTEGER,
    review            TEXT,
    language          TEXT,
    create_timestamp  INTEGER NOT NULL,
    updated_timestamp INTEGER,
    UNIQUE (shop_id, listing_id, create_timestamp)
);

-- Crawl progress: one row per crawl unit (taxonomy, price band); the cursor is `next_offset`.
CREATE TABLE crawl_units (
    unit_id      INTEGER PRIMARY KEY,
    taxonomy_id  INTEGER NOT NULL,
    min_price    REAL NOT NULL,
    max_price    REAL NOT NULL,
    total_count  INTEGER,          -- Etsy's `count` for the unit at its last page
    next_offset  INTEGER NOT NULL DEFAULT 0,
    exhausted    INTEGER NOT NULL DEFAULT 0,
    split_from   INTEGER,          -- a unit over 12,000 listings is split; its parts name it
    pass_no      INTEGER NOT NULL DEFAULT 0,
    updated_at   REAL,
    UNIQUE (taxonomy_id, min_price, max_price)
);
CREATE TABLE sync_state (
    key   TEXT PRIMARY KEY,
    value TEXT                     -- JSON
);

-- Images: what Etsy says about each image (rank 1 is the primary) and what we measured.
CREATE TABLE images (
    listing_id   INTEGER NOT NULL,
    image_id     INTEGER NOT NULL,
    rank         INTEGER,
    is_primary   INTEGER NOT NULL DEFAULT 0,
    url          TEXT,               -- the URL the downloader fetches (url_570xN by default)
    url_full     TEXT,
    full_width   INTEGER,
    full_height  INTEGER,
    hex_code     TEXT,
    created_timestamp INTEGER,
    bytes        INTEGER,            -- measured after download
    width        INTEGER,
    height       INTEGER,
    sha256       TEXT,
    PRIMARY KEY (listing_id, image_id)
) WITHOUT ROWID;
CREATE INDEX images_primary ON images(listing_id) WHERE is_primary = 1;

-- Where each image is in the pipeline. One row per image; queue_counts mirrors the states.
CREATE TABLE image_status (
    listing_id  INTEGER NOT NULL,
    image_id    INTEGER NOT NULL,
    state       TEXT NOT NULL CHECK (state IN
                ('discovered','downloaded','batched','embedded','tarred','failed','dead')),
    reason      TEXT,                -- why failed / dead
    attempts    INTEGER NOT NULL DEFAULT 0,
    batch_id    INTEGER,
    shard       INTEGER,
    shard_row   INTEGER,
    global_row  INTEGER,
    tar_name    TEXT,
    tar_offset  INTEGER,
    updated_at  REAL NOT NULL,
    PRIMARY KEY (listing_id, image_id)
) WITHOUT ROWID;
CREATE INDEX image_status_state ON image_status(state, updated_at);
CREATE INDEX image_status_batch ON image_status(batch_id) WHERE batch_id IS NOT NULL;
CREATE INDEX image_status_global_row ON image_status(global_row) WHERE global_row IS NOT NULL;

CREATE TABLE queue_counts (
    state TEXT PRIMARY KEY,
    n     INTEGER NOT NULL
);
INSERT INTO queue_counts(state, n) VALUES
    ('discovered',0),('downloaded',0),('batched',0),('embedded',0),('tarred',0),('failed',0),('dead',0);
CREATE TRIGGER image_status_ins AFTER INSERT ON image_status BEGIN
    UPDATE queue_counts SET n = n + 1 WHERE state = NEW.state;
END;
CREATE TRIGGER image_status_del AFTER DELETE ON image_status BEGIN
    UPDATE queue_counts SET n = n - 1 WHERE state = OLD.state;
END;
CREATE TRIGGER image_status_upd AFTER UPDATE OF state ON image_status
WHEN OLD.state <> NEW.state BEGIN
    UPDATE queue_counts SET n = n - 1 WHERE state = OLD.state;
    UPDATE queue_counts SET n = n + 1 WHERE state = NEW.state;
END;

-- Batches sent to workers by the orchestrator: a lease per batch.
CREATE TABLE batches (
    batch_id      INTEGER PRIMARY KEY,
    worker        TEXT,
    state         TEXT NOT NULL,     -- prepared, shipped, running, returned, imported, expired, failed
    n_images      INTEGER NOT NULL,
    lease_expires REAL,
    created_at    REAL NOT NULL,
    shipped_at    REAL,
    finished_at   REAL,
    imported_at   REAL,
    shard         INTEGER,
    first_row     INTEGER,
    fingerprint   TEXT,
    error         TEXT
);
CREATE INDEX batches_state ON batches(state);

-- Every stage run: its start and its exit (a crash is recorded by the next start).
CREATE TABLE stage_runs (
    run_id     INTEGER PRIMARY KEY,
    stage      TEXT NOT NULL,
    host       TEXT NOT NULL,
    pid        INTEGER NOT NULL,
    started_at REAL NOT NULL,
    ended_at   REAL,
    exit_code  INTEGER,
    outcome    TEXT,                 -- ok, failed, stopped, crashed
    reason     TEXT,
    counters   TEXT                  -- JSON
);
CREATE INDEX stage_runs_stage ON stage_runs(stage, started_at);

-- Backups and mirrors: one row per attempt.
CREATE TABLE backups (
    backup_id   INTEGER PRIMARY KEY,
    target      TEXT NOT NULL,
    kind        TEXT NOT NULL,        -- snapshot, mirror, mirror-verify
    started_at  REAL NOT NULL,
    finished_at REAL,
    ok          INTEGER,
    verified    INTEGER NOT NULL DEFAULT 0,
    size_bytes  INTEGER,
    path        TEXT,
    error       TEXT
);
CREATE INDEX backups_target ON backups(target, started_at);

-- Alerts sent (or not) to the operator, for the console.
CREATE TABLE alerts (
    alert_id INTEGER PRIMARY KEY,
    at       REAL NOT NULL,
    kind     TEXT NOT NULL,
    text     TEXT NOT NULL,
    sent     INTEGER NOT NULL DEFAULT 0,
    error    TEXT
);
CREATE INDEX alerts_at ON alerts(at);
"""

# v2: the weekly run's steps (pipeline/stages/runner/runner.py).
_V2 = """
CREATE TABLE runner_steps (
    run_started REAL NOT NULL,       -- identifies the run
    step        TEXT NOT NULL,
    stage       TEXT NOT NULL,
    phase       INTEGER NOT NULL,
    started_at  REAL,
    ended_at    REAL,
    outcome     TEXT,                -- ok, failed, stopped, crashed, skipped, refused
    exit_code   INTEGER,
    reason      TEXT
);
CREATE INDEX runner_steps_run ON runner_steps(run_started);
"""

# v3: what the schedule ran when, and with what result (pipeline/core/schedule.py).
_V3 = """
CREATE TABLE IF NOT EXISTS schedule_runs (
    run_id      INTEGER PRIMARY KEY,
    job         TEXT NOT NULL,
    trigger     TEXT NOT NULL,          -- cron, launchd, run-due, manual
    started_at  REAL NOT NULL,
    finished_at REAL,
    exit_code   INTEGER,
    outcome     TEXT,                   -- ok, failed, busy, interrupted
    step        TEXT,
    pid         INTEGER,
    output_tail TEXT
);
CREATE INDEX IF NOT EXISTS schedule_runs_job ON schedule_runs(job, started_at);
"""

# v4: the watch job's open conditions (pipeline/watch/store.py), so separate `watch --once`
# runs alert once per condition and send one "ok again" when it clears.
_V4 = """
CREATE TABLE IF NOT EXISTS watch_conditions (
    key        TEXT PRIMARY KEY,        -- kind:thing@host, stable from run to run
    kind       TEXT NOT NULL,           -- the alert kind
    text       TEXT NOT NULL,           -- the alert as last evaluated
    opened_at  REAL NOT NULL,           -- first seen
    seen_at    REAL NOT NULL,           -- last seen by a watch run
    sent_at    REAL,                    -- its alert delivered (NULL: not yet, tried again next run)
    alert_id   INTEGER,                 -- the alerts row of that alert
    cleared_at REAL                     -- cleared, its "ok again" not delivered yet
);
"""

# v5: the original's rules (ORIGINAL_SYSTEM.md, docs/OPERATIONS.md "Parity with the original").
# image_status: a download failure is retried by a later download pass after a backoff, up to a
# cap (pipeline/stages/download/retry.py): `retry_at` is when it is due (NULL: never by itself,
# only by `requeue`), `failed_passes` how many passes in a row failed it. listings_static:
# `first_seen`, set once and never overwritten by a later sighting: rows from before v5 take
# their oldest snapshot, rows inserted without it (adoption) their snapshot time, and an older
# snapshot stored later (the original's time series, adopted) moves it back to that time.
_V5 = """
ALTER TABLE image_status ADD COLUMN retry_at REAL;
ALTER TABLE image_status ADD COLUMN failed_passes INTEGER NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS image_status_retry ON image_status(retry_at) WHERE retry_at IS NOT NULL;
ALTER TABLE listings_static ADD COLUMN first_seen REAL;
UPDATE listings_static SET first_seen = (SELECT min(t) FROM (
    SELECT nullif(listings_static.snapshot_timestamp, 0) AS t
    UNION ALL SELECT d.snapshot_timestamp FROM listings_dynamic d
    WHERE d.listing_id = listings_static.listing_id AND d.snapshot_timestamp > 0));
CREATE TRIGGER IF NOT EXISTS listings_static_first_seen AFTER INSERT ON listings_static
WHEN NEW.first_seen IS NULL BEGIN
    UPDATE listings_static SET first_seen = nullif(NEW.snapshot_timestamp, 0)
    WHERE listing_id = NEW.listing_id;
END;
CREATE TRIGGER IF NOT EXISTS listings_dynamic_first_seen AFTER INSERT ON listings_dynamic
WHEN NEW.snapshot_timestamp > 0 BEGIN
    UPDATE listings_static SET first_seen = NEW.snapshot_timestamp
    WHERE listing_id = NEW.listing_id
      AND (first_seen IS NULL OR first_seen > NEW.snapshot_timestamp);
END;
"""

# v6: the reviews rule (pipeline/stages/sync/reviews.py): when a shop's reviews were last
# read completely (or it was found gone), so a resumed pass does not ask again.
_V6 = """
ALTER TABLE shops_static ADD COLUMN reviews_checked_at REAL;
"""

MIGRATIONS: list[str] = [_V1, _V2, _V3, _V4, _V5, _V6]
SCHEMA_VERSION = len(MIGRATIONS)
