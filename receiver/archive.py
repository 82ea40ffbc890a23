"""Monthly Parquet archives of the event store, laid out for any query engine.

``DIR/<table>/month=YYYY-MM/<name>-0.parquet`` (Hive-style partitions; ``name`` is ``part``
unless several receivers share ``DIR``, each with its own name), one file per table and month:

- event tables (those with ``received_at``, or whose parent row has one, as
  ``final_report_messages`` has through ``final_reports``): the rows that arrived in the month;
- derived tables (``messages``, ``dispatches``, ``workflows``...: keyed by a column the events
  carry): the rows as they stand now whose earliest stored event arrived in the month, so each
  row is in exactly one month (rows of keys whose earlier events were pruned are not written
  again: archive a month before pruning it).

Money stays exact: ``*_nano`` columns are int64 and each also gets a ``*_decimal`` column of
type DECIMAL(18, 9) with the same amount; decimal text stays a string. Bodies are byte-exact
(``callbacks.body`` as UTF-8 text, ``rejected_callbacks.body`` as binary). Rows are streamed
in batches (constant memory); each file is written under a temporary name and renamed into
place, so a second run replaces a month's files and never duplicates them.
"""

import os
import re
from datetime import date, datetime, timezone
from decimal import Decimal

import pyarrow as pa
import pyarrow.parquet as pq

from . import money
from .prune import BOOKKEEPING, key_columns

BATCH_ROWS = 5_000
MONTH = re.compile(r"(\d{4})-(0[1-9]|1[0-2])")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
DECIMAL = pa.decimal128(18, money.SCALE)


class ArchiveError(Exception):
    """An archive that cannot be written; the message says why, in one line."""


def month_range(month):
    """'2026-11' -> ('2026-11-01', '2026-12-01'): the [start, end) of received_at it covers."""
    match = MONTH.fullmatch(month or "")
    if not match:
        raise ArchiveError(f"{month!r} is not a month like 2026-11")
    year, number = int(match[1]), int(match[2])
    start = date(year, number, 1)
    end = date(year + number // 12, number % 12 + 1, 1)
    return start.isoformat(), end.isoformat()


def _columns(conn, table):
    """[(name, declared type)] of a table."""
    return [(row[1], (row[2] or "").upper()) for row in conn.execute(f"PRAGMA table_info([{table}])")]


def _arrow_type(declared):
    """SQLite's type affinity rules, mapped to Arrow."""
    if "INT" in declared:
        return pa.int64()
    if any(word in declared for word in ("CHAR", "CLOB", "TEXT")):
        return pa.string()
    if "BLOB" in declared or not declared:
        return pa.binary()
    if any(word in declared for word in ("REAL", "FLOA", "DOUB")):
        return pa.float64()
    return pa.string()


def _tables(conn):
    return [row[0] for row in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
        "ORDER BY name")]


def arrivals(conn):
    """{event table: (FROM clause aliased t, SQL of its arrival time)}."""
    found = {}
    for table in _tables(conn):
        names = {name for name, _ in _columns(conn, table)}
        if table in BOOKKEEPING:
            continue
        if "received_at" in names:
            found[table] = (f"[{table}] t", "t.received_at")
    for table in _tables(conn):
        if table in found or table in BOOKKEEPING:
            continue
        for fk in conn.execute(f"PRAGMA foreign_key_list([{table}])"):
            parent, child_column, parent_column = fk[2], fk[3], fk[4] or "id"
            if parent in found and "received_at" in {n for n, _ in _columns(conn, parent)}:
                found[table] = (f"[{table}] t JOIN [{parent}] p ON p.[{parent_column}] = t.[{child_column}]",
                                "p.received_at")
                break
    return found


