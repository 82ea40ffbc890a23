"""Every linked cell of every table, view and row page reads as its value and its links, in the
real `receiver datasette` and in headless Chromium.

A linked cell is one receiver_links.py renders (dispatch_uuid, message_uuid, workflow_id, the
counts that link to their rows) or one Datasette renders as a link (a URL, such as a Messages
error_type). Before: a linked value over 40 characters (every Messages workflow_id, every URL)
went through _table.html's long-text layout, which put its link markup inside title="…", so the
browser showed the value twice with a stray `)">` (114 cells of messages?api=messages).

Over the datasette_data scenario plus simulated traffic of both APIs. Screenshots:
test-artifacts/links-*.png.
"""

import subprocess
from html.parser import HTMLParser
from urllib.parse import urlencode

import pytest
import requests

import datasette_data
from testing.processes import ROOT, VENV_BIN
from test_dashboard_browser import ARTIFACTS, PAGE_TIMEOUT_MS, browser, needs_chromium, start  # noqa: F401

DB_NAME = "links"
UUID_COLUMNS = ("dispatch_uuid", "message_uuid", "workflow_id")
# The link labels after each kind of value (receiver_links.py).
LABELS = {
    "dispatch": "(messages · events · timeline)",
    "message": "(events · history)",
    "workflow": "(legs · events)",
}
COUNT_COLUMNS = {"dispatches": ("message_count", "final_report_count"), "messages": ("event_count",)}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    path = tmp_path_factory.mktemp("links") / f"{DB_NAME}.db"
    datasette_data.fill(path)
    subprocess.run(
        [str(VENV_BIN / "receiver"), "simulate", "--db", str(path), "--api", "mixed",
         "--dispatches", "120", "--seed", "5"],
        cwd=ROOT, check=True, capture_output=True, timeout=120,
    )
    process = start(path, tmp_path_factory.mktemp("logs") / "datasette.log")
    yield process
    process.stop()


class Cells(HTMLParser):
    """The <td> cells of a page's rows-and-columns table: their column, text and links, and
    every title attribute met inside the table's body."""

    def __init__(self):
        super().__init__()
        self.cells, self.titles = [], []
        self._in_body = False
        self._cell = self._link = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tbody":
            self._in_body = True
        if not self._in_body:
            return
        if "title" in attrs:
            self.titles.append(attrs["title"])
        if tag == "td":
            column = next((c[4:] for c in attrs.get("class", "").split() if c.startswith("col-")), None)
            self._cell = {"column": column, "text": "", "links": []}
            self.cells.append(self._cell)
        elif tag == "a" and self._cell is not None:
            self._link = {"href": attrs.get("href"), "text": ""}
            self._cell["links"].append(self._link)

    def handle_endtag(self, tag):
        if tag == "tbody":
            self._in_body = False
        elif tag == "td":
            self._cell = None
        elif tag == "a":
            self._link = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell["text"] += data
            if self._link is not None:
                self._link["text"] += data


def parse(html):
    parser = Cells()
    parser.feed(html)
    return parser


def get_json(server, path, **params):
    response = requests.get(f"{server.url}/{DB_NAME}/{path}.json",
                            params={"_shape": "objects", **params}, timeout=30)
    assert response.status_code == 200, (path, params, response.text[:300])
    return response.json()["rows"]


def expected_text(table, column, row, primary_keys=()):
    """What a linked cell reads as, for the row's value (a row's own key links to its row)."""
    value = row[column]
    if column in UUID_COLUMNS and column not in primary_keys:
        kind = column.split("_")[0]
        if column == "workflow_id":
            kind = "dispatch" if row.get("api") == "dispatch" else "workflow"
        return f"{value} {LABELS[kind]}"
    return str(value)


def linked_columns(server, table, columns):
    """The linked columns of a table or view: uuids, counts, and columns holding URLs."""
    linked = [c for c in columns if c in UUID_COLUMNS or c in COUNT_COLUMNS.get(table, ())]
    for column in columns:
        if column in linked:
            continue
        if get_json(server, table, **{f"{column}__startswith": "http", "_size": 1}):
            linked.append(column)
    return linked


def tables_and_views(server):
    database = requests.get(f"{server.url}/{DB_NAME}.json", timeout=30).json()
    return [(t["name"], t["columns"], t["primary_keys"]) for t in database["tables"]
            if not t["hidden"]] + [
        (v["name"], requests.get(f"{server.url}/{DB_NAME}/{v['name']}.json",
                                 params={"_size": 0}, timeout=30).json()["columns"], ())
        for v in database["views"]]


