"""A date written without its zeros (2025-3-1) means that date everywhere the real
`receiver datasette` takes one; what is not a date at all is a 400 naming the format.

Before: `/-/dashboards/callbacks?from=2025-3-1` showed an empty dashboard (SQLite's date() reads
'2025-3-1' as NULL), `status_events?timestamp__gte=2025-3-1` dropped the days a text comparison
puts before it ('2025-3-1' > '2025-03-04...'), and a canned query refused it.
"""

from urllib.parse import parse_qsl, urlsplit

import pytest
import requests

import datasette_data
from test_dashboard_browser import browser, needs_chromium, open_dashboard  # noqa: F401

DB = "dates"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with datasette_data.served(tmp_path_factory.mktemp("dates"), DB) as (process, uuids):
        yield process


def get(server, path, **params):
    return requests.get(f"{server.url}{path}", params=params, timeout=60)


def rows(server, path, **params):
    response = get(server, path, _shape="objects", _size="max", **params)
    assert response.status_code == 200, response.text[:300]
    return response.json()["rows"]


@pytest.mark.parametrize("path, unpadded, padded", [
    (f"/{DB}/status_events.json", {"timestamp__gte": "2025-3-2", "timestamp__lt": "2025-3-4"},
     {"timestamp__gte": "2025-03-02", "timestamp__lt": "2025-03-04"}),
    (f"/{DB}/billing_by_day.json", {"day": "2025-3-2"}, {"day": "2025-03-02"}),
    (f"/{DB}/billing_lines.json", {"charged_at__lte": "2025-3-2T23:59"},
     {"charged_at__lte": "2025-03-02T23:59"}),
    (f"/{DB}/error_codes_by_channel.json", {"from": "2025-3-1", "to": "2025-3-4", "api": ""},
     {"from": "2025-03-01", "to": "2025-03-04", "api": ""}),
    (f"/{DB}/failover_effectiveness.json", {"from": "2025-3-1", "to": "2025-3-9", "api": ""},
     {"from": "2025-03-01", "to": "2025-03-09", "api": ""}),
])
def test_an_unpadded_date_finds_what_the_padded_one_finds(server, path, unpadded, padded):
    expected = rows(server, path, **padded)
    assert expected, (path, padded)
    response = get(server, path, _shape="objects", _size="max", **unpadded)
    assert response.status_code == 200, response.text[:300]
    assert response.json()["rows"] == expected
    # The page says what it shows: the address was padded.
    assert response.history and response.history[0].status_code == 302
    shown = dict(parse_qsl(urlsplit(response.url).query, keep_blank_values=True))
    assert {key: shown[key] for key in padded} == padded


def test_other_text_is_left_alone(server):
    response = get(server, f"/{DB}/messages.json", client_ref="2025-3-1", _where="1=1")
    assert response.status_code == 200 and not response.history


@pytest.mark.parametrize("path, params, message", [
    (f"/{DB}/status_events", {"timestamp__gte": "01/03/2025"},
     "timestamp__gte: '01/03/2025' is not a date or time. Expected YYYY-MM-DD"),
    (f"/{DB}/billing_lines.json", {"charged_at__lt": "yesterday"},
     "charged_at__lt: 'yesterday' is not a date or time"),
    (f"/{DB}/status_events.json", {"timestamp__date": "2025-03"},
     "timestamp__date: '2025-03' is not a date. Expected YYYY-MM-DD"),
    ("/-/dashboards/callbacks", {"from": "01/03/2025"},
     "from: '01/03/2025' is not a date. Expected YYYY-MM-DD"),
    ("/-/dashboards/callbacks", {"from": "2025-03-04", "to": "2025-03-01"},
     "from (2025-03-04) is after to (2025-03-01)"),
])
def test_what_is_not_a_date_is_a_400_naming_the_format(server, path, params, message):
    response = get(server, path, **params)
    assert response.status_code == 400, response.text[:300]
    text = response.json()["error"] if path.endswith(".json") else response.text.replace("&#39;", "'")
    assert message in text


def test_a_month_still_compares_as_the_start_of_a_time(server):
    assert rows(server, f"/{DB}/status_events.json", timestamp__gte="2025-03", timestamp__lt="2025-04")


@needs_chromium
def test_the_dashboard_with_unpadded_dates_shows_the_period(server, browser):  # noqa: F811
    padded, padded_charts, _ = open_dashboard(
        browser, f"{server.url}/-/dashboards/callbacks?from=2025-03-01&to=2025-03-04")
    padded.close()
    page, charts, problems = open_dashboard(
        browser, f"{server.url}/-/dashboards/callbacks?from=2025-3-1&to=2025-3-4")
    try:
        assert problems == []
        assert page.url.endswith("?from=2025-03-01&to=2025-03-04")
        assert page.input_value("input[name=from]") == "2025-03-01"
        assert charts["callbacks-per-hour"]["rows"]
        assert charts == padded_charts
        assert page.inner_text("#chart-dispatches").strip() not in ("", "0")
    finally:
        page.close()
