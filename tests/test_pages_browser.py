"""The Datasette pages a person reads, in the real `receiver datasette` and real headless Chromium.

Over a store with more than 1,000 rows (the datasette_data scenario, `receiver simulate`, a few
priced dispatches and rejected callbacks, one with a 100 KB body), at 1400 x 1000 px:

- a table page opens with its rows, not with the column glossary (folded in a <details> block
  and in each header's tooltip), and a row of a list is one line high;
- a long body is shortened to one line in the rejected_callbacks list, with its length linking
  to the row page, where it is whole and wrapped;
- the money cells of a row read alike (0.0120 next to 0.0120, not 0.012), while JSON and CSV keep
  the stored text;
- sorting by a money text column (price) sorts by its exact twin (price_nano).

Screenshots of the pages: test-artifacts/pages-*.png.
"""

import importlib.util
import json
import subprocess
from decimal import Decimal

import pytest
import requests

import datasette_data
from datasette_data import uid
from payloads import final_report, status
from testing.processes import ROOT, VENV_BIN
from test_dashboard_browser import ARTIFACTS, PAGE_TIMEOUT_MS, browser, needs_chromium, start  # noqa: F401

from receiver import create_app

DB_NAME = "pages"
VIEWPORT = {"width": 1400, "height": 1000}
BIG_BODY_BYTES = 100_000
SIMULATED_DISPATCHES = 800
# Money columns of the pages checked below: stored text, shown with at least 4 decimals.
MONEY = {
    "messages": ("price", "final_report_price"),
    "dispatches": ("final_price", "messages_price"),
    "status_events": ("price",),
}
# (dispatch, message, price): M is the row (0.0120 from Vonage next to the summed
# 0.012); P and Q sort apart as numbers (12.5 > 9.75) but not as text ('9.75' > '12.5').
PRICED = (("M", "M.sms", "0.0120"), ("P", "P.sms", "12.5"), ("Q", "Q.sms", "9.75"))


def big_body():
    """A refused callback (no timestamp) of a little over 100 KB, as one long JSON line."""
    body = status(uid("BIG.sms"), uid("BIG"), "delivered", channel="sms")
    del body["timestamp"]
    body["client_ref"] = "x" * BIG_BODY_BYTES
    return json.dumps(body)


def post_extras(db_path):
    """The priced dispatches and the rejected callbacks, posted to the receiver."""
    client = create_app({"db_path": str(db_path)}).test_client()
    bodies = []
    for dispatch, message, price in PRICED:
        d, m = uid(dispatch), uid(message)
        bodies += [
            status(m, d, "submitted", channel="sms", timestamp="2025-03-05T10:00:00.000Z",
                   price=price),
            status(m, d, "delivered", channel="sms", timestamp="2025-03-05T10:00:02.000Z"),
            final_report(d, [(m, "sms", "delivered", price)], price=price,
                         timestamp="2025-03-05T10:00:03.000Z"),
        ]
    for body in bodies:
        response = client.post("/webhooks/vonage", json=body)
        assert response.status_code == 200, response.get_json()
    rejected = [big_body(), "not json {", json.dumps({"status": "bogus"})]
    for body in rejected:
        response = client.post("/webhooks/vonage", data=body, content_type="application/json")
        assert response.status_code in (400, 422), response.get_json()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("pages") / f"{DB_NAME}.db"
    bodies, _ = datasette_data.scenario_bodies()
    datasette_data.post_all(path, bodies)
    post_extras(path)
    subprocess.run(
        [str(VENV_BIN / "receiver"), "simulate", "--db", str(path),
         "--dispatches", str(SIMULATED_DISPATCHES), "--seed", "7"],
        cwd=ROOT, check=True, capture_output=True, timeout=120,
    )
    return path


@pytest.fixture(scope="module")
def server(store, tmp_path_factory):
    process = start(store, tmp_path_factory.mktemp("logs") / "datasette.log")
    yield process
    process.stop()


@pytest.fixture
def page(browser):  # noqa: F811
    page = browser.new_page(viewport=VIEWPORT)
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    yield page
    page.close()


def rows_json(server, path, **params):
    response = requests.get(f"{server.url}/{DB_NAME}/{path}.json",
                            params={"_shape": "objects", **params}, timeout=30)
    assert response.status_code == 200, response.text[:500]
    return response.json()["rows"]


def screenshot(page, name):
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"pages-{name}.png"))


# The first data row's box, the table's and the document's widths.
LAYOUT = """() => {
  const table = document.querySelector('table.rows-and-columns');
  const row = table && table.querySelector('tbody tr');
  const box = row && row.getBoundingClientRect();
  return {rowTop: box && box.top, rowHeight: box && box.height,
          tableWidth: table && table.getBoundingClientRect().width,
          pageWidth: document.documentElement.scrollWidth};
}"""


