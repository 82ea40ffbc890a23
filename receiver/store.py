"""Writing to the event store: callbacks, their event rows, the derived rows, rejections.

Every function here runs inside a write transaction the caller opened (``transaction``);
the derived ``messages``, ``dispatches`` and ``workflows`` rows are recomputed from the event
log for the keys a callback touched, so they come out the same whatever order callbacks arrive
in.
"""

import hashlib
import json
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property, lru_cache

from . import money, rows
from .schemas import FAILED_RANKS, format_timestamp
from .signatures import UNSIGNED
from .views import reached, reached_at


def utcnow():
    """The current time as the store writes it: UTC ISO 8601 with microseconds."""
    return format_timestamp(datetime.now(timezone.utc))


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

    # Computed once per delivery (the signature check, the plan and the metrics read them).
    @cached_property
    def received_epoch(self):
        """``received_at`` as Unix seconds."""
        return datetime.fromisoformat(self.received_at).timestamp()  # 'Z' is UTC (3.11+)

    @cached_property
    def sha256(self):
        """The hex SHA-256 of the body: its key in ``callbacks``, its token's payload_hash."""
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
    """Store a validated callback once (a repeated delivery of the same bytes is counted) and
    bring the derived rows up to date: what the CLI commands that store (reprocess, simulate)
    use. The signature recorded is the first delivery's."""
    stored = store_batch(conn, [rows.plan(callback, delivery, signature)])[0]
    project(conn)
    return stored


def store_planned(conn, planned):
    """Store one callback from its plan (rows.plan, built where the request is)."""
    return store_batch(conn, [planned])[0]


INSERT_CALLBACK = f"""
INSERT INTO callbacks ({', '.join(rows.CALLBACK_COLUMNS)})
VALUES ({', '.join('?' * len(rows.CALLBACK_COLUMNS))})
ON CONFLICT (sha256) DO UPDATE SET
    delivery_count = delivery_count + 1,
    last_received_at = max(last_received_at, excluded.last_received_at)
"""
INSERT_STATUS_EVENT = _insert_sql("status_events", ("callback_id", *rows.STATUS_EVENT_COLUMNS))
# Fixed column lists: a plan arrives over the writer's socket, so its keys never name columns.
INSERT_FINAL_REPORT = _insert_sql("final_reports", (
    "callback_id", "dispatch_uuid", "template", "status", "timestamp", "price", "price_nano",
    "currency", "message_count", "received_at"))
INSERT_REPORT_ITEM = _insert_sql("final_report_messages", (
    "final_report_id", "dispatch_uuid", "position", "message_uuid", "channel", "status",
    "status_rank", "price", "price_nano", "currency"))


def store_batch(conn, plans):
    """Store a batch of planned callbacks (their bodies, delivery counts and event rows) with a
    few set-based statements; return a Stored for each, in order. A body already stored (or
    earlier in the batch) is counted, not stored again. The derived rows are not touched here:
    ``project`` derives them from the event log (the writer does, soon after)."""
    shas = list({p["sha256"] for p in plans})
    marks = ", ".join("?" * len(shas))
    counts = dict(conn.execute(
        f"SELECT sha256, delivery_count FROM callbacks WHERE sha256 IN ({marks})", shas))
    conn.executemany(INSERT_CALLBACK, [p["callback"] for p in plans])
    ids = dict(conn.execute(f"SELECT sha256, id FROM callbacks WHERE sha256 IN ({marks})", shas))
    results, events = [], []
    for planned in plans:
        sha256 = planned["sha256"]
        counts[sha256] = counts.get(sha256, 0) + 1
        results.append(Stored(ids[sha256], counts[sha256], planned["kind"]))
        if counts[sha256] > 1:
            continue
        if "event" in planned:
            events.append({**planned["event"], "callback_id": ids[sha256]})
        else:
            report = {**planned["report"], "callback_id": ids[sha256]}
            report_id = conn.execute(INSERT_FINAL_REPORT, report).lastrowid
            conn.executemany(INSERT_REPORT_ITEM, [{**item, "final_report_id": report_id}
                                                  for item in planned["items"]])
    conn.executemany(INSERT_STATUS_EVENT, events)
    return results


