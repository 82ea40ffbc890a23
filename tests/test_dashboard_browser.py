"""The real `receiver datasette` process, and its dashboard in real headless Chromium.

The command runs as production runs it (init-db, then exec datasette serve) on a free port of
127.0.0.1, over a database filled by posting the scenario of datasette_data to the receiver.
Chromium is Debian's (/usr/bin/chromium, installed by `make system-deps`), driven by the
Python playwright package; no browser is downloaded. The dashboard's screenshot is saved as
test-artifacts/dashboard.png.
"""

import csv
import io
import re
import subprocess
from decimal import Decimal
from pathlib import Path

import pytest
import requests

import datasette_data
from testing.processes import ROOT, VENV_BIN, Datasette

from receiver import views

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
ARTIFACTS = ROOT / "test-artifacts"
START_TIMEOUT_S = 30
PAGE_TIMEOUT_MS = 30_000

needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="Debian's chromium is not installed (/usr/bin/chromium): run `make system-deps` "
           "or `apt-get install chromium`",
)


def start(db_path, log_path, **environ):
    return Datasette(db_path, log_path, **environ).start(timeout=START_TIMEOUT_S)


@pytest.fixture(scope="module")
def filled(tmp_path_factory):
    """The scenario posted to the receiver, and the expected figures: (path, bodies)."""
    path = tmp_path_factory.mktemp("dashboard") / "dispatch.db"
    bodies, uuids = datasette_data.scenario_bodies()
    datasette_data.post_all(path, bodies)
    return path, bodies, uuids


@pytest.fixture(scope="module")
def server(filled, tmp_path_factory):
    process = start(filled[0], tmp_path_factory.mktemp("logs") / "datasette.log")
    yield process
    process.stop()


def test_command_creates_the_schema_and_serves_the_file_on_loopback(tmp_path):
    path = tmp_path / "fresh-events.db"  # no file yet (a missing folder is refused, test_cli_errors)
    process = start(path, tmp_path / "datasette.log")
    try:
        database = requests.get(f"{process.url}/fresh-events.json", timeout=10).json()
        tables = {t["name"] for t in database["tables"]}
        assert {"callbacks", "status_events", "messages", "dispatches", "workflows"} <= tables
        assert {v["name"] for v in database["views"]} == set(views.VIEWS)
        assert requests.get(f"{process.url}/-/dashboards/callbacks", timeout=10).status_code == 200
    finally:
        process.stop()
    log = process.output()
    assert "schema created" in log
    assert f"Uvicorn running on http://127.0.0.1:{process.port}" in log