def check_page(server, table, column, params, primary_keys):
    """The HTML list against its JSON: every cell of ``column`` reads as its value and links."""
    rows = get_json(server, table, **params)
    html = requests.get(f"{server.url}/{DB_NAME}/{table}?{urlencode(params)}", timeout=30)
    assert html.status_code == 200
    page = parse(html.text)
    assert not [t for t in page.titles if "<" in t or "href=" in t], (table, column)
    cells = [cell for cell in page.cells if cell["column"] == column]
    assert len(cells) == len(rows) > 0, (table, column, params)
    for row, cell in zip(rows, cells):
        text = " ".join(cell["text"].split())
        assert ')">' not in text, (table, column, text)
        assert text == expected_text(table, column, row, primary_keys), (table, column, text)
        value = str(row[column])
        assert cell["links"] and cell["links"][0]["text"] == value, (table, column, cell)
    return len(cells)


def test_every_linked_column_of_every_table_and_view_reads_as_its_value_and_links(server):
    checked = {}
    for table, columns, primary_keys in tables_and_views(server):
        for column in linked_columns(server, table, columns):
            # Each API separately where there is one (a Dispatch workflow_id links elsewhere).
            apis = [{"api": api} for api in ("dispatch", "messages")] if "api" in columns else [{}]
            for api in apis:
                params = {f"{column}__notblank": 1, "_size": 100, **api}
                if not get_json(server, table, **{**params, "_size": 1}):
                    continue
                checked[(table, column, api.get("api"))] = check_page(server, table, column, params,
                                                                      primary_keys)
    # Every table and view named in the issue, and both kinds of workflow_id.
    for table in ("messages", "status_events", "billing_lines", "billing_by_workflow",
                  "workflow_costs"):
        assert (table, "workflow_id", "messages") in checked, sorted(checked)
    assert ("billing_lines", "workflow_id", "dispatch") in checked
    assert ("status_events", "error_type", "messages") in checked  # a URL
    assert ("dispatches", "message_count", None) in checked


def test_no_cell_of_the_messages_list_carries_markup_in_a_tooltip(server):
    html = requests.get(f"{server.url}/{DB_NAME}/messages", params={"api": "messages"},
                        timeout=30).text
    assert 'title="<' not in html
    assert len(parse(html).cells) > 50


def test_a_row_page_shows_each_linked_value_once(server):
    pages = 0
    for table, key in (("messages", "message_uuid"), ("workflows", "workflow_id"),
                       ("status_events", "id")):
        for row in get_json(server, table, api="messages", _size=3, workflow_id__notblank=1):
            html = requests.get(f"{server.url}/{DB_NAME}/{table}/{row[key]}", timeout=30)
            assert html.status_code == 200
            page = parse(html.text)
            assert not [t for t in page.titles if "<" in t], table
            cells = {cell["column"]: cell for cell in page.cells}
            for column in ("workflow_id", "message_uuid", "error_type"):
                if row.get(column):
                    text = " ".join(cells[column]["text"].split())
                    assert text.count(str(row[column])) == 1 and ')">' not in text, (table, text)
            pages += 1
    assert pages == 9


@needs_chromium
@pytest.mark.parametrize("table, params", [
    ("messages", {"api": "messages"}),
    ("status_events", {"api": "messages", "error_type__notblank": 1}),
    ("billing_by_workflow", {"api": "messages"}),
])
def test_linked_cells_in_chromium_read_as_their_value_and_links(server, browser, table, params):  # noqa: F811
    rows = get_json(server, table, _size=100, **params)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    try:
        page.goto(f"{server.url}/{DB_NAME}/{table}?{urlencode({'_size': 100, **params})}")
        for column in ("workflow_id", "error_type"):
            if column not in rows[0]:
                continue
            shown = page.eval_on_selector_all(
                f"table.rows-and-columns tbody td.col-{column}",
                "tds => tds.map(td => [td.innerText.trim(), td.title, "
                "td.querySelector('a') && td.querySelector('a').getBoundingClientRect().width])")
            expected = [expected_text(table, column, row) if row[column] else "" for row in rows]
            assert [" ".join(text.split()) for text, _, _ in shown] == expected, column
            assert all(not title for _, title, _ in shown)
            assert all(width for (text, _, width) in shown if text), column
        ARTIFACTS.mkdir(exist_ok=True)
        column = "workflow_id" if "workflow_id" in rows[0] else "error_type"
        page.locator(f"table.rows-and-columns tbody td.col-{column}").first.scroll_into_view_if_needed()
        page.screenshot(path=str(ARTIFACTS / f"links-{table}.png"))
    finally:
        page.close()
