"""CSV and JSONL exports for billing reconciliation and audits, streamed in constant memory."""

import csv
import json
from datetime import timedelta

from . import money

BY_MESSAGE = (
    ["charged_at", "dispatch_uuid", "message_uuid", "channel", "charged_status", "price",
     "currency", "price_source"],
    """SELECT charged_at, dispatch_uuid, message_uuid, channel, charged_status, price, currency,
              price_source, price_nano
       FROM billing_lines WHERE charged_at >= :start AND charged_at < :end
       ORDER BY charged_at, message_uuid""",
)
BY_DISPATCH = (
    ["dispatch_uuid", "first_charged_at", "messages", "channels", "total", "currency",
     "final_report_total", "difference", "reason"],
    f"""SELECT b.dispatch_uuid, min(b.charged_at), count(*), group_concat(DISTINCT b.channel),
              NULL, group_concat(DISTINCT b.currency), r.final_report_total, NULL, NULL,
              sum(b.price_nano), r.final_price_nano
       FROM billing_lines b
       LEFT JOIN (SELECT dispatch_uuid, final_price AS final_report_total,
                         final_price_nano FROM dispatches) r USING (dispatch_uuid)
       WHERE b.charged_at >= :start AND b.charged_at < :end
       GROUP BY b.dispatch_uuid ORDER BY min(b.charged_at), b.dispatch_uuid""",
)
BY_DAY = (
    ["day", "channel", "currency", "messages", "total"],
    """SELECT substr(charged_at, 1, 10) AS day, channel, currency, count(*), NULL,
              sum(price_nano)
       FROM billing_lines WHERE charged_at >= :start AND charged_at < :end
       GROUP BY day, channel, currency ORDER BY day, channel, currency""",
)
BILLING = {"message": BY_MESSAGE, "dispatch": BY_DISPATCH, "day": BY_DAY}


def period(start, end):
    """Inclusive dates -> the [start, end) range of ISO timestamps they cover."""
    return {"start": start.isoformat(), "end": (end + timedelta(days=1)).isoformat()}


def count_billing_rows(conn, by, start, end):
    """How many rows a billing export will write (for the progress bar)."""
    _, select = BILLING[by]
    return conn.execute(f"SELECT count(*) FROM ({select})", period(start, end)).fetchone()[0]


def billing_rows(conn, by, start, end):
    """Yield (row values, currency, amount in nano-units) for each row of a billing export.

    Totals are computed from integer nano-amounts, so they are exact decimals.
    """
    _, select = BILLING[by]
    for row in conn.execute(select, period(start, end)):
        if by == "message":
            *values, nano = row
            yield values, values[6], nano
        elif by == "dispatch":
            *values, nano, final_nano = row
            values[4] = money.from_nano(nano)
            if final_nano is None:
                values[8] = "final report missing"
            elif nano is not None:
                values[7] = _signed(final_nano - nano)
                values[8] = "totals differ" if final_nano != nano else ""
            yield values, values[5], nano
        else:
            *values, nano = row
            values[4] = money.from_nano(nano)
            yield values, values[2], nano


def _signed(nano):
    return "-" + money.from_nano(-nano) if nano < 0 else money.from_nano(nano)


def write_billing_csv(conn, by, start, end, out, progress=None):
    """Write a billing export as RFC 4180 CSV (CRLF); return {currency: exact total text}."""
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


