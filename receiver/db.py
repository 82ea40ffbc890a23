"""The one place that opens the database, and the schema it holds."""

import os
import sqlite3
from urllib.parse import quote

import sqlite_utils

from . import views

# Schema version kept in PRAGMA user_version; bump it with each migration below.
# 3: one meaning of "reached the person" (derived rows recomputed), Vonage's records
# (VONAGE_RECORD_TABLES), the projection's position and triggers (PROJECTION).
# 4: the indexes of a column only one API fills hold the rows that have it (SCHEMA_4).
SCHEMA_VERSION = 4

TABLES = """
CREATE TABLE IF NOT EXISTS callbacks (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    api TEXT NOT NULL DEFAULT 'dispatch',
    sha256 TEXT NOT NULL UNIQUE,
    body TEXT NOT NULL,
    endpoint TEXT,
    received_at TEXT NOT NULL,
    last_received_at TEXT NOT NULL,
    delivery_count INTEGER NOT NULL DEFAULT 1,
    remote_addr TEXT,
    user_agent TEXT,
    content_type TEXT,
    signature_status TEXT NOT NULL DEFAULT 'unsigned',
    api_key TEXT,
    application_id TEXT,
    jti TEXT,
    iat INTEGER,
    clock_skew_s REAL
);
-- Each index of an event table costs a B-tree page write per callback, and each has a reader.
-- callbacks_received_at: `receiver export events` (a period), prune, the last-callback metric.
CREATE INDEX IF NOT EXISTS callbacks_received_at ON callbacks (received_at);

CREATE TABLE IF NOT EXISTS status_events (
    id INTEGER PRIMARY KEY,
    callback_id INTEGER NOT NULL REFERENCES callbacks (id),
    api TEXT NOT NULL DEFAULT 'dispatch',
    message_uuid TEXT NOT NULL,
    dispatch_uuid TEXT,
    channel TEXT,
    status TEXT NOT NULL,
    status_rank INTEGER NOT NULL,
    timestamp TEXT NOT NULL,
    to_type TEXT,
    to_id TEXT,
    to_number TEXT,
    from_type TEXT,
    from_id TEXT,
    from_number TEXT,
    error_code INTEGER,
    error_reason TEXT,
    price TEXT,
    price_nano INTEGER,
    currency TEXT,
    received_at TEXT NOT NULL,
    client_ref TEXT,
    workflow_id TEXT,
    workflow_leg INTEGER,
    workflow_legs INTEGER,
    error_type TEXT,
    error_title TEXT,
    error_detail TEXT,
    network_code TEXT,
    sms_count INTEGER
);
-- workflow: the dispatch_timeline query, the row links of a Messages workflow. message: the
-- message_history query, a message's links. dispatch: dispatch_timeline, a dispatch's links.
-- timestamp: the dashboard's counts and chart by period. callback: prune (a callback goes
-- once no event refers to it) and the foreign key.
-- A Dispatch event has a dispatch_uuid and no workflow_id, a Messages one the reverse: each of
-- those two indexes holds only the events that have its column (schema 4), and every reader
-- asks for `column = value`, which SQLite answers from such a partial index.
CREATE INDEX IF NOT EXISTS status_events_workflow ON status_events (workflow_id, timestamp)
    WHERE workflow_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS status_events_message ON status_events (message_uuid, status_rank);
CREATE INDEX IF NOT EXISTS status_events_dispatch ON status_events (dispatch_uuid, timestamp)
    WHERE dispatch_uuid IS NOT NULL;
CREATE INDEX IF NOT EXISTS status_events_timestamp ON status_events (timestamp);
CREATE INDEX IF NOT EXISTS status_events_callback ON status_events (callback_id);

CREATE TABLE IF NOT EXISTS final_reports (
    id INTEGER PRIMARY KEY,
    callback_id INTEGER NOT NULL REFERENCES callbacks (id),
    dispatch_uuid TEXT NOT NULL,
    template TEXT,
    status TEXT NOT NULL,
    timestamp TEXT NOT NULL,
    price TEXT,
    price_nano INTEGER,
    currency TEXT,
    message_count INTEGER NOT NULL DEFAULT 0,
    received_at TEXT NOT NULL
);
-- dispatch: the dispatch refresh (latest report), dispatch_timeline. timestamp: the
-- dashboard. callback: prune and the foreign key.
CREATE INDEX IF NOT EXISTS final_reports_dispatch ON final_reports (dispatch_uuid, timestamp);
CREATE INDEX IF NOT EXISTS final_reports_timestamp ON final_reports (timestamp);
CREATE INDEX IF NOT EXISTS final_reports_callback ON final_reports (callback_id);

CREATE TABLE IF NOT EXISTS final_report_messages (
    id INTEGER PRIMARY KEY,
    final_report_id INTEGER NOT NULL REFERENCES final_reports (id),
    dispatch_uuid TEXT NOT NULL,
    position INTEGER NOT NULL,
    message_uuid TEXT NOT NULL,
    channel TEXT,
    status TEXT,
    status_rank INTEGER,
    price TEXT,
    price_nano INTEGER,
    currency TEXT
);
-- message: the message_history query, a message's links. report: the projection's join,
-- prune and the foreign key. (No reader filters these rows by dispatch_uuid: schema 3 drops
-- final_report_messages_dispatch.)
CREATE INDEX IF NOT EXISTS final_report_messages_message ON final_report_messages (message_uuid);
CREATE INDEX IF NOT EXISTS final_report_messages_report ON final_report_messages (final_report_id);

CREATE TABLE IF NOT EXISTS messages (
    message_uuid TEXT PRIMARY KEY,
    dispatch_uuid TEXT,
    channel TEXT,
    workflow_position INTEGER,
    status TEXT,
    status_rank INTEGER,
    status_at TEXT,
    first_seen_at TEXT,
    last_seen_at TEXT,
    submitted_at TEXT,
    delivered_at TEXT,
    read_at TEXT,
    rejected_at TEXT,
    undeliverable_at TEXT,
    error_code INTEGER,
    error_reason TEXT,
    price TEXT,
    price_nano INTEGER,
    currency TEXT,
    price_source TEXT,
    event_count INTEGER NOT NULL DEFAULT 0,
    final_report_status TEXT,
    final_report_price TEXT,
    final_report_at TEXT,
    api TEXT NOT NULL DEFAULT 'dispatch',
    workflow_id TEXT,
    workflow_legs INTEGER,
    client_ref TEXT,
    error_type TEXT,
    error_title TEXT,
    error_detail TEXT,
    network_code TEXT,
    sms_count INTEGER
);
-- dispatch: the dispatch refresh, dispatch_timeline, the reconciliation views, a dispatch's
-- links. workflow: the Messages workflow refresh, dispatch_timeline, a workflow's legs. Each
-- holds only the messages of its API (as the status_events ones). status: the messages page
-- (its status facet, filtered by status newest first), messages_stuck_at_submitted.
CREATE INDEX IF NOT EXISTS messages_dispatch ON messages (dispatch_uuid, workflow_position)
    WHERE dispatch_uuid IS NOT NULL;
CREATE INDEX IF NOT EXISTS messages_workflow ON messages (workflow_id, workflow_position)
    WHERE workflow_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS messages_status ON messages (status, last_seen_at);

CREATE TABLE IF NOT EXISTS dispatches (
    dispatch_uuid TEXT PRIMARY KEY,
    first_seen_at TEXT,
    last_seen_at TEXT,
    final_status TEXT,
    final_timestamp TEXT,
    final_price TEXT,
    final_price_nano INTEGER,
    final_currency TEXT,
    final_report_count INTEGER NOT NULL DEFAULT 0,
    message_count INTEGER NOT NULL DEFAULT 0,
    channels TEXT,
    delivered_channel TEXT,
    messages_price TEXT,
    messages_price_nano INTEGER,
    messages_currency TEXT
);
CREATE INDEX IF NOT EXISTS dispatches_first_seen ON dispatches (first_seen_at);
CREATE INDEX IF NOT EXISTS dispatches_final_status ON dispatches (final_status);

CREATE TABLE IF NOT EXISTS workflows (
    workflow_id TEXT PRIMARY KEY,
    api TEXT NOT NULL,
    legs INTEGER NOT NULL,
    legs_seen INTEGER NOT NULL,
    channels TEXT,
    delivered_channel TEXT,
    outcome TEXT NOT NULL,
    price TEXT,
    price_nano INTEGER,
    currency TEXT,
    first_seen_at TEXT,
    last_seen_at TEXT,
    incomplete INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS workflows_first_seen ON workflows (first_seen_at);
CREATE INDEX IF NOT EXISTS workflows_outcome ON workflows (outcome, first_seen_at);

CREATE TABLE IF NOT EXISTS rejected_callbacks (
    id INTEGER PRIMARY KEY,
    received_at TEXT NOT NULL,
    endpoint TEXT,
    remote_addr TEXT,
    user_agent TEXT,
    content_type TEXT,
    authorization TEXT,
    body BLOB,
    body_bytes INTEGER NOT NULL,
    body_truncated INTEGER NOT NULL DEFAULT 0,
    sha256 TEXT,
    http_status INTEGER NOT NULL,
    reason TEXT NOT NULL,
    error TEXT NOT NULL,
    reprocessed_at TEXT,
    reprocess_result TEXT,
    callback_id INTEGER REFERENCES callbacks (id)
);
CREATE INDEX IF NOT EXISTS rejected_callbacks_received_at ON rejected_callbacks (received_at);
CREATE INDEX IF NOT EXISTS rejected_callbacks_pending ON rejected_callbacks (reprocessed_at, id);

CREATE TABLE IF NOT EXISTS projection (
    -- How far the derived rows (messages, dispatches, workflows) have been derived from the
    -- event log: the last status_events and final_reports ids merged (store.project).
    id INTEGER PRIMARY KEY CHECK (id = 1),
    status_event_id INTEGER NOT NULL,
    final_report_id INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS receiver_health (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    checked_at TEXT NOT NULL,
    pid INTEGER
);

CREATE TABLE IF NOT EXISTS prunes (
    -- Retention (receiver/prune.py): each `receiver prune` run, and in pruned_keys the keys
    -- of derived rows whose events it removed, kept as they stand (a rebuild leaves them alone).
    id INTEGER PRIMARY KEY,
    before TEXT NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    removed TEXT,
    kept TEXT
);

CREATE TABLE IF NOT EXISTS pruned_keys (
    table_name TEXT NOT NULL,
    key TEXT NOT NULL,
    PRIMARY KEY (table_name, key)
) WITHOUT ROWID;
"""

