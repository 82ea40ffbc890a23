"""CSV and JSONL exports for billing reconciliation and audits, streamed in constant memory.

Every CSV cell goes through csvsafe.neutralise (safe to open in a spreadsheet)."""

import csv
import json
from dataclasses import dataclass, field
from datetime import timedelta

from . import money, views
from .csvsafe import neutralise_row

# Each billing export is every column of one view of receiver/views.py (the one definition of
# billing, with the columns Datasette shows) for a period, in a fixed order; each row has one
# currency. :start/:end bound times ([start, end)), :first_day/:last_day days (inclusive).
BILLING = {
    "message": """SELECT * FROM billing_lines WHERE charged_at >= :start AND charged_at < :end
                  ORDER BY charged_at, message_uuid""",
    "dispatch": """SELECT * FROM billing_by_workflow
                   WHERE first_charged_at >= :start AND first_charged_at < :end
                   ORDER BY first_charged_at, api, workflow_id, message_uuid, currency""",
    "day": """SELECT * FROM billing_by_day WHERE day >= :first_day AND day <= :last_day
              ORDER BY day, api, channel, currency""",
    # every month the period touches, whole
    "month": """SELECT * FROM billing_by_month
                WHERE month >= substr(:first_day, 1, 7) AND month <= substr(:last_day, 1, 7)
                ORDER BY month, api, channel, currency""",
    "channel": f"SELECT * FROM ({views.PERIOD_TOTALS}) ORDER BY channel, currency",
}


def period(start, end):
    """Inclusive dates -> the parameters of a period: [start, end) of ISO timestamps, and the
    first and last day."""
    return {"start": start.isoformat(), "end": (end + timedelta(days=1)).isoformat(),
            "first_day": start.isoformat(), "last_day": end.isoformat()}


def count_billing_rows(conn, by, start, end):
    """How many rows a billing export will write (for the progress bar)."""
    return conn.execute(f"SELECT count(*) FROM ({BILLING[by]})", period(start, end)).fetchone()[0]


@dataclass
class BillingSummary:
    """What a billing export added up: exact totals per currency (never across currencies)
    and, per channel, the charged messages that carry no price (in no total)."""

    totals_nano: dict = field(default_factory=dict)
    unpriced: dict = field(default_factory=dict)

    def add(self, row):
        nano = row.get("total_nano", row.get("price_nano"))
        if nano is not None:
            self.totals_nano[row["currency"]] = self.totals_nano.get(row["currency"], 0) + nano
        unpriced = row["unpriced_messages"] if "unpriced_messages" in row else int(nano is None)
        if unpriced:
            channel = row.get("channel", row.get("channels")) or "unknown channel"
            self.unpriced[channel] = self.unpriced.get(channel, 0) + unpriced

    @property
    def totals(self):
        return {currency: money.from_nano(nano) for currency, nano in self.totals_nano.items()}

    def line(self, rows):
        """The summary line: '12 rows; total 0.5 EUR, 0.25 USD; 3 charged messages without a
        price (rcs 3)'."""
        totals = ", ".join(f"{amount} {currency}" for currency, amount in sorted(self.totals.items()))
        text = f"{rows} rows; total {totals or '0'}"
        if self.unpriced:
            by_channel = ", ".join(f"{c} {n}" for c, n in sorted(self.unpriced.items()))
            text += (f"; {sum(self.unpriced.values())} charged messages without a price"
                     f" ({by_channel})")
        return text


def write_billing_csv(conn, by, start, end, out, progress=None):
    """Write a billing export as RFC 4180 CSV (CRLF), every column of its view; return its
    BillingSummary."""
    cursor = conn.execute(BILLING[by], period(start, end))
    columns = [d[0] for d in cursor.description]
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(columns)
    summary = BillingSummary()
    for values in cursor:
        writer.writerow(neutralise_row(values))
        summary.add(dict(zip(columns, values)))
        if progress is not None:
            progress.update(1)
    return summary


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
            writer.writerow(neutralise_row(row[c] for c in EVENT_COLUMNS))
        else:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
        if progress is not None:
            progress.update(1)


# Reconciliation against Vonage's own records: the three vonage_reconciliation views of
# receiver/views.py, every column, the rows of the period (by the day Vonage received the
# message, else our first status). (view, the column the period bounds, the order)
RECONCILIATION_VIEWS = {
    "message": ("vonage_reconciliation", "day", "sent_at, message_uuid"),
    "day": ("vonage_reconciliation_by_day", "day", "day, channel, currency"),
    "workflow": ("vonage_reconciliation_workflows", "first_sent_at",
                 "first_sent_at, api, workflow_id, currency"),
}


def write_reconciliation_csv(conn, by, start, end, out, progress=None):
    """Write a reconciliation export as RFC 4180 CSV (CRLF); return {class: messages}."""
    view, period_column, order = RECONCILIATION_VIEWS[by]
    cursor = conn.execute(f"SELECT * FROM {view} WHERE {period_column} >= :start "
                          f"AND {period_column} < :end ORDER BY {order}", period(start, end))
    columns = [d[0] for d in cursor.description]
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(columns)
    classes = {}
    for row in cursor:
        writer.writerow(neutralise_row(row))
        record = dict(zip(columns, row))
        if "class" in record:
            classes[record["class"]] = classes.get(record["class"], 0) + 1
        else:
            for name in views.CLASSES:
                classes[name] = classes.get(name, 0) + (record[name] or 0)
        if progress is not None:
            progress.update(1)
    return classes
