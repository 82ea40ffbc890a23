"""A canned query's parameters typed in another format are refused with the format expected,
instead of silently answering no rows: the real `receiver datasette` over HTTP.

SQLite's date() reads '01/11/2026' or '2026-11' as NULL, so `charged_at >= date(:from)` is
never true and the page shows 0 rows as if there were none; a `from` after `to` does the same.
"""

import importlib.util
import re
import subprocess

import pytest
import requests
import yaml

import datasette_data
from testing.processes import ROOT, VENV_BIN, Datasette

METADATA = yaml.safe_load((ROOT / "config" / "metadata.yml").read_text())
QUERIES = next(iter(METADATA["databases"].values()))["queries"]
PERIOD_QUERIES = sorted(name for name, q in QUERIES.items() if {"from", "to"} <= set(q.get("params", [])))
GUARD_SPEC = importlib.util.spec_from_file_location("receiver_guard", ROOT / "config" / "plugins" / "receiver_guard.py")
GUARD = importlib.util.module_from_spec(GUARD_SPEC)
GUARD_SPEC.loader.exec_module(GUARD)
NOT_DATES = ["01/11/2026", "2026-11", "2026-02-30", "yesterday", "2026-11-01T10:00:00Z"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    directory = tmp_path_factory.mktemp("canned-params")
    path = directory / "dispatch.db"
    datasette_data.fill(path)
    process = Datasette(path, directory / "datasette.log").start()
    yield process
    process.stop()


def get(server, query, suffix="", **params):
    return requests.get(f"{server.url}/dispatch/{query}{suffix}", params=params, timeout=30)


def test_there_are_period_queries_to_guard():
    assert "failover_effectiveness" in PERIOD_QUERIES and len(PERIOD_QUERIES) >= 2


@pytest.mark.parametrize("query", PERIOD_QUERIES)
@pytest.mark.parametrize("value", NOT_DATES)
@pytest.mark.parametrize("which", ["from", "to"])
def test_a_date_in_another_format_is_refused_on_the_page(server, query, value, which):
    params = {"from": "2025-03-01", "to": "2025-03-04", which: value}
    response = get(server, query, **params)
    assert response.status_code == 400, response.text[:500]
    assert "text/html" in response.headers["content-type"]
    assert "Expected YYYY-MM-DD" in response.text
    assert f"{which}: &#39;{value}&#39; is not a date" in response.text
    assert f'href="/dispatch/{query}"' in response.text  # back to the form


@pytest.mark.parametrize("query", PERIOD_QUERIES)
def test_a_date_in_another_format_is_refused_in_json_and_csv(server, query):
    response = get(server, query, ".json", **{"from": "01/11/2026", "to": ""})
    assert response.status_code == 400
    body = response.json()
    assert body["ok"] is False
    assert body["error"] == "from: '01/11/2026' is not a date. Expected YYYY-MM-DD, e.g. 2026-11-01."
    response = get(server, query, ".csv", **{"from": "2026-11", "to": "", "_stream": "on"})
    assert response.status_code == 400
    assert "from: '2026-11' is not a date. Expected YYYY-MM-DD" in response.text


@pytest.mark.parametrize("query", PERIOD_QUERIES)
def test_from_after_to_is_refused(server, query):
    response = get(server, query, ".json", **{"from": "2025-03-04", "to": "2025-03-01"})
    assert response.status_code == 400
    assert response.json()["error"].startswith("from (2025-03-04) is after to (2025-03-01)")


def test_good_dates_and_empty_ones_still_answer(server):
    def messages(**period):
        rows = get(server, "error_codes_by_channel", ".json", _shape="objects", **period).json()["rows"]
        return sum(row["messages"] for row in rows)

    assert messages(**{"from": "2025-03-01", "to": "2025-03-04"}) > 0
    assert messages(**{"from": "2025-03-01", "to": "2025-03-04"}) >= messages(**{"from": "2025-03-02", "to": "2025-03-02"})
    open_ended = get(server, "error_codes_by_channel", **{"from": "", "to": ""})
    assert open_ended.status_code == 200


@pytest.mark.parametrize("params, problem", [
    ({"as_of": "04/03/2025"}, "as_of: '04/03/2025' is not a date or time"),
    ({"sent_at": "yesterday"}, "sent_at: 'yesterday' is not a date or time"),
    ({"hours": "two"}, "hours: 'two' is not a number"),
    ({"as_of": "2025-03-04T00:00:00Z", "hours": "1.5"}, None),
    ({"as_of": "2025-03-04 12:30", "hours": ""}, None),
])
def test_times_and_hours_are_checked_by_their_names(params, problem):
    """For any canned query with such parameters (none of today's has one)."""
    found = GUARD.check_parameters(params)
    assert (found is None) if problem is None else found.startswith(problem), found


def test_other_queries_are_not_checked(server):
    """Only canned queries' parameters: a visitor's own SQL gets what it asks for."""
    response = requests.get(f"{server.url}/dispatch.json", timeout=30,
                            params={"sql": "select :from as f", "from": "01/11/2026", "_shape": "array"})
    assert response.status_code == 200
    assert response.json() == [{"f": "01/11/2026"}]


def test_behind_the_login_wall_only_a_visitor_who_may_see_the_query_is_told(tmp_path):
    """Anonymous visitors get the login wall, whatever the parameters; after the login the
    same request gets the message about its date."""
    password = "a long test password"
    hashed = subprocess.run([str(VENV_BIN / "datasette"), "hash-password", "--no-confirm"],
                            input=password, capture_output=True, text=True, timeout=60,
                            check=True).stdout.strip()
    path = tmp_path / "dispatch.db"
    datasette_data.fill(path)
    process = Datasette(path, tmp_path / "datasette.log", DATASETTE_PASSWORD_HASH=hashed).start()
    try:
        url = f"{process.url}/dispatch/failover_effectiveness"
        params = {"from": "01/11/2026", "to": ""}
        anonymous = requests.get(url, params=params, allow_redirects=False, timeout=10)
        assert anonymous.status_code in (302, 403), anonymous.text[:300]
        assert "01/11/2026" not in anonymous.text
        with requests.Session() as session:
            form = session.get(f"{process.url}/-/login", timeout=10)
            token = re.search(r'name="csrftoken" value="([^"]+)"', form.text).group(1)
            login = session.post(f"{process.url}/-/login", timeout=30, allow_redirects=False,
                                 data={"username": "root", "password": password, "csrftoken": token})
            assert login.status_code == 302
            refused = session.get(url, params=params, timeout=10)
            assert refused.status_code == 400
            assert "Expected YYYY-MM-DD" in refused.text
    finally:
        process.stop()