# --- the projection: derived rows kept from the event log -----------------------------------
#
# ``projection`` holds how far the derived rows have been derived: the last status_events id
# and final_reports id merged. ``project`` moves it forward in the same transaction as the rows
# it derives, so each event is merged exactly once, whatever crashes in between.

PROJECTION_POSITION = "SELECT status_event_id, final_report_id FROM projection WHERE id = 1"
PENDING_EVENTS = "SELECT * FROM status_events WHERE id > ? ORDER BY id"
# By the report index, in the order items were stored (``WHERE r.id > ? ORDER BY m.id`` scanned
# every item ever stored, at each projection).
PENDING_REPORT_ITEMS = """
SELECT m.message_uuid, m.dispatch_uuid, m.channel, m.position, m.status, m.status_rank,
       m.price, m.price_nano, m.currency, r.timestamp
FROM final_reports r JOIN final_report_messages m ON m.final_report_id = r.id
WHERE m.final_report_id > ? ORDER BY m.final_report_id, m.id"""
REPORT_ITEM_KEYS = ("message_uuid", "dispatch_uuid", "channel", "position", "status",
                    "status_rank", "price", "price_nano", "currency")


def project(conn):
    """Derive the ``messages``, ``dispatches`` and ``workflows`` rows of every event stored
    since the last projection, set-based (each touched parent refreshed once), and move the
    position; returns how many events (status events and final reports) it took. Runs inside
    the caller's write transaction."""
    event_pos, report_pos = conn.execute(PROJECTION_POSITION).fetchone()
    cursor = conn.execute(PENDING_EVENTS, (event_pos,))
    columns = [c[0] for c in cursor.description]
    observations, last_event = [], event_pos
    for values in cursor:
        event = dict(zip(columns, values))
        observations.append(rows.message_from_status(event))
        last_event = event["id"]
    events = len(observations)
    for *values, timestamp in conn.execute(PENDING_REPORT_ITEMS, (report_pos,)):
        observations.append(rows.message_from_report_item(dict(zip(REPORT_ITEM_KEYS, values)),
                                                          {"timestamp": timestamp}))
    reports = conn.execute("SELECT id, dispatch_uuid FROM final_reports WHERE id > ?",
                           (report_pos,)).fetchall()
    if not observations and not reports:
        return 0
    conn.executemany(MERGE_MESSAGE, observations)
    dispatches = {dispatch_uuid for _, dispatch_uuid in reports}
    touched = list({o["message_uuid"] for o in observations})
    workflows = set()
    for start in range(0, len(touched), 500):
        chunk = touched[start:start + 500]
        for dispatch_uuid, workflow_id in conn.execute(
                "SELECT dispatch_uuid, workflow_id FROM messages WHERE message_uuid IN "
                f"({', '.join('?' * len(chunk))})", chunk):
            if dispatch_uuid is not None:
                dispatches.add(dispatch_uuid)
            elif workflow_id is not None:
                workflows.add(workflow_id)
    for dispatch_uuid in dispatches:
        refresh_dispatch(conn, dispatch_uuid)
    for workflow_id in workflows:
        refresh_messages_workflow(conn, workflow_id)
    last_report = max((report_id for report_id, _ in reports), default=report_pos)
    conn.execute("UPDATE projection SET status_event_id = ?, final_report_id = ? WHERE id = 1",
                 (last_event, last_report))
    return events + len(reports)


def _mark_all_projected(conn):
    """Every stored event counts as projected (after a rebuild derived them all)."""
    conn.execute(
        "UPDATE projection SET status_event_id = (SELECT coalesce(max(id), 0) FROM status_events),"
        " final_report_id = (SELECT coalesce(max(id), 0) FROM final_reports) WHERE id = 1")


