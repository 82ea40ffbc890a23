"""Whatever a browser sends to the real `receiver datasette`, the answer is never a 500: a bad
query string gets a 400 saying what is wrong, and the log holds no traceback for it.

Before: `/events/messages?_where=1=1;drop` (any `;` in `_where`) answered 500 with sqlite3's
"You can only execute one statement at a time" and printed a traceback; so did a null
character in `_facet`, any `_through` and any `_timelimit` that is not a number, a `:name` or
`?` in `_where`.
"""

import html
import itertools

import pytest
import requests

import datasette_data

DB = "guard"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with datasette_data.served(tmp_path_factory.mktemp("guard"), DB) as (process, uuids):
        yield process, uuids


def get(server, path, **params):
    return requests.get(f"{server[0].url}{path}", params=params, timeout=60)


@pytest.mark.parametrize("suffix", ["", ".json", ".csv"])
@pytest.mark.parametrize("where", ["1=1;drop", "1=1; select 1", ";", "status = :from", "id = ?"])
def test_sql_that_cannot_run_in_where_is_a_400_saying_so(server, suffix, where):
    response = get(server, f"/{DB}/messages{suffix}", _where=where)
    assert response.status_code == 400, response.text[:300]
    assert "This SQL cannot run" in response.text or "Invalid SQL" in response.text
    assert "Traceback" not in response.text


def test_one_statement_at_a_time_is_said_in_json(server):
    response = get(server, f"/{DB}/messages.json", _where="1=1;drop")
    assert response.status_code == 400
    assert response.json()["error"] == (
        "This SQL cannot run: You can only execute one statement at a time.")
    response = get(server, f"/{DB}.json", sql="select 1; select 2")
    assert response.status_code == 400 and "one statement at a time" in response.json()["error"]


@pytest.mark.parametrize("params, message", [
    ({"_facet": "\0"}, "null character"),
    ({"status": "deliv\0ered"}, "null character"),
    ({"_timelimit": "soon"}, "_timelimit: 'soon' is not a whole number"),
    ({"_through": "abc"}, "_through: 'abc' is not a JSON object"),
    ({"_through": '{"table": "dispatches", "column": "dispatch_uuid", "value": "x"}'},
     "Invalid _through"),
    ({"_facet_array": "{}"}, '_facet_array: \'{}\' is not a column name or a JSON object'),
    ({"event_count__gte": "99999999999999999999"}, "too big for SQLite"),
    ({"_next": "~", "_table": "billing_by_day"}, "_next: '~' is not a row offset"),
])
def test_other_query_strings_datasette_fails_on_are_a_400_naming_the_problem(server, params, message):
    params = dict(params)
    table = params.pop("_table", "messages")
    for suffix in ("", ".json", ".csv"):
        response = get(server, f"/{DB}/{table}{suffix}", **params)
        assert response.status_code == 400, (params, response.text[:300])
        assert message in html.unescape(response.text), response.text[:500]


# Odd values a browser can send, for every argument Datasette reads, over table, view, row,
# database and canned query pages in each format.
ODD = ["1=1;drop", "'", '"', "(", "1=1)", "\0", "é💥", "\ud800", "x" * 5000, "-1",
       "99999999999999999999", "1e309", "nan", ",", "", "~", "%", "::", "?", ":from",
       "2026-11-1", "[1,", "{}", "rowid"]
ARGUMENTS = ["_where", "_sort", "_sort_desc", "_col", "_nocol", "_facet", "_facet_array",
             "_facet_date", "_facet_size", "_size", "_next", "_search", "_through", "_labels",
             "_shape", "_json", "_nl", "_timelimit", "_trace", "_stream", "_extra", "sql",
             "timestamp__gt", "price_nano__gte", "id__in", "status__exact", "status__notin",
             "channel__like", "status__arraycontains", "error_code__isnull", "id",
             "from", "to", "dispatch_uuid", "message_uuid"]


def pages(uuids):
    message = uuids["A.sms"]
    return [f"/{DB}/messages", f"/{DB}/status_events.json", f"/{DB}/billing_by_day.csv",
            f"/{DB}/messages/{message}", f"/{DB}/messages/{message}.json", f"/{DB}",
            f"/{DB}.json", f"/{DB}/dispatch_timeline", f"/{DB}/error_codes_by_channel.json",
            f"/{DB}/workflows", "/-/dashboards/callbacks"]


def test_no_query_string_a_browser_can_send_gets_a_500(server):
    process, uuids = server
    paths = itertools.cycle(pages(uuids))
    answers = {}
    for argument, value in itertools.product(ARGUMENTS, ODD):
        path = next(paths)
        # What a browser sends for a lone surrogate: the replacement of invalid UTF-8.
        query = {argument: value.encode("utf-8", "surrogatepass")}
        response = requests.get(f"{process.url}{path}", params=query, timeout=60)
        answers[(path, argument, value[:20])] = response.status_code
    errors = {key: status for key, status in answers.items() if status >= 500}
    assert not errors, errors
    assert len(answers) == len(ARGUMENTS) * len(ODD)
    assert sum(status == 400 for status in answers.values()) > 50
    assert "Traceback" not in process.output(10**7)


@pytest.mark.parametrize("path", ["/guard/mess%00ages", "/guard/messages/%00", "/gu%00ard",
                                  "/guard/messages/" + "x" * 5000, "/guard/%F0%9F%92%A5",
                                  "/guard/messages/~", "/guard/~2E~2E"])
def test_odd_paths_are_not_a_500(server, path):
    response = requests.get(f"{server[0].url}{path}", timeout=60)
    assert response.status_code < 500, (path, response.status_code, response.text[:300])