def test_the_stores_lists_hold_more_than_1000_rows(server):
    counts = {
        table: requests.get(f"{server.url}/{DB_NAME}/{table}.json", params={"_size": 1},
                            timeout=30).json()["filtered_table_rows_count"]
        for table in ("status_events", "messages")
    }
    assert min(counts.values()) > 1000, counts


@needs_chromium
@pytest.mark.parametrize("table", ["messages", "status_events", "dispatches", "callbacks",
                                   "rejected_callbacks"])
def test_a_table_page_opens_with_its_rows_and_folds_the_glossary(server, page, table):
    page.goto(f"{server.url}/{DB_NAME}/{table}")
    layout = page.evaluate(LAYOUT)
    screenshot(page, table)
    # Before: the glossary pushed the first row 1,250-1,690 px down.
    assert layout["rowTop"] < 450, layout
    # The glossary is one click away, folded, and the default one is not shown.
    glossary = page.locator("details.receiver-glossary")
    assert glossary.count() == 1 and glossary.get_attribute("open") is None
    assert glossary.locator("summary").is_visible()
    assert not page.locator("section.content > dl.column-descriptions").is_visible()
    assert not glossary.locator("dt").first.is_visible()
    glossary.locator("summary").click()
    assert glossary.locator("dt").first.is_visible()
    # Each column's description is its header's tooltip.
    metadata = requests.get(f"{server.url}/-/metadata.json", timeout=10).json()
    columns = metadata["databases"][DB_NAME]["tables"][table]["columns"]
    titles = page.eval_on_selector_all(
        "table.rows-and-columns thead th",
        "ths => Object.fromEntries(ths.map(th => [th.dataset.column, th.title]))")
    described = [name for name in titles if name in columns]
    assert described == list(titles), (titles, columns)
    for name in described:
        assert titles[name].startswith(columns[name]), (name, titles[name])


@needs_chromium
@pytest.mark.parametrize("table", ["messages", "status_events", "dispatches"])
def test_uuids_and_times_do_not_wrap_so_a_screen_holds_many_rows(server, page, table):
    page.goto(f"{server.url}/{DB_NAME}/{table}")
    heights = page.eval_on_selector_all(
        "table.rows-and-columns tbody tr", "rows => rows.map(r => r.getBoundingClientRect().height)")
    # Before: 81-177 px a row (a uuid over four lines, its links over three more).
    assert len(heights) > 20 and max(heights) < 45, heights[:5]
    page.evaluate("document.querySelector('table.rows-and-columns').scrollIntoView()")
    screenshot(page, f"{table}-rows")


@needs_chromium
def test_a_long_body_is_shortened_in_the_list_and_whole_on_its_row_page(server, page):
    big = next(row for row in rows_json(server, "rejected_callbacks", _size=100)
               if len(row["body"]) > BIG_BODY_BYTES)
    page.goto(f"{server.url}/{DB_NAME}/rejected_callbacks")
    layout = page.evaluate(LAYOUT)
    screenshot(page, "rejected_callbacks-list")
    assert layout["pageWidth"] <= VIEWPORT["width"], layout
    # Before: the 100 KB body made the table 23,000 px wide and its row 500 px high.
    assert layout["tableWidth"] < 2 * VIEWPORT["width"], layout
    cell = page.locator(f"table.rows-and-columns tbody tr:has(td.col-id a:text-is('{big['id']}')) "
                        "td.col-body")
    text = cell.inner_text()
    assert text.startswith(big["body"][:100]) and len(text) < 250, text[:300]
    assert cell.locator(".receiver-more a").inner_text() == f"{len(big['body']):,} characters"
    box = cell.bounding_box()
    assert box["width"] < 450, box
    # Every row of the list is one line (before: 500 px).
    heights = page.eval_on_selector_all(
        "table.rows-and-columns tbody tr", "rows => rows.map(r => r.getBoundingClientRect().height)")
    assert len(heights) == 3 and max(heights) < 45, heights
    # The note links to the row page, where the body is whole and wrapped.
    cell.locator(".receiver-more a").click()
    page.wait_for_load_state()
    assert page.url == f"{server.url}/{DB_NAME}/rejected_callbacks/{big['id']}"
    whole = page.locator("table.rows-and-columns td.col-body")
    assert whole.inner_text() == big["body"]
    assert whole.bounding_box()["width"] <= VIEWPORT["width"]
    assert page.evaluate(LAYOUT)["pageWidth"] <= VIEWPORT["width"]
    # The fields that explain it (the reason, the error) come before the huge body.
    for field in ("reason", "error"):
        assert page.locator(f"td.col-{field}").bounding_box()["y"] < whole.bounding_box()["y"]
    screenshot(page, "rejected_callbacks-row")


def money_cells(page):
    """{column: (text shown, tooltip)} of each money cell of the first row of the page."""
    return page.eval_on_selector_all(
        "table.rows-and-columns tbody tr:first-child .receiver-money",
        "spans => Object.fromEntries(spans.map(s => [s.closest('td').className.match(/col-(\\S+)/)[1],"
        " [s.innerText.trim(), s.title]]))")


