"""Where users look at the reconciliation with Vonage's records: the real `receiver datasette`
over a demo database made as the README makes it (`receiver simulate --vonage-records`, then
`receiver vonage-records import`): every view's CSV complete over HTTP, the per-message view's
links, `receiver export vonage-reconciliation`, and the dashboard's card and chart in headless
Chromium (screenshot: test-artifacts/reconciliation-dashboard.png)."""

import csv
import io
import re
from collections import Counter
from contextlib import closing
from decimal import Decimal

import pytest
import requests

from receiver import db
from test_dashboard_browser import ARTIFACTS, browser, needs_chromium, open_dashboard, start  # noqa: F401

WORKFLOWS = 1_200  # mixed: about 1,700 messages, 1,100+ workflow rows
VIEWS = ("vonage_reconciliation", "vonage_reconciliation_by_day", "vonage_reconciliation_workflows")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The README's flow on demo data, through the real commands."""
    from click.testing import CliRunner

    from receiver.cli import cli

    directory = tmp_path_factory.mktemp("recon")
    path, report = directory / "demo.db", directory / "records.zip"
    runner = CliRunner()
    result = runner.invoke(cli, ["simulate", "--db", str(path), "--api", "mixed", "--seed", "21",
                                 "--dispatches", str(WORKFLOWS), "--vonage-records", str(report)])
    assert result.exit_code == 0, result.output
    planted = {name: int(n) for n, name in
               re.findall(r"(\d+) (\w+)", result.stderr.split("planted:")[1])}
    result = runner.invoke(cli, ["vonage-records", "import", "--db", str(path), str(report)])
    assert result.exit_code == 0, result.output
    return path, planted


@pytest.fixture(scope="module")
def server(demo, tmp_path_factory):
    process = start(demo[0], tmp_path_factory.mktemp("logs") / "datasette.log")
    yield process
    process.stop()


def select(path, sql):
    with closing(db.connect(str(path), readonly=True)) as conn:
        cursor = conn.execute(sql)
        return [c[0] for c in cursor.description], cursor.fetchall()


def as_text(rows):
    return Counter(tuple("" if value is None else str(value) for value in row) for row in rows)


@pytest.mark.parametrize("view", VIEWS)
def test_each_views_csv_streams_every_row_over_http(demo, server, view):
    path, _ = demo
    columns, rows = select(path, f"SELECT * FROM {view}")
    with requests.get(f"{server.url}/demo/{view}.csv?_stream=on&_size=max", timeout=120) as response:
        assert response.status_code == 200, response.text[:500]
        header, *served = list(csv.reader(io.StringIO(response.text, newline="")))
    assert header[-len(columns):] == columns  # (a rowid column first for views: none here)
    if view != "vonage_reconciliation_by_day":
        assert len(served) > 1_000
    assert as_text(row[-len(columns):] for row in served) == as_text(rows)


def test_the_planted_counts_printed_are_what_the_view_finds(demo):
    path, planted = demo
    _, rows = select(path, "SELECT class, count(*) FROM vonage_reconciliation "
                           "WHERE class <> 'match' GROUP BY class")
    assert dict(rows) == planted and all(planted.values())


def test_a_discrepancy_links_to_the_message_its_events_and_its_workflow(demo, server):
    path, _ = demo
    _, [(uuid, workflow_id, api)] = select(
        path, "SELECT message_uuid, workflow_id, api FROM vonage_reconciliation "
              "WHERE class = 'price_differs' AND api = 'messages' AND workflow_id IS NOT NULL "
              "ORDER BY message_uuid LIMIT 1")
    page = requests.get(f"{server.url}/demo/vonage_reconciliation?message_uuid={uuid}", timeout=30)
    assert page.status_code == 200
    html = page.text
    assert f'href="/demo/messages/{uuid}"' in html
    assert f'href="/demo/status_events?message_uuid={uuid}&amp;_sort=timestamp"' in html
    assert f'href="/demo/workflows/{workflow_id}"' in html


def test_the_cli_export_writes_every_row_of_the_period(demo, runner, tmp_path):
    path, planted = demo
    for by, view in (("message", "vonage_reconciliation"), ("day", "vonage_reconciliation_by_day"),
                     ("workflow", "vonage_reconciliation_workflows")):
        out = tmp_path / f"{by}.csv"
        result = runner.invoke(["export", "vonage-reconciliation", "--db", str(path), "--from",
                                "2000-01-01", "--to", "2100-12-31", "--by", by, "-o", str(out)])
        assert result.exit_code == 0, result.output
        header, *written = list(csv.reader(io.StringIO(out.read_text(), newline="")))
        columns, rows = select(path, f"SELECT * FROM {view}")
        assert header == columns and as_text(written) == as_text(rows), by
        if by != "workflow":  # (a Messages leg without callbacks belongs to no workflow)
            for name, count in planted.items():
                assert f"{count} {name}" in result.stderr, (by, result.stderr)


@needs_chromium
def test_dashboard_card_and_chart_show_vonage_against_callbacks(demo, server, browser):  # noqa: F811
    path, planted = demo
    page, charts, problems = open_dashboard(browser, f"{server.url}/-/dashboards/callbacks")
    try:
        assert problems == []
        missing = charts["missing-callbacks-per-day"]
        assert {row["unit"] for row in missing["rows"]} == {"day"}
        assert sum(row["missing"] for row in missing["rows"]) == planted["no_callbacks"]
        assert missing["marks"] > 0 and missing["drawn"] > 0
        _, totals = select(path, "SELECT coalesce(currency, 'unpriced'), sum(vonage_total_nano), "
                                 "sum(billed_total_nano), sum(no_callbacks) FROM "
                                 "vonage_reconciliation_by_day GROUP BY 1 ORDER BY 1")
        card = page.locator("#chart-vonage-billed table")
        cells = [[cell.strip() for cell in row.split("\t")]
                 for row in card.inner_text().strip().splitlines()]
        assert cells[0][:5] == ["Currency", "Vonage billed", "From callbacks", "Difference",
                                "No callbacks"]
        shown = {row[0]: row[1:5] for row in cells[1:]}
        assert set(shown) == {"EUR", "USD", "unpriced"}
        for currency, vonage, billed, no_callbacks in totals:
            vonage, billed = Decimal(vonage or 0) / 10**9, Decimal(billed or 0) / 10**9
            assert [Decimal(shown[currency][0]), Decimal(shown[currency][1]),
                    Decimal(shown[currency][2]), int(shown[currency][3])] == \
                [vonage, billed, vonage - billed, no_callbacks], currency
        ARTIFACTS.mkdir(exist_ok=True)
        page.locator("#card-vonage-billed").scroll_into_view_if_needed()
        page.screenshot(path=str(ARTIFACTS / "reconciliation-dashboard.png"), full_page=True)
    finally:
        page.close()
    # The period filter narrows both: one day.
    _, [(day, no_callbacks)] = select(
        path, "SELECT day, sum(no_callbacks) FROM vonage_reconciliation_by_day GROUP BY day "
              "ORDER BY sum(no_callbacks) DESC, day LIMIT 1")
    page, charts, problems = open_dashboard(
        browser, f"{server.url}/-/dashboards/callbacks?from={day}&to={day}")
    try:
        assert problems == []
        rows = charts["missing-callbacks-per-day"]["rows"]
        assert {row["period"] for row in rows} == {day}
        assert sum(row["missing"] for row in rows) == no_callbacks
        text = page.locator("#chart-vonage-billed table").inner_text()
        assert "EUR" in text
    finally:
        page.close()
