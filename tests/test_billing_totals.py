"""Billing totals for finance: per period, channel and currency, with the charged messages that
carry no price counted, and the CLI's CSV column for column what Datasette's CSV has."""

import csv
import io
import sqlite3
from contextlib import closing

import pytest

from payloads import new_uuid, status, v1_status

# October and November: SMS and WhatsApp priced in EUR, one SMS in USD, RCS charged (delivered)
# with no price, and one Messages failover leg.
BODIES = [
    status(new_uuid(), "D1", "submitted", channel="sms", price="0.1", timestamp="2026-10-31T23:59:59Z"),
    status(new_uuid(), "D1", "submitted", channel="sms", price="0.2", timestamp="2026-11-01T00:00:00Z"),
    status(new_uuid(), "D2", "submitted", channel="sms", price="0.05", currency="USD",
           timestamp="2026-11-03T10:00:00Z"),
    status(new_uuid(), "D2", "delivered", channel="whatsapp", price="0.0147",
           timestamp="2026-11-30T23:00:00Z"),
    v1_status(new_uuid(), "delivered", channel="rcs", timestamp="2026-11-04T10:00:00Z"),
    v1_status(new_uuid(), "delivered", channel="rcs", timestamp="2026-11-05T10:00:00Z"),
    v1_status(new_uuid(), "submitted", channel="sms", price="0.0333",
              workflow=("W1", 1, 1), timestamp="2026-11-06T10:00:00Z"),
]


@pytest.fixture
def billed(post, db_path):
    for body in BODIES:
        assert post(body).status_code == 200
    return db_path


def export(runner, db_path, by, start="2026-11-01", end="2026-11-30"):
    result = runner.invoke(["export", "billing", "--db", str(db_path), "--from", start, "--to", end,
                            "--by", by])
    assert result.exit_code == 0, result.output
    header, *rows = csv.reader(io.StringIO(result.stdout, newline=""))
    return header, [dict(zip(header, row)) for row in rows], result.stderr


def test_november_per_channel_and_currency(runner, billed):
    """"What did Vonage charge us last month, per channel and currency?" in one command."""
    _, rows, stderr = export(runner, billed, "channel")
    got = [(r["channel"], r["currency"], r["messages"], r["unpriced_messages"], r["total"]) for r in rows]
    assert got == [("rcs", "", "2", "2", ""), ("sms", "EUR", "2", "0", "0.2333"),
                   ("sms", "USD", "1", "0", "0.05"), ("whatsapp", "EUR", "1", "0", "0.0147")]
    assert "total 0.2480 EUR" not in stderr and "total 0.248 EUR, 0.05 USD" in stderr
    assert "2 charged messages without a price (rcs 2)" in stderr


def test_the_month_view_and_export(runner, billed, rows):
    month = rows(billed, "SELECT month, api, channel, currency, messages, unpriced_messages, total "
                         "FROM billing_by_month ORDER BY month, api, channel, currency")
    assert month == [
        {"month": "2026-10", "api": "dispatch", "channel": "sms", "currency": "EUR", "messages": 1,
         "unpriced_messages": 0, "total": "0.1"},
        {"month": "2026-11", "api": "dispatch", "channel": "sms", "currency": "EUR", "messages": 1,
         "unpriced_messages": 0, "total": "0.2"},
        {"month": "2026-11", "api": "dispatch", "channel": "sms", "currency": "USD", "messages": 1,
         "unpriced_messages": 0, "total": "0.05"},
        {"month": "2026-11", "api": "dispatch", "channel": "whatsapp", "currency": "EUR", "messages": 1,
         "unpriced_messages": 0, "total": "0.0147"},
        {"month": "2026-11", "api": "messages", "channel": "rcs", "currency": None, "messages": 2,
         "unpriced_messages": 2, "total": None},
        {"month": "2026-11", "api": "messages", "channel": "sms", "currency": "EUR", "messages": 1,
         "unpriced_messages": 0, "total": "0.0333"},
    ]
    _, exported, stderr = export(runner, billed, "month", "2026-11-15", "2026-11-15")
    assert [r["month"] for r in exported] == ["2026-11"] * 5  # the whole month the period touches
    assert "2 charged messages without a price (rcs 2)" in stderr


@pytest.mark.parametrize("by", ["message", "dispatch", "day"])
def test_every_total_counts_the_charged_messages_without_a_price(runner, billed, by):
    _, _, stderr = export(runner, billed, by)
    assert "; 2 charged messages without a price (rcs 2)" in stderr


VIEW_OF = {"message": "billing_lines", "dispatch": "billing_by_workflow", "day": "billing_by_day",
           "month": "billing_by_month"}


@pytest.mark.parametrize("by, view", VIEW_OF.items())
def test_the_cli_csv_has_the_columns_of_its_view(runner, billed, by, view):
    """One set of columns: the CLI's CSV has every column Datasette's CSV of the view has (a
    Messages line keeps its api and workflow_id)."""
    with closing(sqlite3.connect(billed)) as conn:
        columns = [row[1] for row in conn.execute(f"PRAGMA table_info({view})")]
    header, rows, _ = export(runner, billed, by)
    assert header == columns
    assert {"api"} <= set(header)
    if by == "message":
        [leg] = [r for r in rows if r["api"] == "messages" and r["channel"] == "sms"]
        assert leg["workflow_id"] == "W1"


def test_the_dashboard_and_the_billing_pages_link_to_the_month_totals(billed, monkeypatch):
    """The dashboard's card shows the month totals with the unpriced messages, and its links
    and the billing views' pages lead to billing_by_month in the served database."""
    from test_datasette import DB_NAME, Client

    monkeypatch.delenv("DATASETTE_PASSWORD_HASH", raising=False)
    client = Client.of_copy(billed)
    try:
        dashboard = client.get("/-/dashboards/callbacks").text
        assert "/-/receiver/billing_by_month" in dashboard
        link = client.get("/-/receiver/billing_by_month")
        assert (link.status_code, link.headers["location"]) == (302, f"/{DB_NAME}/billing_by_month")
        assert client.get("/-/receiver/nothing_here").status_code == 404
        for view in ("billing_lines", "billing_by_day", "billing_by_workflow", "workflow_costs",
                     "billing_reconciliation"):
            assert '<a href="billing_by_month">' in client.get(f"/{DB_NAME}/{view}").text, view
        month = client.json(f"/{DB_NAME}/billing_by_month.json", _shape="objects",
                            month="2026-11", channel="rcs")["rows"]
        assert [(r["messages"], r["unpriced_messages"], r["total"]) for r in month] == [(2, 2, None)]
    finally:
        client.close()


def test_the_cost_chart_counts_the_charged_messages_without_a_price(billed):
    import yaml
    from pathlib import Path

    from test_datasette_v1 import chart_sql

    metadata = yaml.safe_load((Path(__file__).resolve().parent.parent / "config" / "metadata.yml").read_text())
    chart = metadata["plugins"]["datasette-dashboards"]["callbacks"]["charts"]["cost-per-day"]
    with closing(sqlite3.connect(billed)) as conn:
        conn.row_factory = sqlite3.Row
        found = [dict(r) for r in conn.execute(chart_sql(chart["query"], {"channel": "rcs"}),
                                               {"channel": "rcs"})]
    assert [(r["series"], r["unpriced_messages"], r["cost"]) for r in found] == [
        ("rcs (no price)", 1, None), ("rcs (no price)", 1, None)]