@needs_chromium
def test_money_cells_of_a_row_read_alike(server, page):
    m = uid("M")
    stored = rows_json(server, "dispatches", dispatch_uuid=m)[0]
    # The record keeps Vonage's text and the exact sum as they are.
    assert (stored["final_price"], stored["messages_price"]) == ("0.0120", "0.012")
    csv = requests.get(f"{server.url}/{DB_NAME}/dispatches.csv", params={"dispatch_uuid": m},
                       timeout=10).text
    assert "0.0120" in csv and ",0.012," in csv

    page.goto(f"{server.url}/{DB_NAME}/dispatches?dispatch_uuid={m}")
    assert money_cells(page) == {"final_price": ["0.0120", ""],
                                 "messages_price": ["0.0120", "stored as 0.012"]}
    screenshot(page, "dispatches-money")
    page.goto(f"{server.url}/{DB_NAME}/dispatches/{m}")
    assert {column: text for column, (text, _) in money_cells(page).items()} == {
        "final_price": "0.0120", "messages_price": "0.0120"}

    # Every money cell of every listed row: the exact amount, at least four decimals.
    for table, columns in MONEY.items():
        page.goto(f"{server.url}/{DB_NAME}/{table}?_size=200")
        shown = page.eval_on_selector_all(
            "table.rows-and-columns tbody tr",
            "rows => rows.map(r => Array.from(r.querySelectorAll('td')).map(td => "
            "[td.className.match(/col-(\\S+)/)[1], td.innerText.trim()]))")
        raw = rows_json(server, table, _size=200)
        assert len(shown) == len(raw) == 200
        seen = 0
        for row, cells in zip(raw, shown):
            cells = dict(cells)
            for column in columns:
                if row[column] is None:
                    continue
                text = cells[column]
                whole, _, fraction = text.partition(".")
                assert Decimal(text) == Decimal(row[column]) and len(fraction) >= 4, (
                    table, column, row[column], text)
                seen += 1
        assert seen > 50, (table, seen)


def test_sorting_by_a_price_sorts_by_its_exact_twin(server):
    # Before: 400 "Cannot sort table by price".
    page = requests.get(f"{server.url}/{DB_NAME}/messages", params={"_sort_desc": "price"},
                        timeout=30)
    assert page.status_code == 200 and "_sort_desc=price_nano" in page.url
    assert 'sorted by price_nano descending' in page.text

    rows = requests.get(f"{server.url}/{DB_NAME}/messages.json",
                        params={"_sort_desc": "price", "_shape": "objects", "_size": 5},
                        timeout=30).json()["rows"]
    assert [row["price"] for row in rows[:2]] == ["12.5", "9.75"]
    nanos = [row["price_nano"] for row in rows]
    assert nanos == sorted(nanos, reverse=True)

    ascending = requests.get(f"{server.url}/{DB_NAME}/dispatches.json",
                             params={"_sort": "final_price", "final_price__notblank": 1,
                                     "_shape": "objects", "_size": 1000}, timeout=30)
    assert "_sort=final_price_nano" in ascending.url
    nanos = [row["final_price_nano"] for row in ascending.json()["rows"]]
    assert len(nanos) > 100 and nanos == sorted(nanos)

    # Other sorts are left alone.
    plain = requests.get(f"{server.url}/{DB_NAME}/messages", params={"_sort": "channel"},
                         allow_redirects=False, timeout=30)
    assert plain.status_code == 200


@needs_chromium
def test_the_price_header_sorts_by_price_nano(server, page):
    page.goto(f"{server.url}/{DB_NAME}/status_events?price__notblank=1")
    header = page.locator("table.rows-and-columns thead th.col-price")
    assert "Sorts by price_nano" in header.get_attribute("title")
    header.locator("a").click()
    page.wait_for_load_state()
    assert "_sort=price_nano" in page.url
    assert "▼" in header.inner_text()
    prices = page.eval_on_selector_all(
        "table.rows-and-columns tbody td.col-price_nano",
        "tds => tds.map(td => td.innerText.trim()).filter(Boolean).map(Number)")
    assert prices and prices == sorted(prices)


def load_pages_plugin():
    path = ROOT / "config" / "plugins" / "receiver_pages.py"
    spec = importlib.util.spec_from_file_location("receiver_pages_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("stored, shown", [
    ("0.0120", "0.0120"), ("0.012", "0.0120"), ("0.001", "0.0010"), ("0.0333", "0.0333"),
    ("12.5", "12.5000"), ("10", "10.0000"), ("0", "0.0000"), ("0.000012345", "0.000012345"),
    ("-0.0167", "-0.0167"), ("99999.123456789", "99999.123456789"),
    ("EUR", None), ("1e-3", None), ("", None), (None, None), (0.012, None),
])
def test_the_money_display_rule_is_exact_text(stored, shown):
    assert load_pages_plugin().display_money(stored) == shown
