"""Datasette over the event store: metadata, canned queries, views, links, CSV, access.

The database is filled by posting real callback bodies to the receiver (Flask test client),
then read through Datasette's own ASGI client with config/metadata.yml and config/plugins, the
settings `receiver datasette` passes, and a file name other than events.db (so the plugin that
maps the metadata onto RECEIVER_DB's name is exercised too).
"""

import asyncio
import base64
import re
import sqlite3
from contextlib import closing
from pathlib import Path
from urllib.parse import parse_qsl

import pytest
import yaml
from click.testing import CliRunner
from datasette.app import Datasette
from datasette.cli import cli as datasette_cli
from markupsafe import escape

import datasette_data
from datasette_data import uid
from payloads import status

from receiver import browse, money

ROOT = Path(__file__).resolve().parent.parent
METADATA = ROOT / "config" / "metadata.yml"
PLUGINS_DIR = ROOT / "config" / "plugins"
DB_NAME = "dispatch-store"
MARCH = {"from": "2025-03-01", "to": "2025-03-04"}
PASSWORD = "correct horse battery staple"

# Plugins that only read; a plugin outside this list (datasette-write, ...) fails the test.
READ_ONLY_PLUGINS = {
    "datasette-auth-passwords", "datasette-block-robots", "datasette-dashboards",
    "datasette-leaflet", "datasette-render-markdown", "receiver_guard.py", "receiver_links.py",
    "receiver_metadata.py", "receiver_pages.py", "receiver_csv.py",
}


def command_settings():
    """The --setting values `receiver datasette` passes, as Datasette's Python API takes them."""
    values = {"on": True, "off": False}
    return {
        name: values[value] if value in values else int(value)
        for name, value in browse.SETTINGS
    }


class Client:
    """Datasette's ASGI client, called synchronously on one event loop."""

    def __init__(self, path):
        with open(METADATA) as file:
            metadata = yaml.safe_load(file)
        self.ds = Datasette([str(path)], metadata=metadata, plugins_dir=str(PLUGINS_DIR),
                            settings=command_settings())
        self.loop = asyncio.new_event_loop()

    @classmethod
    def of_copy(cls, db_path):
        """A client of a copy of ``db_path`` named as the metadata expects (DB_NAME)."""
        served = Path(db_path).parent / f"{DB_NAME}.db"
        with closing(sqlite3.connect(db_path)) as source, closing(sqlite3.connect(served)) as copy:
            source.backup(copy)
        return cls(served)

    def get(self, path, **kwargs):
        return self.loop.run_until_complete(self.ds.client.get(path, **kwargs))

    def post(self, path, **kwargs):
        return self.loop.run_until_complete(self.ds.client.post(path, **kwargs))

    def json(self, path, **params):
        response = self.get(path, params=params)
        assert response.status_code == 200, (path, response.status_code, response.text[:500])
        return response.json()

    def query(self, name, **params):
        """Rows of a canned query, as dicts."""
        return self.json(f"/{DB_NAME}/{name}.json", _shape="objects", **params)["rows"]

    def close(self):
        for database in self.ds.databases.values():
            database.close()
        self.ds.executor.shutdown(wait=True)
        self.loop.run_until_complete(self.loop.shutdown_default_executor())
        self.loop.close()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """The scenario of datasette_data, posted once for the module: (path, uuids)."""
    path = tmp_path_factory.mktemp("datasette") / f"{DB_NAME}.db"
    with pytest.MonkeyPatch.context() as mp:
        for name in ("RECEIVER_SYNCHRONOUS", "RECEIVER_MAX_BATCH", "RECEIVER_DB"):
            mp.delenv(name, raising=False)
        uuids = datasette_data.fill(path)
    return path, uuids


@pytest.fixture
def u(store):
    return store[1]


@pytest.fixture
def open_access(monkeypatch):
    monkeypatch.delenv("DATASETTE_PASSWORD_HASH", raising=False)


@pytest.fixture
def client(store, open_access):
    c = Client(store[0])
    yield c
    c.close()


def table_rows(client, table, **params):
    return client.json(f"/{DB_NAME}/{table}.json", _shape="objects", _size="max", **params)["rows"]


# --- canned queries --------------------------------------------------------------------------


def named_parameters(sql):
    return set(re.findall(r"(?<!:):([A-Za-z_][A-Za-z0-9_]*)", sql))


def test_every_canned_query_is_described_read_only_and_declares_its_parameters():
    with open(METADATA) as file:
        queries = yaml.safe_load(file)["databases"]["events"]["queries"]
    # What must export in full is a view; the queries left are bounded, and say they are limited.
    assert set(queries) == {
        "dispatch_timeline", "message_history", "error_codes_by_channel", "failover_effectiveness",
    }
    for name, query in queries.items():
        description = query.get("description_html", "")
        assert query.get("title") and len(description) > 40, name
        assert "at most 1,000 rows" in description and '<a href="' in description, name
        assert not query.get("write"), f"{name} must not write"
        assert set(query["params"]) == named_parameters(query["sql"]), name