def test_command_behind_a_password_asks_for_the_login(filled, tmp_path):
    password = "a long test password"
    hashed = subprocess.run(
        [str(VENV_BIN / "datasette"), "hash-password", "--no-confirm"], input=password,
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout.strip()
    process = start(filled[0], tmp_path / "datasette.log", DATASETTE_PASSWORD_HASH=hashed)
    try:
        anonymous = requests.get(f"{process.url}/dispatch/messages", allow_redirects=False,
                                 timeout=10)
        assert (anonymous.status_code, anonymous.headers["location"]) == (302, "/-/login")
        assert requests.get(f"{process.url}/dispatch/messages.csv?_stream=on",
                            timeout=10).status_code == 403
        with requests.Session() as session:
            form = session.get(f"{process.url}/-/login", timeout=10)
            token = re.search(r'name="csrftoken" value="([^"]+)"', form.text).group(1)
            login = session.post(f"{process.url}/-/login", timeout=30, allow_redirects=False,
                                 data={"username": "root", "password": password,
                                       "csrftoken": token})
            assert login.status_code == 302 and "ds_actor" in session.cookies
            assert session.get(f"{process.url}/-/dashboards/callbacks", timeout=10).status_code == 200
            csv = session.get(f"{process.url}/dispatch/messages.csv?_stream=on", timeout=10)
            assert csv.status_code == 200 and len(csv.text.splitlines()) > 1
    finally:
        process.stop()


# Wraps vega-embed as it loads, keeping each chart's result (its vega View) for the test.
CAPTURE_CHARTS = """
window.__charts = [];
Object.defineProperty(window, 'vegaEmbed', {
  configurable: true,
  get() { return window.__vegaEmbed; },
  set(embed) {
    const wrapped = function (element, spec, options) {
      const promise = embed(element, spec, options);
      window.__charts.push(promise.then(result => ({id: element.id, view: result.view})));
      return promise;
    };
    Object.assign(wrapped, embed);
    window.__vegaEmbed = wrapped;
  },
});
"""

# For each rendered chart: its data rows and how many data marks (bars, points, lines) it drew.
READ_CHARTS = """
async () => {
  const countMarks = (node) => {
    let count = node.role === 'mark' ? (node.items || []).length : 0;
    for (const item of node.items || []) {
      if (item.items) count += countMarks(item);
    }
    return count;
  };
  const charts = await Promise.all(window.__charts);
  const out = {};
  for (const {id, view} of charts) {
    await view.runAsync();
    const canvas = document.querySelector(`#${id} canvas, #${id} svg`);
    out[id.replace('chart-', '')] = {
      rows: view.data('source_0'),
      marks: countMarks(view.scenegraph().root),
      drawn: canvas ? canvas.getBoundingClientRect().width * canvas.getBoundingClientRect().height : 0,
    };
  }
  return out;
}
"""

VEGA_CHARTS = {"callbacks-per-hour", "cost-per-day", "failover-rate", "top-error-codes",
               "missing-callbacks-per-day"}
# Charts empty until Vonage's records are imported (tests/test_reconciliation_datasette.py).
NEEDS_VONAGE_RECORDS = {"missing-callbacks-per-day"}


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def open_dashboard(browser, url):
    """The dashboard page with its charts rendered; also what went wrong on the way."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    problems = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("console", lambda m: m.type == "error" and problems.append(f"console: {m.text}"))

    def local_only(route):
        if route.request.url.startswith("http://127.0.0.1:"):
            route.continue_()
        else:
            problems.append(f"outside request: {route.request.url}")
            route.abort()

    page.route("**/*", local_only)
    page.add_init_script(CAPTURE_CHARTS)
    page.goto(url)
    page.wait_for_function(f"window.__charts && window.__charts.length === {len(VEGA_CHARTS)}")
    charts = page.evaluate(READ_CHARTS)
    page.wait_for_load_state("networkidle")
    return page, charts, problems


@needs_chromium
def test_dashboard_charts_render_with_the_stored_data(server, filled, browser):
    path, bodies, uuids = filled
    page, charts, problems = open_dashboard(browser, f"{server.url}/-/dashboards/callbacks")
    try:
        assert problems == []
        assert set(charts) == VEGA_CHARTS
        for name, chart in charts.items():
            if name not in NEEDS_VONAGE_RECORDS:
                assert chart["rows"] and chart["marks"] > 0 and chart["drawn"] > 0, (name, chart)

        # Callbacks by status over time: every stored callback, once. The data spans from
        # March 2025 to today: more than four years gives yearly buckets, else monthly.
        periods = charts["callbacks-per-hour"]["rows"]
        assert sum(row["callbacks"] for row in periods) == len(bodies)
        assert {row["unit"] for row in periods} <= {"month", "year"}
        assert len(periods) < 100

        # Cost per day per channel and currency, exact in the tooltip, one bar per row.
        cost = charts["cost-per-day"]
        by_day = {(r["period"], r["series"]): r["cost"] for r in cost["rows"]}
        assert {r["unit"] for r in cost["rows"]} == {"day"}
        assert by_day == {
            ("2025-03-01", "sms (EUR)"): "0.0333", ("2025-03-01", "whatsapp (EUR)"): "0.002",
            ("2025-03-02", "sms (EUR)"): "0.3", ("2025-03-02", "sms (USD)"): "0.05",
            ("2025-03-03", "sms (EUR)"): "0.0999", ("2025-03-04", "sms (EUR)"): "0.0666",
        }
        assert cost["marks"] == len(cost["rows"])

        # Failover rate per day: A (01), F of F/G/G2 (03), J of J/T (04) needed failover.
        march = f"{server.url}/-/dashboards/callbacks?from=2025-03-01&to=2025-03-04"
        march_page, march_charts, march_problems = open_dashboard(page.context.browser, march)
        march_page.close()
        assert march_problems == []
        hourly = march_charts["callbacks-per-hour"]["rows"]
        assert {row["unit"] for row in hourly} == {"day"}  # four days of data
        march_1 = {row["status"]: row["callbacks"] for row in hourly
                   if row["period"] == "2025-03-01T00:00:00Z"}
        assert march_1 == {"submitted": 2, "delivered": 2, "read": 1, "final report completed": 1}
        rate = {r["period"]: r["failover_pct"] for r in march_charts["failover-rate"]["rows"]}
        assert {day: rate[day] for day in ("2025-03-01", "2025-03-02", "2025-03-03", "2025-03-04")} == {
            "2025-03-01": 100.0, "2025-03-02": 0.0, "2025-03-03": 33.3, "2025-03-04": 50.0}

        # Top error codes.
        errors = charts["top-error-codes"]
        assert [(r["error"], r["channel"], r["callbacks"]) for r in errors["rows"]] == [
            ("1330 Delivery failed", "sms", 2),
            ("1120 Illegal Sender Address", "viber_service_msg", 1),
        ]
        assert errors["marks"] == 2

        # The figures above the charts.
        dispatches = len([name for name in uuids if "." not in name])
        assert page.inner_text("#chart-dispatches").strip() == str(dispatches)
        assert page.inner_text("#chart-callbacks").strip() == str(len(bodies))
        # A, F and J needed failover; A, B, C, H, F, J and T were delivered.
        assert page.inner_text("#chart-failover-overall").strip() == f"{round(300 / dispatches, 1)} %"
        assert page.inner_text("#chart-delivered-overall").strip() == f"{round(700 / dispatches, 1)} %"

        ARTIFACTS.mkdir(exist_ok=True)
        screenshot = ARTIFACTS / "dashboard.png"
        page.screenshot(path=str(screenshot), full_page=True)
        assert screenshot.stat().st_size > 20_000
    finally:
        page.close()


@needs_chromium
def test_dashboard_filters_narrow_every_chart(server, browser):
    page, charts, problems = open_dashboard(
        browser, f"{server.url}/-/dashboards/callbacks?from=2025-03-03&to=2025-03-03&channel=sms")
    try:
        assert problems == []
        errors = charts["top-error-codes"]["rows"]
        assert [(r["error"], r["callbacks"]) for r in errors] == [("1330 Delivery failed", 2)]
        assert {r["period"] for r in charts["cost-per-day"]["rows"]} == {"2025-03-03"}
        hourly = charts["callbacks-per-hour"]["rows"]
        assert {r["period"][:10] for r in hourly} == {"2025-03-03"} and {r["unit"] for r in hourly} == {"hour"}
        # The channel filter counts a dispatch under any of its legs: F tried Viber first and
        # fell back to SMS, so it counts under sms with G and G2; one of three failed over.
        assert [(r["period"], r["dispatches"], r["failover_pct"])
                for r in charts["failover-rate"]["rows"]] == [("2025-03-03", 3, 33.3)]
        assert page.inner_text("#chart-dispatches").strip() == "3"
        assert page.inner_text("#chart-failover-overall").strip() == "33.3 %"
        # SMS callbacks of F, G, G2 (2 each) and the final reports of F and G (G2 has none).
        assert page.inner_text("#chart-callbacks").strip() == "8"
        assert "any leg" in page.inner_text("body")
    finally:
        page.close()


# --- more than 1,000 result rows: every export complete, every chart bounded ----------------

MANY = 1_100  # dispatches, one every 55 minutes: 1,100 distinct hours over 42 days


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    """The real `receiver datasette` over 1,100 dispatches posted to the receiver."""
    directory = tmp_path_factory.mktemp("many")
    path = directory / "many.db"
    datasette_data.post_all(path, datasette_data.many_bodies(MANY))
    process = start(path, directory / "datasette.log")
    yield process
    process.stop()


def csv_rows(url):
    with requests.get(url, timeout=60) as response:
        assert response.status_code == 200, (url, response.text[:500])
        return list(csv.reader(io.StringIO(response.text, newline="")))


@pytest.mark.parametrize("path", [
    "reconciliation_discrepancies.csv?_stream=on&_size=max",
    "messages_stuck_at_submitted.csv?_stream=on&_size=max&hours_submitted__gte=1",
    "dispatches_without_final_report.csv?_stream=on&_size=max&hours_waiting__gte=24",
    "billing_lines.csv?_stream=on&_size=max",
    "billing_by_workflow.csv?_stream=on&_size=max",
])
def test_the_readmes_exports_give_every_row_past_1000(many, path):
    """What the README tells a user to export streams every row over HTTP, each once."""
    header, *rows = csv_rows(f"{many.url}/many/{path}")
    assert len(rows) == MANY, (path, len(rows))
    key = header.index("dispatch_uuid" if "dispatch_uuid" in header else "workflow_id")
    assert len({row[key] for row in rows}) == MANY


def test_billing_by_day_streams_and_adds_up_exactly(many):
    header, *rows = csv_rows(f"{many.url}/many/billing_by_day.csv?_stream=on&_size=max")
    assert {row[header.index("currency")] for row in rows} == {"EUR"}
    total = sum(Decimal(row[header.index("total")]) for row in rows)
    assert total == Decimal("0.05") * MANY


@needs_chromium
def test_every_chart_stays_bounded_and_complete_over_any_period(many, browser):
    """1,100 hours of callbacks: the time charts switch to coarser buckets and still count
    every callback; no chart comes near Datasette's 1,000-row limit."""
    page, charts, problems = open_dashboard(browser, f"{many.url}/-/dashboards/callbacks")
    try:
        assert problems == []
        for name, chart in charts.items():  # (no errors in this data: no error chart rows)
            assert len(chart["rows"]) < 500, (name, len(chart["rows"]))
            assert name in {"top-error-codes", *NEEDS_VONAGE_RECORDS} or chart["rows"] and chart["drawn"] > 0, name
        callbacks = charts["callbacks-per-hour"]["rows"]
        assert sum(row["callbacks"] for row in callbacks) == MANY
        assert {row["unit"] for row in callbacks} == {"day"}  # 42 days of data
        cost = charts["cost-per-day"]["rows"]
        assert sum(Decimal(row["cost"]) for row in cost) == Decimal("0.05") * MANY
        assert sum(row["dispatches"] for row in charts["failover-rate"]["rows"]) == MANY
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard-many.png"), full_page=True)
    finally:
        page.close()
    # Two days, then one: hour buckets; a year: weeks.
    for query, unit, most in (("from=2025-01-10&to=2025-01-11", "hour", 48),
                              ("from=2025-01-01&to=2025-12-31", "day", 92)):
        page, charts, problems = open_dashboard(browser, f"{many.url}/-/dashboards/callbacks?{query}")
        try:
            assert problems == []
            rows = charts["callbacks-per-hour"]["rows"]
            assert {row["unit"] for row in rows} == {unit} and len(rows) <= most, (query, len(rows))
        finally:
            page.close()


@needs_chromium
def test_the_month_totals_card_and_its_links(server, browser):
    """The card of charges per month, channel and currency shows its table with the unpriced
    count, and the dashboard's links lead to the views in the served database."""
    page, _, problems = open_dashboard(browser, f"{server.url}/-/dashboards/callbacks")
    try:
        card = page.locator("#chart-billing-by-month table")
        card.wait_for()
        headers = card.locator("th").all_inner_texts()
        assert headers == ["month", "api", "channel", "currency", "messages", "unpriced_messages", "total"]
        assert card.locator("tbody tr").count() > 0
        ARTIFACTS.mkdir(exist_ok=True)
        page.locator("#card-billing-by-month").screenshot(path=str(ARTIFACTS / "dashboard-month-totals.png"))
        page.locator("#card-where-to-look a", has_text="billing_by_month").click()
        page.wait_for_url(re.compile(r"/dispatch/billing_by_month$"))
        assert page.locator("h1").inner_text().startswith("billing_by_month")
        assert problems == []
    finally:
        page.close()
