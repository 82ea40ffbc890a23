"""Writing to the event store: callbacks, their event rows, the derived rows, rejections.

Every function here runs inside a write transaction the caller opened (``transaction``);
the derived ``messages`` and ``dispatches`` rows are recomputed from the event log for the
keys a callback touched, so they come out the same whatever order callbacks arrive in.
"""

import hashlib
import json
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache

from . import money, rows
from .schemas import FINAL_REPORT, MESSAGE_STATUS
from .signatures import UNSIGNED


def utcnow():
    """The current time as the store writes it: UTC ISO 8601 with microseconds."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Delivery:
    """One HTTP delivery of a body: what arrived, where, from whom and when."""

    body: bytes
    endpoint: str
    received_at: str
    remote_addr: str | None = None
    user_agent: str | None = None
    content_type: str | None = None
    authorization: str | None = None

    @property
    def received_epoch(self):
        """``received_at`` as Unix seconds."""
        return datetime.strptime(self.received_at, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
            tzinfo=timezone.utc).timestamp()

    @property
    def sha256(self):
        return hashlib.sha256(self.body).hexdigest()


@dataclass(frozen=True)
class Stored:
    """What storing a callback did: its row id, and whether it had been stored before."""

    callback_id: int
    delivery_count: int
    kind: str

    @property
    def duplicate(self):
        return self.delivery_count > 1


@contextmanager
def transaction(conn):
    """A write transaction that takes the write lock up front (BEGIN IMMEDIATE)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


@lru_cache(maxsize=None)
def _insert_sql(table, columns):
    names = ", ".join(columns)
    params = ", ".join(f":{c}" for c in columns)
    return f"INSERT INTO {table} ({names}) VALUES ({params})"


def _insert(conn, table, row):
    return conn.execute(_insert_sql(table, tuple(row)), row).lastrowid


def store_callback(conn, callback, delivery, signature=UNSIGNED):
    """Store a validated callback once; a repeated delivery of the same bytes is counted.

    The signature recorded is the first delivery's.
    """
    callback_id, delivery_count = conn.execute(
        """
        INSERT INTO callbacks (kind, sha256, body, endpoint, received_at, last_received_at,
                               remote_addr, user_agent, content_type, signature_status,
                               api_key, application_id, jti, iat, clock_skew_s)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
        ON CONFLICT (sha256) DO UPDATE SET
            delivery_count = delivery_count + 1,
            last_received_at = max(last_received_at, excluded.last_received_at)
        RETURNING id, delivery_count
        """,
        (
            callback.kind, delivery.sha256, delivery.body.decode("utf-8"), delivery.endpoint,
            delivery.received_at, delivery.received_at, delivery.remote_addr,
            delivery.user_agent, delivery.content_type, signature.status, signature.api_key,
            signature.application_id, signature.jti, signature.iat, signature.clock_skew_s,
        ),
    ).fetchone()
    if delivery_count == 1:
        if callback.kind == MESSAGE_STATUS:
            _store_status(conn, callback.data, callback_id, delivery.received_at)
        elif callback.kind == FINAL_REPORT:
            _store_final_report(conn, callback.data, callback_id, delivery.received_at)
        else:  # pragma: no cover - callbacks.parse only produces the kinds above
            raise ValueError(f"unknown callback kind {callback.kind!r}")
    return Stored(callback_id, delivery_count, callback.kind)


def _store_status(conn, data, callback_id, received_at):
    row = rows.status_event_row(data)
    row.update(callback_id=callback_id, received_at=received_at)
    _insert(conn, "status_events", row)
    dispatch_uuid = refresh_message(conn, row["message_uuid"])
    if dispatch_uuid is not None:
        refresh_dispatch(conn, dispatch_uuid)


def _store_final_report(conn, data, callback_id, received_at):
    report, messages = rows.final_report_rows(data)
    report.update(callback_id=callback_id, received_at=received_at)
    report_id = _insert(conn, "final_reports", report)
    for message in messages:
        message["final_report_id"] = report_id
        _insert(conn, "final_report_messages", message)
    for message_uuid in dict.fromkeys(m["message_uuid"] for m in messages):
        refresh_message(conn, message_uuid)
    refresh_dispatch(conn, report["dispatch_uuid"])