def test_dispatch_timeline_gives_every_callback_in_order_with_steps_and_gaps(client, u):
    rows = client.query("dispatch_timeline", dispatch_uuid=u["A"])
    got = [(r["seq"], r["timestamp"], r["kind"], r["step"], r["channel"], r["message_uuid"],
            r["status"], r["price"]) for r in rows]
    assert got == [
        (1, "2025-03-01T10:00:00.000000Z", "message_status", 1, "whatsapp", u["A.wa"], "submitted", None),
        (2, "2025-03-01T10:10:00.100000Z", "message_status", 2, "sms", u["A.sms"], "submitted", "0.0333"),
        (3, "2025-03-01T10:10:03.000000Z", "message_status", 2, "sms", u["A.sms"], "delivered", None),
        (4, "2025-03-01T10:10:03.500000Z", "final_report", None, None, None, "completed", "0.0333"),
        (5, "2025-03-01T10:12:00.000000Z", "message_status", 1, "whatsapp", u["A.wa"], "delivered", "0.0020"),
        (6, "2025-03-01T10:13:00.000000Z", "message_status", 1, "whatsapp", u["A.wa"], "read", None),
    ]
    assert [r["since_previous_s"] for r in rows] == [None, 600.1, 2.9, 0.5, 116.5, 60.0]
    assert [r["since_start_s"] for r in rows] == [0.0, 600.1, 603.0, 603.5, 720.0, 780.0]
    # The SMS step began 600.1 s after the WhatsApp step: shown once, on its first callback.
    assert [r["failover_after_s"] for r in rows] == [None, 600.1, None, None, None, None]
    # Each row names the callbacks row it came from.
    callback_ids = [r["callback_id"] for r in rows]
    assert len(set(callback_ids)) == 6 and None not in callback_ids


def test_dispatch_timeline_of_another_dispatch_shows_only_its_own_callbacks(client, u):
    rows = client.query("dispatch_timeline", dispatch_uuid=u["F"])
    assert [(r["kind"], r["channel"], r["status"], r["error_code"]) for r in rows] == [
        ("message_status", "viber_service_msg", "rejected", 1120),
        ("message_status", "sms", "submitted", None),
        ("message_status", "sms", "delivered", None),
        ("final_report", None, "completed", None),
    ]
    assert [r["step"] for r in rows] == [1, 2, 2, None]
    assert [r["failover_after_s"] for r in rows] == [None, 1.0, None, None]
    assert client.query("dispatch_timeline", dispatch_uuid="no-such-dispatch") == []


def test_message_history_lists_its_callbacks_and_report_entries_and_marks_the_current_one(client, u):
    rows = client.query("message_history", message_uuid=u["A.wa"])
    assert [(r["seq"], r["kind"], r["status"], r["price"], r["sets_status"]) for r in rows] == [
        (1, "message_status", "submitted", None, 0),
        (2, "final_report", "submitted", None, 0),
        (3, "message_status", "delivered", "0.0020", 0),
        (4, "message_status", "read", None, 1),
    ]
    assert [r["since_previous_s"] for r in rows] == [None, 603.5, 116.5, 60.0]
    assert {r["dispatch_uuid"] for r in rows} == {u["A"]}
    assert client.query("message_history", message_uuid="no-such-message") == []


def view_rows(client, name, **params):
    """Every row of a view, as dicts, through Datasette (one page of up to 1,000)."""
    return client.json(f"/{DB_NAME}/{name}.json", _shape="objects", _size="max", **params)["rows"]


def test_billing_by_day_sums_exactly_per_day_channel_and_currency(client):
    rows = view_rows(client, "billing_by_day", day__gte=MARCH["from"], day__lte=MARCH["to"],
                     _sort="day")
    rows.sort(key=lambda r: (r["day"], r["channel"], r["currency"]))
    got = [(r["day"], r["channel"], r["currency"], r["messages"], r["priced_messages"],
            r["total"], r["total_nano"]) for r in rows]
    assert got == [
        ("2025-03-01", "sms", "EUR", 1, 1, "0.0333", 33_300_000),
        ("2025-03-01", "whatsapp", "EUR", 1, 1, "0.002", 2_000_000),
        # 0.1 + 0.2: exactly 0.3 (binary floating point would give 0.30000000000000004).
        ("2025-03-02", "sms", "EUR", 2, 2, "0.3", 300_000_000),
        ("2025-03-02", "sms", "USD", 1, 1, "0.05", 50_000_000),
        ("2025-03-03", "sms", "EUR", 3, 3, "0.0999", 99_900_000),
        ("2025-03-04", "sms", "EUR", 2, 2, "0.0666", 66_600_000),
    ]
    for row in rows:
        assert row["total"] == money.from_nano(row["total_nano"])


def test_billing_by_day_keeps_to_the_period(client):
    one_day = view_rows(client, "billing_by_day", day="2025-03-02", _sort="currency")
    assert [(r["currency"], r["total"]) for r in one_day] == [("EUR", "0.3"), ("USD", "0.05")]
    from_only = view_rows(client, "billing_by_day", day__gte="2025-03-04")
    assert [r["day"] for r in from_only] == ["2025-03-04"]
    assert view_rows(client, "billing_by_day", day__gte="2025-04-01", day__lte="2025-04-30") == []


def test_billing_by_workflow_has_a_line_per_currency(client, u):
    rows = {r["workflow_id"]: r for r in view_rows(client, "billing_by_workflow")}
    assert (rows[u["H"]]["currency"], rows[u["H"]]["total"], rows[u["H"]]["reason"]) == (
        "USD", "0.05", None)
    assert (rows[u["T"]]["total"], rows[u["T"]]["final_report_total"], rows[u["T"]]["difference"],
            rows[u["T"]]["reason"]) == ("0.0333", "0.05", "0.0167", "totals differ")
    assert rows[u["G2"]]["reason"] == "final report missing"