def projection_behind(conn):
    """(events not yet projected, seconds since the oldest of them arrived; 0 when none)."""
    event_pos, report_pos = conn.execute(PROJECTION_POSITION).fetchone()
    events, oldest_event = conn.execute(
        "SELECT count(*), min(received_at) FROM status_events WHERE id > ?", (event_pos,)).fetchone()
    reports, oldest_report = conn.execute(
        "SELECT count(*), min(received_at) FROM final_reports WHERE id > ?", (report_pos,)).fetchone()
    oldest = min(filter(None, (oldest_event, oldest_report)), default=None)
    if oldest is None:
        return 0, 0.0
    age = datetime.now(timezone.utc) - datetime.fromisoformat(oldest)
    return events + reports, max(age.total_seconds(), 0.0)


def _first(column):
    return f"coalesce(min({column}, excluded.{column}), {column}, excluded.{column})"


def _last(column):
    return f"coalesce(max({column}, excluded.{column}), {column}, excluded.{column})"


def _when(condition, columns):
    return [f"{c} = CASE WHEN {condition} THEN excluded.{c} ELSE {c} END" for c in columns]


# Each observation of a message (a status event, or its entry in a final report) is merged
# into its row with rules that give the same row whatever order observations arrive in:
# - status: the highest rank wins, on a tie the earliest time (a final report's entry has no
#   time of its own and loses ties); its time and error travel with it;
# - price: a status callback's price wins over a final report's, then the higher amount;
# - final_report_*: the latest final report's entry;
# - times: earliest first, latest last; dispatch_uuid and channel: the smallest seen.
STATUS_WINS = (
    "(excluded.status_rank > coalesce(status_rank, 0) OR (excluded.status_rank = status_rank"
    " AND coalesce(excluded.status_at, '~') < coalesce(status_at, '~')))"
)
PRICE_WINS = (
    "(excluded.price_nano IS NOT NULL AND (price_nano IS NULL"
    " OR excluded.price_source > price_source"  # 'status' > 'final_report'
    " OR (excluded.price_source = price_source AND excluded.price_nano > price_nano)))"
)
REPORT_WINS = "(excluded.final_report_at > coalesce(final_report_at, ''))"
STATUS_TIMES = ("submitted_at", "delivered_at", "read_at", "rejected_at", "undeliverable_at")
# The error of a message travels with the status that wins.
ERROR_COLUMNS = ("error_code", "error_reason", "error_type", "error_title", "error_detail")
MERGE_MESSAGE = (
    f"INSERT INTO messages ({', '.join(rows.MESSAGE_FIELDS)}) "
    f"VALUES ({', '.join(':' + c for c in rows.MESSAGE_FIELDS)}) "
    "ON CONFLICT (message_uuid) DO UPDATE SET "
    + ", ".join([
        *(f"{c} = {_first(c)}" for c in ("dispatch_uuid", "channel", "api", "workflow_id",
                                          "client_ref", "network_code")),
        f"first_seen_at = {_first('first_seen_at')}",
        f"last_seen_at = {_last('last_seen_at')}",
        *(f"{c} = {_first(c)}" for c in STATUS_TIMES),
        *(f"{c} = {_last(c)}" for c in ("workflow_legs", "sms_count")),
        "event_count = event_count + excluded.event_count",
        # A Messages leg's position comes with each of its statuses, a Dispatch message's
        # with the final report (the latest report's wins).
        f"workflow_position = CASE WHEN {REPORT_WINS} THEN excluded.workflow_position"
        f" ELSE {_first('workflow_position')} END",
        *_when(REPORT_WINS, ("final_report_status", "final_report_price", "final_report_at")),
        *_when(STATUS_WINS, ("status", "status_rank", "status_at", *ERROR_COLUMNS)),
        *_when(PRICE_WINS, ("price", "price_nano", "currency", "price_source")),
    ])
)


def _merge_message(conn, observation):
    """Merge one observation into its ``messages`` row."""
    conn.execute(MERGE_MESSAGE, observation)


# The columns of each refreshed table, its key first, in the order its refresh SELECTs them.
REFRESHED_COLUMNS = {
    "dispatches": (
        "dispatch_uuid", "first_seen_at", "last_seen_at", "final_status", "final_timestamp",
        "final_price", "final_price_nano", "final_currency", "final_report_count",
        "message_count", "channels", "delivered_channel", "messages_price",
        "messages_price_nano", "messages_currency"),
    "workflows": (
        "workflow_id", "api", "legs", "legs_seen", "channels", "delivered_channel", "outcome",
        "price", "price_nano", "currency", "first_seen_at", "last_seen_at", "incomplete"),
}