# Schema 3: Vonage's own records of what it sent and billed (Reports API), imported by
# `receiver vonage-records import|fetch` (receiver/vonage_records.py), one row per message and
# one per import. Reconciliation views join them on message_id = messages.message_uuid.
VONAGE_RECORD_TABLES = """
CREATE TABLE IF NOT EXISTS vonage_record_imports (
    id INTEGER PRIMARY KEY,
    file_name TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    source TEXT NOT NULL,
    product TEXT NOT NULL,
    account_id TEXT,
    date_start TEXT NOT NULL,
    date_end TEXT NOT NULL,
    row_count INTEGER NOT NULL,
    imported_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS vonage_record_imports_sha256 ON vonage_record_imports (sha256);
CREATE INDEX IF NOT EXISTS vonage_record_imports_range ON vonage_record_imports (date_start, date_end);

CREATE TABLE IF NOT EXISTS vonage_records (
    message_id TEXT PRIMARY KEY,
    import_id INTEGER NOT NULL REFERENCES vonage_record_imports (id),
    product TEXT NOT NULL,
    account_id TEXT,
    client_ref TEXT,
    direction TEXT,
    from_id TEXT,
    to_id TEXT,
    provider TEXT,
    channel TEXT,
    status TEXT,
    error_code TEXT,
    error_code_description TEXT,
    country TEXT,
    country_name TEXT,
    network TEXT,
    network_name TEXT,
    date_received TEXT,
    date_finalized TEXT,
    latency INTEGER,
    price TEXT,
    price_nano INTEGER,
    currency TEXT
);
CREATE INDEX IF NOT EXISTS vonage_records_date_received ON vonage_records (date_received);
"""