def test_billing_sums_stay_exact_for_large_totals(tmp_path, open_access):
    """Large sums with all nine decimals come out exact, as decimal text."""
    path = tmp_path / "big.db"
    prices = ["99999.999999999", "0.000000001", "12345.123456789"]
    datasette_data.post_all(path, [
        status(f"big-{i}", "big-dispatch", "submitted", channel="sms", price=price,
               timestamp=f"2025-05-01T10:00:0{i}.000Z")
        for i, price in enumerate(prices)
    ])
    c = Client(path)
    try:
        [row] = c.json("/big/billing_by_day.json", _shape="objects")["rows"]
        assert row["total"] == "112345.123456789"
        assert row["total_nano"] == sum(money.to_nano(p) for p in prices)
        [dispatch] = c.json("/big/dispatches.json", _shape="objects")["rows"]
        assert dispatch["messages_price"] == "112345.123456789"
    finally:
        c.close()


def test_money_in_queries_and_charts_is_formatted_by_the_receivers_own_sql():
    """Each exact total is money.sql_format over an integer sum, not a hand-written variant."""
    with open(METADATA) as file:
        metadata = yaml.safe_load(file)
    charts = metadata["plugins"]["datasette-dashboards"]["callbacks"]["charts"]
    queries = metadata["databases"]["events"]["queries"]
    assert "cost-per-day" in charts and queries
    sql = " ".join(charts["cost-per-day"]["query"].split())
    assert sql.count("printf(") == 1 and " ".join(money.sql_format("sum(total_nano)").split()) in sql
    assert "FROM billing_by_day" in sql  # the view's totals, re-bucketed, never re-derived


def test_reconciliation_discrepancies_name_each_dispatch_with_its_reason(client, u):
    rows = view_rows(client, "reconciliation_discrepancies", first_seen_at__gte=MARCH["from"],
                     first_seen_at__lt="2025-03-05", _sort="first_seen_at")
    got = [(r["dispatch_uuid"], r["reason"], r["final_report_total"], r["messages_total"],
            r["difference"], r["difference_nano"]) for r in rows]
    assert got == [
        # The late first leg: the report's 0.0333 misses WhatsApp's 0.0020 charged after it.
        (u["A"], "a message was charged after the final report", "0.0333", "0.0353", "-0.002",
         -2_000_000),
        (u["G2"], "final report missing", None, "0.0333", None, None),
        (u["T"], "totals differ", "0.05", "0.0333", "0.0167", 16_700_000),
    ]
    assert view_rows(client, "reconciliation_discrepancies", first_seen_at__gte="2025-03-02",
                     first_seen_at__lt="2025-03-03") == []


def test_dispatches_without_final_report_after_n_hours(client, u):
    three_hours = view_rows(client, "dispatches_without_final_report", hours_waiting__gte=3,
                            _sort="first_seen_at")
    # G2 (March 2025) and N1 (5 hours ago); N2 (30 minutes ago) is too recent.
    assert [r["dispatch_uuid"] for r in three_hours] == [u["G2"], u["N1"]]
    assert 4.9 <= three_hours[1]["hours_waiting"] <= 5.2
    day = view_rows(client, "dispatches_without_final_report", hours_waiting__gte=24)
    assert [r["dispatch_uuid"] for r in day] == [u["G2"]]
    everything = view_rows(client, "dispatches_without_final_report", _sort_desc="hours_waiting")
    assert [r["dispatch_uuid"] for r in everything] == [u["G2"], u["N1"], u["N2"]]


def test_messages_stuck_at_submitted(client, u):
    rows = view_rows(client, "messages_stuck_at_submitted", hours_submitted__gte=1,
                     _sort_desc="hours_submitted")
    # J's WhatsApp leg (March 2025, its dispatch delivered by SMS) and N1's (5 hours ago);
    # N2's is only 30 minutes old; every other message moved on.
    assert [r["message_uuid"] for r in rows] == [u["J.wa"], u["N1.wa"]]
    j = rows[0]
    assert (j["dispatch_uuid"], j["channel"], j["step"], j["submitted_at"],
            j["dispatch_final_status"], j["dispatch_delivered_channel"]) == (
        u["J"], "whatsapp", 1, "2025-03-04T10:00:00.000000Z", "completed", "sms")
    assert 4.9 <= rows[1]["hours_submitted"] <= 5.2


def test_error_codes_by_channel(client):
    rows = client.query("error_codes_by_channel", **MARCH)
    got = [(r["channel"], r["error_code"], r["error_reason"], r["callbacks"], r["messages"],
            r["dispatches"], r["statuses"]) for r in rows]
    assert got == [
        ("sms", 1330, "Delivery failed", 2, 2, 2, "undeliverable"),
        ("viber_service_msg", 1120, "Illegal Sender Address", 1, 1, 1, "rejected"),
    ]
    assert rows[0]["first_at"] == "2025-03-03T12:00:30.000000Z"
    assert rows[0]["last_at"] == "2025-03-03T13:00:40.000000Z"
    assert client.query("error_codes_by_channel", **{"from": "2025-03-04", "to": ""}) == []


