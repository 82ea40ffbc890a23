"""Reconciliation against Vonage's own records (the vonage_reconciliation views): simulated
traffic of both APIs with Vonage's report of it, discrepancies planted in the report and in
the callbacks; every planted case is found in its class and nothing else is flagged.

The traffic is stored into the database directly (``simulate.store_all``, the receiver's own
storage code, as ``receiver simulate`` does without --url): posting 20,000 messages' callbacks
over HTTP would take minutes on this machine and tests nothing more here.
"""

import csv
import io
import zipfile
from collections import Counter, defaultdict
from contextlib import closing
from decimal import Decimal

import pytest

from receiver import db, simulate, vonage_records

WORKFLOWS = 14_500  # mixed: about 20,400 messages, half of each API


@pytest.fixture(scope="module")
def reconciled(tmp_path_factory):
    """A database holding the simulated callbacks (some withheld) and the imported report."""
    directory = tmp_path_factory.mktemp("reconciled")
    path, report = directory / "events.db", directory / "report.zip"
    db.init_db(str(path))
    records = simulate.VonageRecords(report, seed=15)
    with closing(db.connect(str(path))) as conn:
        workflows = simulate.generate(WORKFLOWS, seed=15, days=20, api="mixed")
        simulate.store_all(records.withhold(workflows), conn)
        records.close()
        vonage_records.import_file(conn, str(report))
    return path, report, records


def select(path, sql, *params):
    with closing(db.connect(str(path), readonly=True)) as conn:
        conn.row_factory = lambda cursor, row: dict(zip([c[0] for c in cursor.description], row))
        return conn.execute(sql, params).fetchall()


def report_rows(report):
    with zipfile.ZipFile(report) as archive:
        (name,) = archive.namelist()
        assert name.startswith(f"report_MESSAGES_{simulate.SIMULATED_ACCOUNT}_") and name.endswith(".csv")
        return list(csv.DictReader(io.TextIOWrapper(archive.open(name), encoding="utf-8", newline="")))


def test_every_planted_case_is_found_in_its_class_and_nothing_else(reconciled):
    path, _, records = reconciled
    rows = select(path, "SELECT message_uuid, class, api FROM vonage_reconciliation")
    assert len(rows) >= 20_000
    assert len({row["message_uuid"] for row in rows}) == len(rows)  # each message once
    apis = Counter(row["api"] for row in rows)
    assert apis["dispatch"] > 8_000 and apis["messages"] > 8_000, apis
    flagged = {row["message_uuid"]: row["class"] for row in rows if row["class"] != "match"}
    assert flagged == records.planted
    # Every kind was planted, in both APIs where the class keeps our message.
    assert all(count >= 30 for count in records.counts.values()), records.counts
    by_api = Counter((row["class"], row["api"]) for row in rows if row["class"] != "match")
    for plant in ("price_differs", "currency_differs", "status_differs", "not_in_vonage_records"):
        assert by_api[plant, "dispatch"] and by_api[plant, "messages"], by_api
    # A withheld Dispatch leg is still listed by its final report: no status callback, though.
    assert by_api["no_callbacks", "dispatch"] and by_api["no_callbacks", None], by_api


def test_a_changed_price_shows_its_exact_difference(reconciled):
    path, _, records = reconciled
    rows = select(path, "SELECT * FROM vonage_reconciliation WHERE class = 'price_differs'")
    assert len(rows) == records.counts["price_differs"]
    for row in rows:
        assert Decimal(row["vonage_price"]) - Decimal(row["billed_price"]) == simulate.PRICE_CHANGE
        assert (row["difference"], row["difference_nano"]) == ("0.001", 1_000_000)
    currency = select(path, "SELECT * FROM vonage_reconciliation WHERE class = 'currency_differs'")
    assert {(row["vonage_currency"], row["billed_currency"], row["difference"]) for row in currency} \
        == {("USD", "EUR", None)}