# Schema 3, the projection: an index no reader uses dropped;
# the projection's position row, and triggers that keep it from pointing past the end of an
# event table (`receiver prune`
# can remove the newest rows; SQLite then hands their ids out again, and the projection must
# not skip the new rows). They fire on deletes only: nothing on the write path.
PROJECTION = [
    "DROP INDEX IF EXISTS final_report_messages_dispatch",
    # A file from before schema 3 has every event derived already (inline); a new one has none.
    """INSERT OR IGNORE INTO projection (id, status_event_id, final_report_id) VALUES (1,
        (SELECT coalesce(max(id), 0) FROM status_events),
        (SELECT coalesce(max(id), 0) FROM final_reports))""",
    *(f"""CREATE TRIGGER IF NOT EXISTS projection_{table}_pruned
    AFTER DELETE ON {table}
    WHEN old.id >= (SELECT {position} FROM projection WHERE id = 1)
    BEGIN
        UPDATE projection SET {position} = (SELECT coalesce(max(id), 0) FROM {table})
        WHERE id = 1 AND {position} > (SELECT coalesce(max(id), 0) FROM {table});
    END""" for table, position in (("status_events", "status_event_id"),
                                   ("final_reports", "final_report_id"))),
]


# Schema 4: the indexes above that hold only the rows having their column (a partial index,
# `WHERE column IS NOT NULL`) replace the full ones of schema 3, dropped here first (before
# TABLES creates them again). A callback no longer writes an index entry for the column its
# API leaves empty: one B-tree page fewer per status callback in status_events, one per
# message in messages (docs/architecture.md, "Indexes and what uses each").
SCHEMA_4 = [
    "DROP INDEX IF EXISTS status_events_workflow",
    "DROP INDEX IF EXISTS status_events_dispatch",
    "DROP INDEX IF EXISTS messages_dispatch",
    "DROP INDEX IF EXISTS messages_workflow",
]