def test_failover_effectiveness_per_first_channel(client):
    rows = {r["first_channel"]: r for r in client.query("failover_effectiveness", **MARCH)}
    columns = ("dispatches", "delivered_at_step_1", "delivered_at_step_2",
               "delivered_at_step_3_or_later", "not_delivered", "failover_needed",
               "failover_pct", "failover_success_pct", "delivered_pct")
    got = {channel: tuple(row[c] for c in columns) for channel, row in rows.items()}
    assert got == {
        # B, C, H, T delivered by their only SMS; G and G2 undeliverable; none failed over.
        "sms": (6, 4, 0, 0, 2, 0, 0.0, None, 66.7),
        # F: Viber rejected, SMS delivered.
        "viber_service_msg": (1, 0, 1, 0, 0, 1, 100.0, 100.0, 100.0),
        # A (WhatsApp delivered only after the SMS was) and J (WhatsApp never delivered).
        "whatsapp": (2, 0, 2, 0, 0, 2, 100.0, 100.0, 100.0),
        "(all channels)": (9, 4, 3, 0, 2, 3, 33.3, 100.0, 77.8),
    }
    assert list(rows)[-1] == "(all channels)"


# --- views ------------------------------------------------------------------------------------


def test_billing_lines_has_one_row_per_charged_message_at_its_charge_time(client, u):
    rows = {r["message_uuid"]: r for r in table_rows(client, "billing_lines")}
    charged = {name for name in u if name.count(".") and u[name] in rows}
    # WhatsApp and Viber legs that never got delivered are not charged.
    assert charged == {"A.wa", "A.sms", "B.sms", "C.sms", "H.sms", "F.sms", "G.sms", "G2.sms",
                       "J.sms", "T.sms"}
    wa, sms = rows[u["A.wa"]], rows[u["A.sms"]]
    assert (wa["charged_status"], wa["charged_at"], wa["price"], wa["price_nano"]) == (
        "delivered", "2025-03-01T10:12:00.000000Z", "0.0020", 2_000_000)
    assert (sms["charged_status"], sms["charged_at"], sms["price"]) == (
        "submitted", "2025-03-01T10:10:00.100000Z", "0.0333")
    assert rows[u["H.sms"]]["currency"] == "USD"


def test_billing_reconciliation_has_one_row_per_dispatch(client, u):
    rows = {r["dispatch_uuid"]: r for r in table_rows(client, "billing_reconciliation")}
    dispatches = {name: u[name] for name in u if "." not in name}
    assert set(rows) == set(dispatches.values())
    reasons = {name: rows[uuid]["reason"] for name, uuid in dispatches.items()}
    assert reasons == {
        "A": "a message was charged after the final report", "B": None, "C": None, "H": None,
        "F": None, "G": None, "G2": "final report missing", "J": None, "T": "totals differ",
        "N1": "final report missing", "N2": "final report missing",
    }
    assert (rows[u["C"]]["difference"], rows[u["C"]]["difference_nano"]) == ("0", 0)
    assert rows[u["H"]]["currency"] == "USD"


# --- metadata ---------------------------------------------------------------------------------


def schema(path):
    with closing(sqlite3.connect(str(path))) as conn:
        objects = conn.execute(
            "SELECT name, type FROM sqlite_master WHERE type IN ('table', 'view') "
            "AND name NOT LIKE 'sqlite_%' ORDER BY name"
        ).fetchall()
        return {
            name: (kind, [row[1] for row in conn.execute(f"PRAGMA table_info([{name}])")])
            for name, kind in objects
        }


def test_every_visible_table_view_and_column_is_described(client, store):
    database = client.json(f"/{DB_NAME}.json")
    hidden = {t["name"] for t in database["tables"] if t["hidden"]}
    assert hidden == {"receiver_health"}
    metadata = client.json("/-/metadata.json")["databases"][DB_NAME]
    assert metadata["title"] and metadata["description"]
    visible = {name: info for name, info in schema(store[0]).items() if name not in hidden}
    assert {"billing_lines", "billing_reconciliation", "messages", "dispatches"} <= set(visible)
    missing = []
    for name, (kind, columns) in visible.items():
        table = metadata["tables"].get(name) or {}
        if not table.get("description"):
            missing.append(f"{kind} {name}")
        described = table.get("columns") or {}
        missing += [f"{name}.{c}" for c in columns if not described.get(c)]
        # ... and the page shows them.
        page = client.get(f"/{DB_NAME}/{name}")
        assert page.status_code == 200, name
        assert str(escape(table.get("description", ""))).strip() in page.text, name
        for column in columns:
            assert f"<dt>{column}</dt><dd>{escape(described.get(column, ''))}</dd>" in page.text, (
                name, column)
    assert missing == [], "no description: " + ", ".join(missing)


def test_database_and_each_query_show_their_title_and_description(client):
    metadata = client.json("/-/metadata.json")["databases"][DB_NAME]
    page = client.get(f"/{DB_NAME}").text
    assert f"<h1>{escape(metadata['title'])}</h1>" in page
    assert str(escape(metadata["description"])) in page
    assert set(metadata["queries"]) <= {q["name"] for q in client.json(f"/{DB_NAME}.json")["queries"]}
    for name, query in metadata["queries"].items():
        page = client.get(f"/{DB_NAME}/{name}").text
        assert f"{escape(query['title'])}</h1>" in page, name
        assert query["description_html"].strip() in page, name


