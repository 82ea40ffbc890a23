"""CSV and JSONL exports for billing reconciliation and audits, streamed in constant memory."""

import csv
import json
from datetime import timedelta

from . import money

# Each export reads one view of receiver/views.py, the one definition of billing; each row
# has one currency. (columns written, SELECT with :start/:end; the last value is the row's
# amount in nano-units, for the per-currency totals)
BY_MESSAGE = (
    ["charged_at", "dispatch_uuid", "message_uuid", "channel", "charged_status", "price",
     "currency", "price_source"],
    """SELECT charged_at, dispatch_uuid, message_uuid, channel, charged_status, price, currency,
              price_source, price_nano
       FROM billing_lines WHERE charged_at >= :start AND charged_at < :end
       ORDER BY charged_at, message_uuid""",
)
BY_WORKFLOW = (
    ["api", "workflow_id", "message_uuid", "first_charged_at", "messages", "channels", "total",
     "currency", "final_report_total", "final_report_currency", "difference", "reason"],
    """SELECT api, workflow_id, message_uuid, first_charged_at, messages, channels, total,
              currency, final_report_total, final_report_currency, difference, reason,
              total_nano
       FROM billing_by_workflow WHERE first_charged_at >= :start AND first_charged_at < :end
       ORDER BY first_charged_at, api, workflow_id, message_uuid, currency""",
)
BY_DAY = (
    ["day", "channel", "currency", "messages", "total"],
    """SELECT day, channel, currency, messages, total, total_nano
       FROM billing_by_day WHERE day >= :start AND day < :end
       ORDER BY day, channel, currency""",
)
BILLING = {"message": BY_MESSAGE, "dispatch": BY_WORKFLOW, "day": BY_DAY}


def period(start, end):
    """Inclusive dates -> the [start, end) range of ISO timestamps they cover."""
    return {"start": start.isoformat(), "end": (end + timedelta(days=1)).isoformat()}


def count_billing_rows(conn, by, start, end):
    """How many rows a billing export will write (for the progress bar)."""
    _, select = BILLING[by]
    return conn.execute(f"SELECT count(*) FROM ({select})", period(start, end)).fetchone()[0]


def billing_rows(conn, by, start, end):
    """Yield (row values, currency, amount in nano-units) for each row of a billing export."""
    columns, select = BILLING[by]
    currency = columns.index("currency")
    for row in conn.execute(select, period(start, end)):
        *values, nano = row
        yield values, values[currency], nano


def write_billing_csv(conn, by, start, end, out, progress=None):
    """Write a billing export as RFC 4180 CSV (CRLF).

    Returns {currency: exact total text}, summed per currency from integer nano-amounts,
    never across currencies.
    """
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(BILLING[by][0])
    totals = {}
    for values, currency, nano in billing_rows(conn, by, start, end):
        writer.writerow(values)
        if nano is not None:
            totals[currency] = totals.get(currency, 0) + nano
        if progress is not None:
            progress.update(1)
    return {currency: money.from_nano(nano) for currency, nano in totals.items()}


EVENT_COLUMNS = ["id", "kind", "received_at", "last_received_at", "delivery_count", "endpoint",
                 "remote_addr", "sha256", "signature_status", "api_key", "body"]


def count_events(conn, start, end):
    return conn.execute(
        "SELECT count(*) FROM callbacks WHERE received_at >= :start AND received_at < :end",
        period(start, end),
    ).fetchone()[0]


def events(conn, start, end):
    """Yield every accepted callback received in the period, oldest first, body as received."""
    cursor = conn.execute(
        f"SELECT {', '.join(EVENT_COLUMNS)} FROM callbacks "
        "WHERE received_at >= :start AND received_at < :end ORDER BY received_at, id",
        period(start, end),
    )
    for row in cursor:
        yield dict(zip(EVENT_COLUMNS, row))


def write_events(rows, out, fmt, progress=None):
    """Write callbacks as CSV (RFC 4180) or JSON Lines (the body as a JSON string, byte-exact)."""
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(EVENT_COLUMNS)
    for row in rows:
        if fmt == "csv":
            writer.writerow([row[c] for c in EVENT_COLUMNS])
        else:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
        if progress is not None:
            progress.update(1)



# Reconciliation against Vonage's own records: the three vonage_reconciliation views of
# receiver/views.py, every column, the rows of the period (by the day Vonage received the
# message, else our first status). (columns written, SELECT with :start/:end)
RECONCILIATION_VIEWS = {
    "message": ("vonage_reconciliation", "day", "sent_at, message_uuid"),
    "day": ("vonage_reconciliation_by_day", "day", "day, channel, currency"),
    "workflow": ("vonage_reconciliation_workflows", "first_sent_at",
                 "first_sent_at, api, workflow_id, currency"),
}


def reconciliation_query(conn, by):
    """(columns, SELECT with :start/:end) of a reconciliation export."""
    view, period_column, order = RECONCILIATION_VIEWS[by]
    columns = [c[0] for c in conn.execute(f"SELECT * FROM {view} LIMIT 0").description]
    return columns, (f"SELECT * FROM {view} WHERE {period_column} >= :start "
                     f"AND {period_column} < :end ORDER BY {order}")


def write_reconciliation_csv(conn, by, start, end, out, progress=None):
    """Write a reconciliation export as RFC 4180 CSV (CRLF); return {class: messages}."""
    columns, select = reconciliation_query(conn, by)
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(columns)
    classes = {}
    for row in conn.execute(select, period(start, end)):
        writer.writerow(row)
        record = dict(zip(columns, row))
        if "class" in record:
            classes[record["class"]] = classes.get(record["class"], 0) + 1
        else:
            for name in ("match", "price_differs", "currency_differs", "status_differs",
                         "no_callbacks", "not_in_vonage_records"):
                classes[name] = classes.get(name, 0) + (record[name] or 0)
        if progress is not None:
            progress.update(1)
    return classes