class DatabaseError(RuntimeError):
    """A database file the receiver cannot use, said in one line a user can act on."""


def connect(path, *, synchronous="FULL", busy_timeout_ms=10_000, readonly=False, create=True,
            immutable=False):
    """Open a connection to the event store at ``path``, configured for concurrent writers.

    Autocommit mode (``isolation_level=None``): callers issue ``BEGIN IMMEDIATE`` themselves
    so that a write transaction takes the write lock up front and waits on the busy timeout
    instead of failing on a lock upgrade. ``readonly`` or ``create=False`` never create the
    file. ``immutable`` (read-only too) is for a file nothing writes, such as a backup on
    read-only media: SQLite then takes no lock and creates no file beside it.
    """
    if readonly or not create or immutable:
        mode = "ro&immutable=1" if immutable else "ro" if readonly else "rw"
        conn = sqlite3.connect(
            f"file:{quote(os.path.abspath(path))}?mode={mode}", uri=True, isolation_level=None,
            check_same_thread=False,
        )
    else:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    if not (readonly or immutable):
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        # The writer's per-write SAVEPOINT spills its statement journal to a temporary file
        # once a batch passes 64 KiB; in memory: -25 % to -17 % CPU per callback stored
        # (measured in process, bench/README.md).
        conn.execute("PRAGMA temp_store = MEMORY")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def connect_settings(settings, **kwargs):
    """Open the database named by a Settings object."""
    return connect(
        settings.db_path,
        synchronous=settings.synchronous,
        busy_timeout_ms=settings.busy_timeout_ms,
        **kwargs,
    )