def test_default_facets_sorting_and_labels(client, u):
    events = client.json(f"/{DB_NAME}/status_events.json")
    assert {"status", "channel", "error_code", "currency"} <= set(events["facet_results"])
    statuses = {f["value"]: f["count"] for f in events["facet_results"]["status"]["results"]}
    assert statuses["undeliverable"] == 2 and statuses["rejected"] == 1
    messages = client.json(f"/{DB_NAME}/messages.json")
    assert {"status", "channel", "error_code", "currency"} <= set(messages["facet_results"])
    # Money sorts by its exact integer, not as text; the text column offers no sort.
    page = client.get(f"/{DB_NAME}/status_events").text
    assert re.search(r'href="[^"]*_sort=price_nano"', page)
    assert not re.search(r'_sort(_desc)?=price["&]', page)
    by_price = table_rows(client, "status_events", _sort="price_nano",
                          price_nano__notblank="1")
    nanos = [r["price_nano"] for r in by_price]
    assert nanos == sorted(nanos) and nanos[0] == 2_000_000 and nanos[-1] == 200_000_000
    # A final report message's report is shown by its dispatch.
    [item] = client.json(f"/{DB_NAME}/final_report_messages.json", _labels="on",
                         message_uuid=u["B.sms"], _shape="objects")["rows"]
    assert item["final_report_id"]["label"] == u["B"]


# --- links between rows -----------------------------------------------------------------------


def hrefs(html):
    return [h.replace("&amp;", "&") for h in re.findall(r'href="([^"]+)"', html)]


def follow(client, href):
    """The rows behind a link, through the same URL's JSON."""
    path, _, query = href.partition("?")
    return client.json(f"{path}.json", _shape="objects", **dict(parse_qsl(query)))["rows"]


def cell(html, column):
    match = re.search(rf'<td class="col-{column}[^"]*"[^>]*>(.*?)</td>', html, re.S)
    assert match, f"no {column} cell"
    return match.group(1)


def test_a_message_links_to_its_dispatch_and_its_timeline(client, u):
    page = client.get(f"/{DB_NAME}/messages/{u['A.wa']}").text
    dispatch_links = hrefs(cell(page, "dispatch_uuid"))
    assert dispatch_links == [
        f"/{DB_NAME}/dispatches/{u['A']}",
        f"/{DB_NAME}/messages?dispatch_uuid={u['A']}",
        f"/{DB_NAME}/status_events?dispatch_uuid={u['A']}&_sort=timestamp",
        f"/{DB_NAME}/dispatch_timeline?dispatch_uuid={u['A']}",
    ]
    # Each link leads to the dispatch's own rows.
    assert client.get(dispatch_links[0]).status_code == 200
    assert u["A"] in client.get(dispatch_links[0]).text
    assert {r["message_uuid"] for r in follow(client, dispatch_links[1])} == {u["A.wa"], u["A.sms"]}
    events = follow(client, dispatch_links[2])
    assert len(events) == 5 and {r["dispatch_uuid"] for r in events} == {u["A"]}
    assert [r["timestamp"] for r in events] == sorted(r["timestamp"] for r in events)
    assert len(follow(client, dispatch_links[3])) == 6
    # The message's own cell links to its history and events.
    message_links = hrefs(cell(page, "message_uuid"))
    assert message_links == [
        f"/{DB_NAME}/messages/{u['A.wa']}",
        f"/{DB_NAME}/status_events?message_uuid={u['A.wa']}&_sort=timestamp",
        f"/{DB_NAME}/message_history?message_uuid={u['A.wa']}",
    ]
    assert len(follow(client, message_links[1])) == 3
    assert len(follow(client, message_links[2])) == 4


def test_a_dispatch_links_to_its_messages_events_and_timeline(client, u):
    row_page = client.get(f"/{DB_NAME}/dispatches/{u['F']}").text
    assert f"/{DB_NAME}/messages?dispatch_uuid={u['F']}" in hrefs(cell(row_page, "dispatch_uuid"))
    assert f"/{DB_NAME}/dispatch_timeline?dispatch_uuid={u['F']}" in hrefs(row_page)
    # On the dispatches table the message count links to the messages.
    table_page = client.get(f"/{DB_NAME}/dispatches?dispatch_uuid={u['F']}").text
    assert hrefs(cell(table_page, "message_count")) == [f"/{DB_NAME}/messages?dispatch_uuid={u['F']}"]
    assert hrefs(cell(table_page, "final_report_count")) == [
        f"/{DB_NAME}/final_reports?dispatch_uuid={u['F']}"]
    # In query results and views too: the timeline's message cells link to their history.
    timeline = client.get(f"/{DB_NAME}/dispatch_timeline?dispatch_uuid={u['F']}").text
    assert f"/{DB_NAME}/message_history?message_uuid={u['F.viber']}" in hrefs(timeline)
    lines = client.get(f"/{DB_NAME}/billing_lines").text
    assert f"/{DB_NAME}/dispatches/{u['F']}" in hrefs(lines)