def test_statuses_compare_through_the_documented_mapping(reconciled):
    """Vonage's SMS word failed matches our undeliverable, its delivered our read; a changed
    outcome (reached, failed, pending) is status_differs, whatever the words."""
    path, _, _ = reconciled
    pairs = Counter((row["vonage_status"], row["our_status"], row["class"]) for row in select(
        path, "SELECT vonage_status, our_status, class FROM vonage_reconciliation "
              "WHERE class IN ('match', 'status_differs')"))
    assert pairs["failed", "undeliverable", "match"] and pairs["delivered", "read", "match"]
    assert pairs["submitted", "submitted", "match"] and pairs["rejected", "rejected", "match"]
    for differs in (("failed", "delivered"), ("undeliverable", "read"), ("delivered", "rejected"),
                    ("delivered", "submitted")):
        assert pairs[(*differs, "status_differs")] and not pairs[(*differs, "match")], differs


def test_totals_per_day_channel_and_currency_add_up_to_the_report_and_billing(reconciled):
    """Vonage's totals are the report's prices, our totals are billing_lines', per currency,
    never summed across currencies; every message is counted once in one class."""
    path, report, records = reconciled
    days = select(path, "SELECT * FROM vonage_reconciliation_by_day")
    vonage, billed = defaultdict(int), defaultdict(int)
    for row in days:
        vonage[row["currency"]] += row["vonage_total_nano"] or 0
        billed[row["currency"]] += row["billed_total_nano"] or 0
        assert row["difference_nano"] == (row["vonage_total_nano"] or 0) - (row["billed_total_nano"] or 0)
        assert row["messages"] == sum(row[c] for c in ("match", "price_differs", "currency_differs",
                                                      "status_differs", "no_callbacks",
                                                      "not_in_vonage_records"))
    in_report = defaultdict(int)
    for record in report_rows(report):
        if record["total_price"]:
            in_report[record["currency"]] += int(Decimal(record["total_price"]) * 10**9)
    assert dict(vonage) == {currency: nano for currency, nano in in_report.items() if nano} | {None: 0}
    billing = select(path, "SELECT currency, sum(price_nano) AS nano, count(*) AS n FROM "
                           "billing_lines WHERE currency IS NOT NULL GROUP BY currency")
    assert {row["currency"]: row["nano"] for row in billing} == {
        currency: nano for currency, nano in billed.items() if nano}
    billed_messages = Counter()
    for row in days:
        billed_messages[row["currency"]] += row["billed_messages"]
    assert {row["currency"]: row["n"] for row in billing} == +billed_messages
    classes = Counter(row["class"] for row in select(path, "SELECT class FROM vonage_reconciliation"))
    for plant, count in records.counts.items():
        assert sum(row[plant] for row in days) == count == classes[plant]
    # Unpriced on either side is counted, not dropped: RCS legs have no price anywhere.
    assert sum(row["vonage_unpriced"] for row in days if row["channel"] == "rcs") > 0
    assert all(row["messages"] > 0 or row["currency"] == "EUR" for row in days)


def test_per_workflow_legs_as_vonage_recorded_them_against_ours(reconciled):
    path, _, records = reconciled
    workflows = select(path, "SELECT * FROM vonage_reconciliation_workflows")
    assert {row["api"] for row in workflows} == {"dispatch", "messages"}
    per_message = select(path, "SELECT workflow_id, class FROM vonage_reconciliation "
                               "WHERE workflow_id IS NOT NULL")
    expected = Counter((row["workflow_id"], row["class"]) for row in per_message)
    found = Counter()
    for row in workflows:
        for plant in ("match", *simulate.PLANTS):
            found[row["workflow_id"], plant] += row[plant]
    assert +found == +expected
    # A Messages failover leg whose callbacks never came is missing from our legs.
    short = [row for row in workflows if row["api"] == "messages" and row["legs_planned"]
             and row["legs_seen"] < row["legs_planned"]]
    assert short
