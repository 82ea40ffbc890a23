"""Retention: remove raw bodies and event rows that arrived before a date, keep derived rows.

Only the event tables named in ``EVENT_TABLES`` lose rows; every other table (``messages``,
``dispatches``, ``workflows`` and any derived table added later) is kept whole, and so is
billing, which the ``billing_lines`` view reads from ``messages`` alone.

A derived row whose events were (partly) removed can no longer be recomputed from the event
log, so its key goes into ``pruned_keys``; ``store.rebuild_derived`` keeps those rows as they
stand, and ``receiver check`` therefore compares only rows it can still recompute. Each run is
recorded in ``prunes``.

Rows go in small transactions (``BATCH_SIZE`` each, ``BEGIN IMMEDIATE``), so the receiver's
writer waits at most one batch for the lock and ingest keeps answering ``200`` meanwhile.
"""

import json
from dataclasses import dataclass, field
from datetime import date

from . import store

BATCH_SIZE = 500

# Event tables in the order rows are removed (children before the rows they reference), each
# with the SQL that picks the ids of one batch arriving before :before. A final report's
# messages go with their report; a callback goes once nothing kept refers to it.
EVENT_TABLES = {
    "final_report_messages": """
        SELECT id FROM final_report_messages WHERE final_report_id IN (
            SELECT id FROM final_reports WHERE received_at < :before) LIMIT :limit""",
    "final_reports": """
        SELECT id FROM final_reports WHERE received_at < :before
        AND NOT EXISTS (SELECT 1 FROM final_report_messages m WHERE m.final_report_id = final_reports.id)
        LIMIT :limit""",
    "status_events": "SELECT id FROM status_events WHERE received_at < :before LIMIT :limit",
    "rejected_callbacks": "SELECT id FROM rejected_callbacks WHERE received_at < :before LIMIT :limit",
    "callbacks": """
        SELECT id FROM callbacks c WHERE received_at < :before
        AND NOT EXISTS (SELECT 1 FROM status_events e WHERE e.callback_id = c.id)
        AND NOT EXISTS (SELECT 1 FROM final_reports r WHERE r.callback_id = c.id)
        AND NOT EXISTS (SELECT 1 FROM rejected_callbacks j WHERE j.callback_id = c.id)
        LIMIT :limit""",
}

# What a dry run counts: the rows the batches above would remove in all.
WOULD_REMOVE = {
    "final_report_messages": """SELECT count(*) FROM final_report_messages WHERE final_report_id IN (
        SELECT id FROM final_reports WHERE received_at < :before)""",
    "final_reports": "SELECT count(*) FROM final_reports WHERE received_at < :before",
    "status_events": "SELECT count(*) FROM status_events WHERE received_at < :before",
    "rejected_callbacks": "SELECT count(*) FROM rejected_callbacks WHERE received_at < :before",
    "callbacks": """
        SELECT count(*) FROM callbacks c WHERE received_at < :before
        AND NOT EXISTS (SELECT 1 FROM status_events e WHERE e.callback_id = c.id
                        AND e.received_at >= :before)
        AND NOT EXISTS (SELECT 1 FROM final_reports r WHERE r.callback_id = c.id
                        AND r.received_at >= :before)
        AND NOT EXISTS (SELECT 1 FROM rejected_callbacks j WHERE j.callback_id = c.id
                        AND j.received_at >= :before)""",
}

# Tables that are neither events nor derived rows (Vonage's imported records included: they
# are kept whole and never archived with the events).
BOOKKEEPING = ("receiver_health", "prunes", "pruned_keys", "vonage_record_imports", "vonage_records",
               "projection")

# Event columns that also hold a derived table's keys, besides its own key column: a Dispatch
# workflow's ``workflows`` row is keyed by its dispatch_uuid.
ALSO_KEYED_BY = {"workflows": ("dispatch_uuid",)}


def key_columns(derived, key):
    """The event columns whose values are keys of the derived table ``derived``."""
    return (key, *ALSO_KEYED_BY.get(derived, ()))