def test_links_escape_whatever_the_uuids_hold(tmp_path, open_access):
    path = tmp_path / "odd.db"
    odd_message, odd_dispatch = '<b>m</b>&"?#%', "<i>d</i>&x=1"
    datasette_data.post_all(path, [status(odd_message, odd_dispatch, "submitted", channel="sms")])
    c = Client(path)
    try:
        page = c.get(f"/odd/status_events").text
        assert "<b>m</b>" not in page and "<i>d</i>" not in page
        assert "&lt;b&gt;m&lt;/b&gt;&amp;&#34;?#%" in page
        links = hrefs(cell(page, "dispatch_uuid"))
        assert "/odd/messages?dispatch_uuid=%3Ci%3Ed%3C%2Fi%3E%26x%3D1" in links
        # Following the links finds the rows.
        assert c.get(links[0]).status_code == 200
        [row] = follow(c, links[1])
        assert row["message_uuid"] == odd_message
    finally:
        c.close()


def test_json_and_csv_keep_plain_values(client, u):
    [row] = client.json(f"/{DB_NAME}/messages.json", _shape="objects",
                        message_uuid=u["A.wa"])["rows"]
    assert row["dispatch_uuid"] == u["A"]
    csv = client.get(f"/{DB_NAME}/messages.csv", params={"message_uuid": u["A.wa"]}).text
    assert "<a" not in csv and u["A"] in csv


# --- CSV ----------------------------------------------------------------------------------------


def test_csv_stream_returns_every_row_past_the_page_size(tmp_path, open_access):
    path = tmp_path / "bulk.db"
    total = 150
    datasette_data.post_all(path, [
        status(f"bulk-{i:03d}", f"bulk-dispatch-{i // 3}", "delivered", channel="sms",
               timestamp=f"2025-02-10T10:{i // 60:02d}:{i % 60:02d}.000Z")
        for i in range(total)
    ])
    c = Client(path)
    try:
        page = c.get("/bulk/status_events.csv")
        assert len(page.text.splitlines()) == 1 + 100  # one page by default
        streamed = c.get("/bulk/status_events.csv", params={"_stream": "on"})
        assert streamed.status_code == 200
        lines = streamed.text.splitlines()
        assert lines[0].startswith("id,callback_id,api,message_uuid,")
        assert len(lines) == 1 + total
        assert {line.split(",")[3] for line in lines[1:]} == {f"bulk-{i:03d}" for i in range(total)}
        streamed_messages = c.get("/bulk/messages.csv", params={"_stream": "on", "_size": "max"})
        assert len(streamed_messages.text.splitlines()) == 1 + total
    finally:
        c.close()


# --- robots, writes -----------------------------------------------------------------------------


def test_robots_are_blocked(client):
    response = client.get("/robots.txt")
    assert response.status_code == 200
    assert response.text.splitlines() == ["User-agent: *", "Disallow: /"]


WRITES = [
    "INSERT INTO receiver_health (id, checked_at, pid) VALUES (1, 'x', 1)",
    "UPDATE messages SET status = 'read'",
    "DELETE FROM status_events",
    "DROP TABLE callbacks",
    "WITH x AS (SELECT 1) UPDATE messages SET status = 'read'",
    "WITH x AS (SELECT 1) INSERT INTO receiver_health (id, checked_at, pid) VALUES (1, 'x', 1)",
    "SELECT 1; DELETE FROM messages",
    "PRAGMA writable_schema = 1",
    "ATTACH DATABASE '/tmp/x.db' AS x",
    "VACUUM",
]


def test_datasette_refuses_every_write(client, store):
    before = schema(store[0]), _counts(store[0])
    for sql in WRITES:
        response = client.get(f"/{DB_NAME}.json", params={"sql": sql})
        assert response.status_code == 400, (sql, response.status_code)
        assert response.json()["ok"] is False, sql
    assert (schema(store[0]), _counts(store[0])) == before
    # No plugin that writes, and no canned query that does.
    plugins = {p["name"] for p in client.json("/-/plugins.json")}
    assert plugins <= READ_ONLY_PLUGINS, plugins - READ_ONLY_PLUGINS
    queries = client.json(f"/{DB_NAME}.json")["queries"]
    assert queries and not any(q.get("write") for q in queries)
    # The database file cannot be downloaded either.
    assert client.get(f"/{DB_NAME}.db").status_code == 403


@pytest.mark.parametrize("params", [
    {"_sort": "error_reason"},  # a column metadata.yml leaves unsortable
    {"_sort_desc": "no_such_column"},
    {"_sort": "timestamp", "_sort_desc": "id"},
])
def test_a_bad_sort_is_a_400_naming_the_problem_not_a_500(client, params, capsys):
    for suffix in (".json", ""):
        response = client.get(f"/{DB_NAME}/status_events{suffix}", params=params)
        assert response.status_code == 400, (suffix, response.text[:300])
        if suffix:
            error = response.json()["error"]
            assert error.startswith(("Cannot sort table by ", "Cannot use _sort and _sort_desc"))
    assert client.get(f"/{DB_NAME}/status_events.json", params={"_sort": "price_nano"}).status_code == 200
    # A price (text) sorts by its exact twin (receiver_pages.py); test_pages_browser.py checks more.
    price = client.get(f"/{DB_NAME}/status_events.json", params={"_sort": "price"})
    assert (price.status_code, price.headers["location"]) == (
        302, f"/{DB_NAME}/status_events.json?_sort=price_nano")
    # A visitor's mistake is one access-log line, not a traceback with local variables.
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err