# A dispatch's row, recomputed from its (few) messages rows and final reports.
REFRESH_DISPATCH = f"""
WITH m AS MATERIALIZED (
    SELECT channel, first_seen_at, last_seen_at, price_nano, currency,
           {reached()} AS reached, {reached_at()} AS reached_at, workflow_position
    FROM messages WHERE dispatch_uuid = :d
    ORDER BY workflow_position IS NULL, workflow_position, first_seen_at, message_uuid),
latest AS (
    SELECT status, timestamp, price, price_nano, currency, count(*) OVER () AS reports,
           min(timestamp) OVER () AS first_report
    FROM final_reports WHERE dispatch_uuid = :d ORDER BY timestamp DESC, id DESC LIMIT 1),
totals AS (
    SELECT min(first_seen_at) AS first, max(last_seen_at) AS last, count(*) AS n,
           group_concat(channel, ',') AS channels,
           -- amounts in different currencies are not added up
           CASE WHEN count(DISTINCT currency) <= 1 THEN sum(price_nano) END AS price_nano,
           group_concat(DISTINCT currency) AS currencies
    FROM m)
SELECT :d,
    coalesce(min(totals.first, latest.first_report), totals.first, latest.first_report),
    coalesce(max(totals.last, latest.timestamp), totals.last, latest.timestamp),
    latest.status, latest.timestamp, latest.price, latest.price_nano, latest.currency,
    coalesce(latest.reports, 0), totals.n, totals.channels,
    (SELECT channel FROM m WHERE reached
     ORDER BY reached_at IS NULL, reached_at, workflow_position LIMIT 1),
    {money.sql_format('totals.price_nano')}, totals.price_nano, totals.currencies
FROM totals LEFT JOIN latest
"""


# Both APIs' workflows follow one rule: delivered once a leg reached the person
# (views.reached()), failed when the last leg failed, else pending; incomplete when a leg below
# the highest leg seen was never heard of (SQL over the workflow's messages rows ``m``).
INCOMPLETE = "coalesce(max(m.workflow_position) > count(DISTINCT m.workflow_position), 0)"

# A Dispatch workflow's ``workflows`` row, from its ``dispatches`` row: delivered also when the
# final report says completed (the condition was met), failed also when it says error; the
# last leg is the final report's last.
REFRESH_DISPATCH_WORKFLOW = f"""
SELECT d.dispatch_uuid, 'dispatch', max(d.message_count, coalesce(r.message_count, 0)),
    d.message_count, d.channels, d.delivered_channel,
    CASE
        WHEN d.delivered_channel IS NOT NULL OR d.final_status = 'completed' THEN 'delivered'
        WHEN d.final_status = 'error' OR EXISTS (
            SELECT 1 FROM messages m WHERE m.dispatch_uuid = d.dispatch_uuid
            AND m.workflow_position = r.message_count AND m.status_rank IN {FAILED_RANKS})
        THEN 'failed'
        ELSE 'pending'
    END,
    d.messages_price, d.messages_price_nano, d.messages_currency, d.first_seen_at,
    d.last_seen_at,
    (SELECT {INCOMPLETE} FROM messages m WHERE m.dispatch_uuid = d.dispatch_uuid)
FROM dispatches d
LEFT JOIN (SELECT message_count FROM final_reports WHERE dispatch_uuid = :d
           ORDER BY timestamp DESC, id DESC LIMIT 1) r
WHERE d.dispatch_uuid = :d
"""