def plan(conn, month):
    """{table: SELECT of its rows for the month} for every table archived, and the list of
    tables skipped (neither events nor keyed by a column the events carry)."""
    events = arrivals(conn)
    selects, skipped = {}, []
    for table, (source, received) in events.items():
        selects[table] = (f"SELECT t.* FROM {source} WHERE {received} >= :start "
                          f"AND {received} < :end ORDER BY t.rowid")
    for table in _tables(conn):
        if table in events or table in BOOKKEEPING:
            continue
        primary = [row[1] for row in conn.execute(f"PRAGMA table_info([{table}])") if row[5]]
        if len(primary) != 1:
            skipped.append(table)
            continue
        key = primary[0]
        # (event source, its arrival time, the event column holding this table's keys)
        sources = [(source, received, column) for event, (source, received) in events.items()
                   for column in key_columns(table, key)
                   if column in {n for n, _ in _columns(conn, event)}]
        if not sources:
            skipped.append(table)
            continue
        in_month = " UNION ".join(
            f"SELECT t.[{column}] FROM {source} WHERE {received} >= :start AND {received} < :end"
            for source, received, column in sources)
        earlier = " AND ".join(
            f"NOT EXISTS (SELECT 1 FROM {source} WHERE t.[{column}] = d.[{key}] AND {received} < :start)"
            for source, received, column in sources)
        selects[table] = (
            f"SELECT d.* FROM [{table}] d WHERE d.[{key}] IN ({in_month}) AND {earlier} "
            f"AND d.[{key}] NOT IN (SELECT key FROM pruned_keys WHERE table_name = '{table}') "
            f"ORDER BY d.[{key}]")
    return selects, skipped


def _schema(conn, table, metadata):
    fields, converters = [], []
    for name, declared in _columns(conn, table):
        kind = _arrow_type(declared)
        fields.append(pa.field(name, kind))
        converters.append(_binary if kind == pa.binary() else None)
        if name.endswith("_nano") and kind == pa.int64():
            fields.append(pa.field(name[: -len("_nano")] + "_decimal", DECIMAL))
            converters.append("decimal")
    return pa.schema(fields, metadata=metadata), converters


def _binary(value):
    """Bytes as stored: TEXT is the UTF-8 of what arrived, a BLOB is the bytes themselves."""
    return value.encode("utf-8") if isinstance(value, str) else value


def _decimal(nano):
    return None if nano is None else Decimal(nano).scaleb(-money.SCALE)


def _batch(rows, schema, converters):
    columns = []
    source = 0
    for converter in converters:
        if converter == "decimal":
            columns.append([_decimal(row[source - 1]) for row in rows])
            continue
        values = [row[source] for row in rows]
        if converter is not None:
            values = [converter(value) for value in values]
        columns.append(values)
        source += 1
    return pa.RecordBatch.from_arrays(
        [pa.array(values, type=field.type) for values, field in zip(columns, schema)], schema=schema)


def count_rows(conn, month):
    """{table: rows the archive of ``month`` will write} (for the progress bar)."""
    start, end = month_range(month)
    selects, _ = plan(conn, month)
    return {table: conn.execute(f"SELECT count(*) FROM ({select})", {"start": start, "end": end}
                                ).fetchone()[0] for table, select in selects.items()}


def archive(conn, month, directory, *, name="part", source="", progress=None, batch_rows=BATCH_ROWS):
    """Write ``month`` of every table as Parquet under ``directory``; return
    ({table: rows written}, [tables skipped]). ``progress(rows)`` after each batch."""
    if not NAME.fullmatch(name or ""):
        raise ArchiveError(f"{name!r} is not a receiver name (letters, digits, '.', '_', '-')")
    start, end = month_range(month)
    selects, skipped = plan(conn, month)
    written = {}
    archived_at = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    conn.execute("BEGIN")  # one snapshot for every table of the month
    try:
        for table, select in selects.items():
            folder = os.path.join(directory, table, f"month={month}")
            os.makedirs(folder, exist_ok=True)
            target = os.path.join(folder, f"{name}-0.parquet")
            temporary = os.path.join(folder, f".{name}-0.parquet.tmp-{os.getpid()}")
            schema, converters = _schema(conn, table, {
                "receiver.table": table, "receiver.month": month, "receiver.name": name,
                "receiver.source": source, "receiver.archived_at": archived_at,
            })
            count = 0
            try:
                with pq.ParquetWriter(temporary, schema, compression="zstd") as writer:
                    cursor = conn.execute(select, {"start": start, "end": end})
                    while rows := cursor.fetchmany(batch_rows):
                        writer.write_batch(_batch(rows, schema, converters))
                        count += len(rows)
                        if progress:
                            progress(len(rows))
                os.replace(temporary, target)
            except BaseException:
                if os.path.exists(temporary):
                    os.remove(temporary)
                raise
            written[table] = count
    finally:
        conn.execute("COMMIT")
    return written, skipped