def test_posting_to_a_canned_query_is_a_405_not_a_500(client, u):
    for path in (f"/{DB_NAME}/dispatch_timeline", f"/{DB_NAME}/dispatch_timeline.json"):
        response = client.post(path, data={"dispatch_uuid": u["A"]})
        assert response.status_code == 405, (path, response.text[:300])
        assert response.headers["allow"] == "GET, HEAD"
        assert "read-only" in response.json()["error"]
    assert client.get(f"/{DB_NAME}/dispatch_timeline.json",
                      params={"dispatch_uuid": u["A"]}).status_code == 200


def test_the_password_tool_is_off_for_everyone(client, walled):
    # Each POST of datasette-auth-passwords' tool would cost the server a 480,000-round hash.
    for c in (client, walled):
        assert c.get("/-/password-tool").status_code == 403
        response = c.post("/-/password-tool", data={"password": "x"})
        assert response.status_code == 403
        assert "datasette hash-password" in response.json()["error"]


def _counts(path):
    with closing(sqlite3.connect(str(path))) as conn:
        return {t: conn.execute(f"SELECT count(*) FROM [{t}]").fetchone()[0]
                for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


# --- access -------------------------------------------------------------------------------------


def pages(u):
    """Every kind of page: HTML, JSON and CSV of the instance, tables, views, rows, queries."""
    html = [
        "/", f"/{DB_NAME}", "/-/dashboards", "/-/dashboards/callbacks",
        "/-/dashboards/callbacks/cost-per-day", "/-/metadata", "/-/plugins", "/-/versions",
        "/-/settings", "/-/databases", "/-/threads",
        f"/{DB_NAME}/dispatches/{u['A']}", f"/{DB_NAME}/messages/{u['A.wa']}",
        f"/{DB_NAME}/dispatch_timeline?dispatch_uuid={u['A']}",
    ]
    for table in ("callbacks", "status_events", "final_reports", "final_report_messages",
                  "messages", "dispatches", "rejected_callbacks", "billing_lines",
                  "billing_reconciliation", "billing_by_day", "failover_effectiveness"):
        html.append(f"/{DB_NAME}/{table}")
    data = [f"/{DB_NAME}.json", "/-/metadata.json", "/.json",
            f"/{DB_NAME}.json?sql=select+*+from+messages",
            f"/{DB_NAME}/messages.json", f"/{DB_NAME}/messages.csv?_stream=on",
            f"/{DB_NAME}/billing_lines.csv", f"/{DB_NAME}/dispatches/{u['A']}.json",
            f"/{DB_NAME}/billing_by_day.csv?_stream=on"]
    return html, data


def hash_password(password):
    """A hash made as the README says: `datasette hash-password`."""
    result = CliRunner().invoke(datasette_cli, ["hash-password", "--no-confirm"], input=password)
    assert result.exit_code == 0, result.output
    return result.output.strip()


@pytest.fixture(scope="module")
def password_hash():
    return hash_password(PASSWORD)


@pytest.fixture
def walled(store, password_hash, monkeypatch):
    monkeypatch.setenv("DATASETTE_PASSWORD_HASH", password_hash)
    c = Client(store[0])
    yield c
    c.close()


def login(client, password):
    form = client.get("/-/login")
    assert form.status_code == 200 and 'name="password"' in form.text
    token = re.search(r'name="csrftoken" value="([^"]+)"', form.text).group(1)
    return client.post("/-/login", data={"username": "root", "password": password,
                                         "csrftoken": token},
                       cookies={"ds_csrftoken": form.cookies["ds_csrftoken"]})


def test_without_a_password_every_page_is_open(client, u):
    html, data = pages(u)
    for path in html + data:
        assert client.get(path).status_code == 200, path


def test_with_a_password_every_page_needs_the_login(walled, u):
    html, data = pages(u)
    for path in html:
        response = walled.get(path)
        assert (response.status_code, response.headers.get("location")) == (302, "/-/login"), path
    for path in data:
        assert walled.get(path).status_code == 403, path
    # The short links to a table or view are behind it too (they would tell which names exist).
    for name in ("messages", "no_such_table"):
        response = walled.get(f"/-/receiver/{name}")
        assert (response.status_code, response.headers.get("location")) == (302, "/-/login"), name
    # The login page itself, and robots.txt, stay reachable.
    assert walled.get("/-/login").status_code == 200
    assert walled.get("/robots.txt").status_code == 200


def test_the_right_password_logs_in_and_opens_every_page(walled, u, password_hash):
    wrong = login(walled, "not the password")
    assert wrong.status_code == 200 and "Invalid username or password" in wrong.text
    assert "ds_actor" not in wrong.cookies
    response = login(walled, PASSWORD)
    assert response.status_code == 302
    actor = {"ds_actor": response.cookies["ds_actor"]}
    html, data = pages(u)
    for path in html + data:
        assert walled.get(path, cookies=actor).status_code == 200, path
    assert walled.get("/-/actor.json", cookies=actor).json()["actor"] == {"id": "root"}
    assert walled.get("/-/receiver/messages", cookies=actor).headers["location"].endswith("/messages")
    # The hash itself is never shown, not even to the logged-in user.
    assert password_hash not in walled.get("/-/metadata.json", cookies=actor).text


def test_with_a_password_curl_can_export_csv_with_basic_auth(walled, u):
    path = f"/{DB_NAME}/messages.csv?_stream=on"
    good = base64.b64encode(f"root:{PASSWORD}".encode()).decode()
    bad = base64.b64encode(b"root:wrong").decode()
    assert walled.get(path, headers={"Authorization": f"Basic {bad}"}).status_code == 403
    response = walled.get(path, headers={"Authorization": f"Basic {good}"})
    assert response.status_code == 200
    messages = [name for name in u if "." in name]
    assert len(response.text.splitlines()) == 1 + len(messages)


# --- the `receiver datasette` command ---------------------------------------------------------


def run_command(*args, env=None):
    result = CliRunner().invoke(browse.datasette_command, ["--dry-run", *args], env=env or {})
    return result


def test_command_without_password_listens_on_loopback_only(monkeypatch):
    monkeypatch.delenv("DATASETTE_PASSWORD_HASH", raising=False)
    result = run_command(env={"DATASETTE_HOST": "0.0.0.0", "DATASETTE_PORT": "8123",
                              "RECEIVER_DB": "var/x.db"})
    assert result.exit_code == 0, result.output
    argv = result.stdout.split()
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert argv[argv.index("--port") + 1] == "8123"
    assert "DATASETTE_HOST=0.0.0.0 ignored" in result.stderr
    result = run_command("--host", "192.0.2.10")
    assert "--host 127.0.0.1" in result.stdout and "192.0.2.10 ignored" in result.stderr


def test_command_with_password_listens_where_asked(monkeypatch, password_hash):
    monkeypatch.delenv("DATASETTE_HOST", raising=False)
    result = run_command(env={"DATASETTE_HOST": "0.0.0.0",
                              "DATASETTE_PASSWORD_HASH": password_hash})
    assert result.exit_code == 0, result.output
    argv = result.stdout.split()
    assert argv[argv.index("--host") + 1] == "0.0.0.0"
    assert "ignored" not in result.stderr


def test_command_refuses_a_password_hash_nobody_could_log_in_with():
    result = run_command(env={"DATASETTE_HOST": "0.0.0.0", "DATASETTE_PASSWORD_HASH": "secret"})
    assert result.exit_code != 0
    assert "not a `datasette hash-password` hash" in result.output


def test_command_serves_the_live_file_read_only_with_the_metadata_and_plugins():
    result = run_command("--db", "var/some.db", env={"DATASETTE_PASSWORD_HASH": ""})
    argv = result.stdout.split()
    assert argv[argv.index("serve") + 1] == "var/some.db"
    assert "-i" not in argv and "--immutable" not in argv  # the receiver keeps writing
    assert argv[argv.index("--metadata") + 1] == str(METADATA)
    assert argv[argv.index("--plugins-dir") + 1] == str(PLUGINS_DIR)
    settings = {argv[i + 1]: argv[i + 2] for i, arg in enumerate(argv) if arg == "--setting"}
    assert settings["allow_download"] == "off"
    assert settings["allow_csv_stream"] == "on"
    assert int(settings["sql_time_limit_ms"]) > 0
    assert "Example:" in CliRunner().invoke(browse.datasette_command, ["--help"]).output


# --- dashboard queries (rendered in Chromium by test_dashboard_browser) -----------------------


def chart_rows(path, chart, **filters):
    """Rows of one dashboard chart's query, with the dashboard's own filter substitution."""
    from datasette_dashboards import replace_opts_in_query

    with open(METADATA) as file:
        charts = yaml.safe_load(file)["plugins"]["datasette-dashboards"]["callbacks"]["charts"]
    sql = replace_opts_in_query(charts[chart]["query"], filters)
    with closing(sqlite3.connect(str(path))) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(row) for row in conn.execute(sql, filters)]