# A Messages failover workflow's row, from its legs (there is no final report): legs in leg
# order; the last leg is items_total. Amounts in different currencies are not added up.
REFRESH_MESSAGES_WORKFLOW = f"""
WITH m AS MATERIALIZED (
    SELECT channel, status_rank, workflow_position, workflow_legs, first_seen_at, last_seen_at,
           price_nano, currency, {reached_at()} AS reached_at, {reached()} AS reached
    FROM messages WHERE workflow_id = :w
    ORDER BY workflow_position IS NULL, workflow_position, first_seen_at, message_uuid),
totals AS (
    SELECT count(*) AS n, max(workflow_legs) AS total, group_concat(channel, ',') AS channels,
           min(first_seen_at) AS first, max(last_seen_at) AS last,
           CASE WHEN count(DISTINCT currency) <= 1 THEN sum(price_nano) END AS price_nano,
           group_concat(DISTINCT currency) AS currencies, {INCOMPLETE} AS incomplete
    FROM m)
SELECT :w, 'messages', max(n, coalesce(total, 0)), n, channels,
    (SELECT channel FROM m WHERE reached
     ORDER BY reached_at IS NULL, reached_at, workflow_position LIMIT 1),
    CASE
        WHEN EXISTS (SELECT 1 FROM m WHERE reached) THEN 'delivered'
        WHEN EXISTS (SELECT 1 FROM m WHERE workflow_position = totals.total
                     AND status_rank IN {FAILED_RANKS}) THEN 'failed'
        ELSE 'pending'
    END,
    {money.sql_format('price_nano')}, price_nano, currencies, first, last, incomplete
FROM totals
"""


@lru_cache(maxsize=None)
def _upsert(table, select):
    """SQL that writes the row ``select`` recomputes into ``table`` only where it differs from
    the stored one: inserted when new, updated in place when changed, left alone when equal
    (INSERT OR REPLACE deleted and re-inserted every refreshed row and all its index entries;
    an UPDATE rewrites the row and the index entries of each column it sets, equal or not)."""
    columns = REFRESHED_COLUMNS[table]
    key, *rest = columns
    return (f"INSERT INTO {table} ({', '.join(columns)}) SELECT * FROM ({select}) WHERE true "
            f"ON CONFLICT ({key}) DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in rest)} "
            f"WHERE ({', '.join(rest)}) IS NOT ({', '.join(f'excluded.{c}' for c in rest)})")


def _refresh(conn, table, select, key, value):
    """Recompute one row of ``table`` with ``select`` (``:key`` = ``value``), written if changed."""
    conn.execute(_upsert(table, select), {key: value})


def refresh_dispatch(conn, dispatch_uuid):
    """Recompute the ``dispatches`` row of one dispatch from its messages and final reports,
    and its ``workflows`` row from that."""
    _refresh(conn, "dispatches", REFRESH_DISPATCH, "d", dispatch_uuid)
    _refresh(conn, "workflows", REFRESH_DISPATCH_WORKFLOW, "d", dispatch_uuid)


def refresh_messages_workflow(conn, workflow_id):
    """Recompute the ``workflows`` row of one Messages failover workflow from its legs."""
    _refresh(conn, "workflows", REFRESH_MESSAGES_WORKFLOW, "w", workflow_id)


def refresh_all_workflows(conn):
    """Recompute every ``workflows`` row (a rebuild, or the migration that adds the table)."""
    for (dispatch_uuid,) in conn.execute(
        f"SELECT dispatch_uuid FROM dispatches WHERE dispatch_uuid NOT IN {_pruned('workflows')}"
    ).fetchall():
        _refresh(conn, "workflows", REFRESH_DISPATCH_WORKFLOW, "d", dispatch_uuid)
    workflow_ids = conn.execute(
        "SELECT DISTINCT workflow_id FROM messages WHERE workflow_id IS NOT NULL "
        f"AND dispatch_uuid IS NULL AND workflow_id NOT IN {_pruned('workflows')}").fetchall()
    for (workflow_id,) in workflow_ids:
        refresh_messages_workflow(conn, workflow_id)


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


def _pruned(table):
    """SQL for the keys of ``table`` whose events `receiver prune` removed (receiver/prune.py):
    their rows cannot be recomputed from what is left, so a rebuild keeps them as they stand."""
    return f"(SELECT key FROM pruned_keys WHERE table_name = '{table}')"