# The latest final report's entry for a message, events ordered by rank, then time.
REFRESH_MESSAGE = f"""
INSERT OR REPLACE INTO messages (
    message_uuid, dispatch_uuid, channel, workflow_position, status, status_rank,
    first_seen_at, last_seen_at, submitted_at, delivered_at, read_at, rejected_at,
    undeliverable_at, error_code, error_reason, price, price_nano, currency, event_count,
    final_report_status, final_report_price)
WITH ev AS (SELECT * FROM status_events WHERE message_uuid = :m),
report AS (
    SELECT frm.* FROM final_report_messages frm
    JOIN final_reports r ON r.id = frm.final_report_id
    WHERE frm.message_uuid = :m ORDER BY r.timestamp DESC, r.id DESC LIMIT 1),
top AS (SELECT * FROM ev ORDER BY status_rank DESC, timestamp DESC, id DESC LIMIT 1),
priced AS (
    SELECT * FROM ev WHERE price_nano IS NOT NULL
    ORDER BY status_rank DESC, timestamp DESC, id DESC LIMIT 1),
failed AS (
    SELECT * FROM ev WHERE error_code IS NOT NULL OR error_reason IS NOT NULL
    ORDER BY status_rank DESC, timestamp DESC, id DESC LIMIT 1),
best AS (
    SELECT status, status_rank FROM top
    UNION ALL SELECT status, status_rank FROM report WHERE status_rank IS NOT NULL
    ORDER BY status_rank DESC LIMIT 1),
charge AS (
    SELECT price, price_nano, currency, 1 AS source FROM priced
    UNION ALL SELECT price, price_nano, currency, 2 FROM report WHERE price_nano IS NOT NULL
    ORDER BY source LIMIT 1)
SELECT :m,
    COALESCE((SELECT min(dispatch_uuid) FROM ev), (SELECT dispatch_uuid FROM report)),
    COALESCE((SELECT channel FROM report), (SELECT min(channel) FROM ev)),
    (SELECT position FROM report),
    (SELECT status FROM best),
    (SELECT status_rank FROM best),
    (SELECT min(timestamp) FROM ev),
    (SELECT max(timestamp) FROM ev),
    (SELECT min(timestamp) FROM ev WHERE status = 'submitted'),
    (SELECT min(timestamp) FROM ev WHERE status = 'delivered'),
    (SELECT min(timestamp) FROM ev WHERE status = 'read'),
    (SELECT min(timestamp) FROM ev WHERE status = 'rejected'),
    (SELECT min(timestamp) FROM ev WHERE status = 'undeliverable'),
    (SELECT error_code FROM failed),
    (SELECT error_reason FROM failed),
    (SELECT price FROM charge),
    (SELECT price_nano FROM charge),
    (SELECT currency FROM charge),
    (SELECT count(*) FROM ev),
    (SELECT status FROM report),
    (SELECT price FROM report)
RETURNING dispatch_uuid
"""

REFRESH_DISPATCH = f"""
INSERT OR REPLACE INTO dispatches (
    dispatch_uuid, first_seen_at, last_seen_at, final_status, final_timestamp, final_price,
    final_price_nano, final_currency, final_report_count, message_count, channels,
    delivered_channel, messages_price, messages_price_nano, messages_currency)
WITH m AS (SELECT * FROM messages WHERE dispatch_uuid = :d),
ordered AS (
    SELECT * FROM m
    ORDER BY workflow_position IS NULL, workflow_position, first_seen_at, message_uuid),
reports AS (SELECT * FROM final_reports WHERE dispatch_uuid = :d),
latest AS (SELECT * FROM reports ORDER BY timestamp DESC, id DESC LIMIT 1),
seen AS (
    SELECT first_seen_at AS first, last_seen_at AS last FROM m
    UNION ALL SELECT timestamp, timestamp FROM reports)
SELECT :d,
    (SELECT min(first) FROM seen),
    (SELECT max(last) FROM seen),
    (SELECT status FROM latest),
    (SELECT timestamp FROM latest),
    (SELECT price FROM latest),
    (SELECT price_nano FROM latest),
    (SELECT currency FROM latest),
    (SELECT count(*) FROM reports),
    (SELECT count(*) FROM m),
    (SELECT group_concat(channel, ',') FROM ordered),
    (SELECT channel FROM ordered WHERE status IN ('delivered', 'read') LIMIT 1),
    (SELECT {money.sql_format('sum(price_nano)')} FROM m),
    (SELECT sum(price_nano) FROM m),
    (SELECT group_concat(DISTINCT currency) FROM m)
"""


def refresh_message(conn, message_uuid):
    """Recompute the ``messages`` row of one message from its events; return its dispatch."""
    return conn.execute(REFRESH_MESSAGE, {"m": message_uuid}).fetchone()[0]


def refresh_dispatch(conn, dispatch_uuid):
    """Recompute the ``dispatches`` row of one dispatch from its messages and final reports."""
    conn.execute(REFRESH_DISPATCH, {"d": dispatch_uuid})


def store_rejection(conn, rejection, delivery, *, truncated=False, body_bytes=None):
    """Keep a body the receiver would not take, verbatim, with why; return its row id.

    A body that is valid UTF-8 is kept as TEXT (readable in Datasette), any other as a BLOB;
    either way the stored value is the bytes as received.
    """
    try:
        body = delivery.body.decode("utf-8")
        if "\x00" in body:
            body = delivery.body
    except UnicodeDecodeError:
        body = delivery.body
    return _insert(conn, "rejected_callbacks", {
        "received_at": delivery.received_at,
        "endpoint": delivery.endpoint,
        "remote_addr": delivery.remote_addr,
        "user_agent": delivery.user_agent,
        "content_type": delivery.content_type,
        "authorization": delivery.authorization,
        "body": body,
        "body_bytes": len(delivery.body) if body_bytes is None else body_bytes,
        "body_truncated": int(truncated),
        "sha256": delivery.sha256,
        "http_status": rejection.http_status,
        "reason": rejection.reason,
        "error": json.dumps(rejection.as_json(), ensure_ascii=False),
    })


def record_health(conn, pid):
    """Write the health-check row: proves the file is reachable and writable."""
    conn.execute(
        "INSERT OR REPLACE INTO receiver_health (id, checked_at, pid) VALUES (1, ?, ?)",
        (utcnow(), pid),
    )