def test_workflow_charts_count_messages_failover_requests_under_any_legs_channel(tmp_path):
    """A Messages API failover request (WhatsApp rejected, then SMS) is a workflow of the
    dashboard like a dispatch, counted under sms and whatsapp alike, and it failed over."""
    from payloads import messages_failover

    path = tmp_path / "v1.db"
    _, _, bodies = messages_failover(("whatsapp", "sms"))
    datasette_data.post_all(path, bodies)
    for channel in ("", "whatsapp", "sms"):
        filters = {"from": "", "to": "", "channel": channel}
        assert chart_rows(path, "dispatches", **filters) == [{"dispatches": 1}], channel
        assert chart_rows(path, "failover-overall", **filters) == [{"failover": "100.0 %"}]
        [rate] = chart_rows(path, "failover-rate", **filters)
        assert (rate["dispatches"], rate["failed_over"]) == (1, 1)
    assert chart_rows(path, "dispatches", **{"from": "", "to": "", "channel": "mms"}) == [
        {"dispatches": 0}]


@pytest.mark.parametrize("view", ["vonage_reconciliation", "vonage_reconciliation_by_day",
                                  "vonage_reconciliation_workflows"])
def test_reconciliation_pages_skip_the_row_count(client, view):
    """These views cost as much to count as to list (each sums every message an import
    covers): their pages run the query once, not twice; other pages still count."""
    assert client.json(f"/{DB_NAME}/{view}.json")["filtered_table_rows_count"] is None
    assert client.get(f"/{DB_NAME}/{view}").status_code == 200
    assert client.json(f"/{DB_NAME}/billing_by_day.json")["filtered_table_rows_count"] is not None