@dataclass
class PruneResult:
    """What a prune removed (or would remove) and what it kept, per table."""

    before: str
    removed: dict = field(default_factory=dict)
    kept: dict = field(default_factory=dict)
    frozen: dict = field(default_factory=dict)  # derived table -> keys recorded in pruned_keys


def tables(conn):
    return [row[0] for row in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
        "ORDER BY name")]


def derived_keys(conn):
    """{derived table: its one-column primary key}: every table that is not an event table
    nor bookkeeping, keyed by one column (messages.message_uuid, workflows.workflow_id...)."""
    keys = {}
    for table in tables(conn):
        if table in EVENT_TABLES or table in BOOKKEEPING:
            continue
        primary = [row[1] for row in conn.execute(f"PRAGMA table_info([{table}])") if row[5]]
        if len(primary) == 1:
            keys[table] = primary[0]
    return keys


def _columns(conn, table):
    return {row[1] for row in conn.execute(f"PRAGMA table_info([{table}])")}


def count(conn, before):
    """{event table: rows arriving before ``before``}: what a prune would remove."""
    params = {"before": before.isoformat()}
    return {table: conn.execute(sql, params).fetchone()[0] for table, sql in WOULD_REMOVE.items()}


def _freeze(conn, table, ids, keys):
    """Record in pruned_keys the derived rows that the event rows ``ids`` of ``table`` fed:
    any derived table whose key column the event table also has (e.g. message_uuid)."""
    columns = _columns(conn, table)
    marks = ", ".join("?" * len(ids))
    for derived, key in keys.items():
        for column in key_columns(derived, key):
            if column in columns:
                conn.execute(
                    f"INSERT OR IGNORE INTO pruned_keys (table_name, key) SELECT ?, [{column}] "
                    f"FROM [{table}] WHERE id IN ({marks}) AND [{column}] IS NOT NULL",
                    [derived, *ids],
                )


def prune(conn, before, *, batch_size=BATCH_SIZE, progress=None):
    """Remove event rows that arrived before the date ``before``, ``batch_size`` rows per
    transaction; record the run in ``prunes``. Returns a PruneResult.

    ``progress(rows)`` is called after each batch with the rows it removed.
    """
    cutoff = before.isoformat() if isinstance(before, date) else before
    keys = derived_keys(conn)
    with store.transaction(conn):
        run_id = conn.execute(
            "INSERT INTO prunes (before, started_at) VALUES (?, ?)", (cutoff, store.utcnow())
        ).lastrowid
    result = PruneResult(cutoff)
    for table, select in EVENT_TABLES.items():
        removed = 0
        while True:
            with store.transaction(conn):
                ids = [row[0] for row in conn.execute(select, {"before": cutoff, "limit": batch_size})]
                if ids:
                    _freeze(conn, table, ids, keys)
                    conn.execute(f"DELETE FROM [{table}] WHERE id IN ({', '.join('?' * len(ids))})", ids)
            removed += len(ids)
            if progress and ids:
                progress(len(ids))
            if len(ids) < batch_size:
                break
        result.removed[table] = removed
    result.kept = {table: conn.execute(f"SELECT count(*) FROM [{table}]").fetchone()[0]
                   for table in tables(conn) if table not in BOOKKEEPING}
    result.frozen = {table: conn.execute(
        "SELECT count(*) FROM pruned_keys WHERE table_name = ?", (table,)).fetchone()[0]
        for table in keys}
    with store.transaction(conn):
        conn.execute(
            "UPDATE prunes SET finished_at = ?, removed = ?, kept = ? WHERE id = ?",
            (store.utcnow(), json.dumps(result.removed), json.dumps(result.kept), run_id),
        )
    return result


def dry_run(conn, before):
    """What ``prune`` would remove and keep, changing nothing."""
    result = PruneResult(before.isoformat())
    result.removed = count(conn, before)
    result.kept = {
        table: conn.execute(f"SELECT count(*) FROM [{table}]").fetchone()[0]
        - result.removed.get(table, 0)
        for table in tables(conn) if table not in BOOKKEEPING
    }
    return result