def open_existing(settings, *, readonly=False):
    """Open the event store named by a Settings object, which must already exist with this
    receiver's schema: never creates a file. DatabaseError (one line) otherwise."""
    path = settings.db_path
    if not os.path.isfile(path):
        raise DatabaseError(f"{path}: no such database (`receiver init-db --db {path}` creates one)")
    try:
        conn = connect_settings(settings, readonly=readonly, create=False)
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'callbacks'").fetchone()[0]
    except sqlite3.Error as error:
        raise DatabaseError(f"{path}: cannot be read as a SQLite database ({error})") from None
    try:
        _check_version(path, version)
        if not tables:
            raise DatabaseError(f"{path}: not a receiver database (no callbacks table)")
        if version < SCHEMA_VERSION:
            raise DatabaseError(f"{path} has schema version {version}, older than this receiver's "
                                f"{SCHEMA_VERSION}: run `receiver init-db --db {path}` to migrate it")
    except DatabaseError:
        conn.close()
        raise
    return conn


def _check_version(path, version):
    if version > SCHEMA_VERSION:
        raise DatabaseError(
            f"{path} has schema version {version}, newer than this receiver's "
            f"{SCHEMA_VERSION}; upgrade the receiver"
        )


# The one directory created when missing (the default var/events.db, `simulate`'s var/demo.db):
# anywhere else a missing directory is a typo, not a place for a new empty database.
DEFAULT_DIRECTORY = "var"


def check_directory(path):
    """Refuse (DatabaseError) a database ``path`` whose directory is missing, unless it is the
    default ``var/`` of the working directory, which ``init_db`` creates."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory) and directory != os.path.abspath(DEFAULT_DIRECTORY):
        raise DatabaseError(f"{path}: directory {directory} does not exist; create it first "
                            f"(only the default {DEFAULT_DIRECTORY}/ is created)")


def init_db(path, **kwargs):
    """Create or migrate the schema at ``path``; safe to run from several processes at once."""
    check_directory(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    from . import store  # store imports db

    try:
        conn = connect(path, **kwargs)
    except sqlite3.DatabaseError as error:
        raise DatabaseError(f"{path}: cannot be opened as a SQLite database ({error})") from None
    try:
        with store.transaction(conn):
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            _check_version(path, version)
            statements = [s.strip() for s in TABLES.split(";") if s.strip()]
            tables = [s for s in statements if s.startswith("CREATE TABLE")]
            for statement in tables:
                conn.execute(statement)
            _add_missing_columns(conn)  # before the indexes, which may cover new columns
            if 0 < version < 4:
                for statement in SCHEMA_4:
                    conn.execute(statement)
            for statement in statements:
                if statement not in tables:
                    conn.execute(statement)
            if 0 < version < 2:
                # Schema 2 adds `workflows`: one row for each dispatch stored before it.
                store.refresh_all_workflows(conn)
            if 0 < version < 3:
                # Schema 3: one meaning of "reached the person" for both APIs, workflows'
                # `incomplete`, a Messages error's text in error_reason: derived rows stored
                # before it are recomputed from the events (all of them: the projection
                # below starts after the last event).
                store.migrate_to_3(conn)
            _create_vonage_record_tables(conn)
            for statement in PROJECTION:
                conn.execute(statement)
            views.create_views(conn)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        return version
    finally:
        conn.close()


def _create_vonage_record_tables(conn):
    """Schema 3: the tables of Vonage's records (VONAGE_RECORD_TABLES); new, so nothing to copy."""
    for statement in VONAGE_RECORD_TABLES.split(";"):
        if statement.strip():
            conn.execute(statement)


def _add_missing_columns(conn):
    """Migrate older files: add any column the CREATE TABLE above has and the file lacks, with
    its NOT NULL and DEFAULT (existing rows read the default; no row is rewritten)."""
    db = sqlite_utils.Database(conn)
    scratch = sqlite_utils.Database(memory=True)
    scratch.executescript(TABLES)
    for table in scratch.table_names():
        existing = db[table].columns_dict
        for column in scratch[table].columns:
            if column.name not in existing:
                definition = f"[{column.name}] {column.type or ''}"
                if column.default_value is not None:
                    definition += f" DEFAULT {column.default_value}"
                    if column.notnull:
                        definition += " NOT NULL"
                conn.execute(f"ALTER TABLE [{table}] ADD COLUMN {definition}")