def rebuild_derived(conn):
    """Recompute every derived row (``messages``, ``dispatches``, ``workflows``) from the event
    log, except rows whose events were pruned (kept as they stand).

    Runs inside the caller's transaction; the merge rules are order-independent, so replaying
    events in id order gives the rows that any arrival order would have.
    """
    conn.execute(f"DELETE FROM messages WHERE message_uuid NOT IN {_pruned('messages')}")
    conn.execute(f"DELETE FROM dispatches WHERE dispatch_uuid NOT IN {_pruned('dispatches')}")
    conn.execute(f"DELETE FROM workflows WHERE workflow_id NOT IN {_pruned('workflows')}")
    columns = [c[1] for c in conn.execute("PRAGMA table_info(status_events)")]
    for values in conn.execute(
        f"SELECT * FROM status_events WHERE message_uuid NOT IN {_pruned('messages')} ORDER BY id"
    ).fetchall():
        _merge_message(conn, rows.message_from_status(dict(zip(columns, values))))
    items = conn.execute(
        """SELECT m.message_uuid, m.dispatch_uuid, m.channel, m.position, m.status,
                  m.status_rank, m.price, m.price_nano, m.currency, r.timestamp
           FROM final_report_messages m JOIN final_reports r ON r.id = m.final_report_id
           WHERE m.message_uuid NOT IN """ + _pruned("messages") + """
           ORDER BY m.id"""
    ).fetchall()
    keys = ("message_uuid", "dispatch_uuid", "channel", "position", "status", "status_rank",
            "price", "price_nano", "currency")
    for *values, report_timestamp in items:
        _merge_message(conn, rows.message_from_report_item(dict(zip(keys, values)),
                                                           {"timestamp": report_timestamp}))
    dispatch_uuids = conn.execute(
        "SELECT dispatch_uuid FROM messages WHERE dispatch_uuid IS NOT NULL "
        "UNION SELECT dispatch_uuid FROM final_reports "
        f"EXCEPT SELECT key FROM {_pruned('dispatches')}"
    ).fetchall()
    for (dispatch_uuid,) in dispatch_uuids:
        _refresh(conn, "dispatches", REFRESH_DISPATCH, "d", dispatch_uuid)
    refresh_all_workflows(conn)
    _mark_all_projected(conn)


def migrate_to_3(conn):
    """Schema 3 (db.init_db): a Messages v1 error's text is error_reason too (rows.py puts it
    there now), then every derived row is recomputed under the rules of this version."""
    conn.execute("UPDATE status_events SET error_reason = error_detail "
                 "WHERE error_reason IS NULL AND error_detail IS NOT NULL")
    rebuild_derived(conn)


def derived_differences(conn):
    """{table: number of derived rows that differ from a rebuild from the event log}."""
    return {table: len(keys) for table, keys in differing_keys(conn).items()}


def differing_keys(conn):
    """Keys of the derived rows, brought up to date by ``project``, that differ from a rebuild
    from the event log (changed, missing or extra). Returns {table: sorted keys}; the database
    is left unchanged."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        project(conn)  # what the writer has not derived yet, derived as it would (rolled back)
        for table in DERIVED_TABLES:
            conn.execute(f"CREATE TEMP TABLE stored_{table} AS SELECT * FROM {table}")
        rebuild_derived(conn)
        differences = {}
        for table, key in DERIVED_TABLES.items():
            stored = f"temp.stored_{table}"
            differences[table] = [value for (value,) in conn.execute(
                f"SELECT {key} FROM (SELECT * FROM {table} EXCEPT SELECT * FROM {stored})"
                f" UNION SELECT {key} FROM (SELECT * FROM {stored} EXCEPT SELECT * FROM {table})"
                f" ORDER BY 1")]
        return differences
    finally:
        conn.execute("ROLLBACK")
        for table in DERIVED_TABLES:
            conn.execute(f"DROP TABLE IF EXISTS temp.stored_{table}")


# The tables recomputed from the event log (``receiver rebuild``; compared by ``check``).
DERIVED_TABLES = {"messages": "message_uuid", "dispatches": "dispatch_uuid", "workflows": "workflow_id"}
