"""Datasette over a store holding both APIs: Messages API v1 failover beside Dispatch.

The database is filled by posting real bodies to the receiver (Flask test client), then read
through Datasette with config/metadata.yml and config/plugins, as test_datasette.py does.
"""

import re
from pathlib import Path

import pytest
import yaml

from datasette_data import post_all
from payloads import failover_workflow, messages_failover, v1_status
from test_datasette import DB_NAME, Client, cell, follow, hrefs


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A Dispatch workflow, a Messages failover (RCS rejected, then SMS delivered) and a
    plain v1 message: (path, names)."""
    path = tmp_path_factory.mktemp("datasette-v1") / f"{DB_NAME}.db"
    d, _, _, dispatch = failover_workflow()
    workflow_id, (rcs, sms), messages = messages_failover(("rcs", "sms"))
    single = v1_status(channel="whatsapp", status="delivered", price="0.0100")
    stuck = v1_status(channel="sms", status="submitted", price="0.0333")
    with pytest.MonkeyPatch.context() as mp:
        for name in ("RECEIVER_SYNCHRONOUS", "RECEIVER_MAX_BATCH", "RECEIVER_DB"):
            mp.delenv(name, raising=False)
        post_all(path, dispatch + messages + [single, stuck])
    return path, {"D": d, "W": workflow_id, "W.rcs": rcs, "W.sms": sms, "single": single["message_uuid"],
                  "stuck": stuck["message_uuid"]}


@pytest.fixture
def names(store):
    return store[1]


@pytest.fixture
def client(store, monkeypatch):
    monkeypatch.delenv("DATASETTE_PASSWORD_HASH", raising=False)
    c = Client(store[0])
    yield c
    c.close()


def test_a_messages_workflow_links_to_its_row_legs_and_events(client, names):
    page = client.get(f"/{DB_NAME}/messages/{names['W.sms']}").text
    links = hrefs(cell(page, "workflow_id"))
    w = names["W"]
    assert links == [
        f"/{DB_NAME}/workflows/{w}",
        f"/{DB_NAME}/messages?workflow_id={w}&_sort=workflow_position",
        f"/{DB_NAME}/status_events?workflow_id={w}&_sort=timestamp",
    ]
    assert w in client.get(links[0]).text
    assert [r["message_uuid"] for r in follow(client, links[1])] == [names["W.rcs"], names["W.sms"]]
    assert len(follow(client, links[2])) == 4


def test_a_dispatch_in_workflows_links_as_a_dispatch(client, names):
    page = client.get(f"/{DB_NAME}/workflows/{names['D']}").text
    assert f"/{DB_NAME}/dispatch_timeline?dispatch_uuid={names['D']}" in hrefs(cell(page, "workflow_id"))


def test_workflows_facet_by_api_and_outcome(client, names):
    data = client.json(f"/{DB_NAME}/workflows.json", _facet="api")
    counts = {f["value"]: f["count"] for f in data["facet_results"]["api"]["results"]}
    assert counts == {"dispatch": 1, "messages": 1}


# --- the canned queries and views cover both APIs, with an API filter ----------------------


def test_the_timeline_of_a_messages_workflow(client, names):
    rows = client.query("dispatch_timeline", dispatch_uuid=names["W"])
    assert [(r["step"], r["channel"], r["status"]) for r in rows] == [
        (1, "rcs", "submitted"), (1, "rcs", "rejected"), (2, "sms", "submitted"), (2, "sms", "delivered")]
    assert rows[2]["failover_after_s"] == 60.0  # the SMS leg began a minute after the RCS leg


def test_the_history_of_a_v1_message(client, names):
    rows = client.query("message_history", message_uuid=names["W.rcs"])
    assert [(r["status"], r["error_code"]) for r in rows] == [("submitted", None), ("rejected", 1300)]


def test_error_codes_by_channel_per_api(client):
    every = client.query("error_codes_by_channel", **{"from": "", "to": "", "api": ""})
    assert [(r["api"], r["channel"], r["error_code"], r["error_reason"]) for r in every if r["api"] == "messages"] == [
        ("messages", "rcs", 1300, "Not part of the provider network")]
    only_dispatch = client.query("error_codes_by_channel", **{"from": "", "to": "", "api": "dispatch"})
    assert {r["api"] for r in only_dispatch} <= {"dispatch"}
    assert all(r["channel"] != "rcs" for r in only_dispatch)


def test_failover_effectiveness_per_api(client):
    both = {r["first_channel"]: r for r in client.query("failover_effectiveness", **{"from": "", "to": "", "api": ""})}
    assert both["(all channels)"]["dispatches"] == 2
    messages = {r["first_channel"]: r for r in client.query("failover_effectiveness",
                                                            **{"from": "", "to": "", "api": "messages"})}
    assert set(messages) == {"rcs", "(all channels)"}
    rcs = messages["rcs"]
    assert (rcs["dispatches"], rcs["delivered_at_step_2"], rcs["failover_needed"], rcs["failover_success_pct"]) == (
        1, 1, 1, 100.0)


def test_views_say_the_api(client, names):
    stuck = client.json(f"/{DB_NAME}/messages_stuck_at_submitted.json", _shape="objects", api="messages")["rows"]
    assert [r["message_uuid"] for r in stuck] == [names["stuck"]]
    days = client.json(f"/{DB_NAME}/billing_by_day.json", _shape="objects", api="messages")["rows"]
    assert sorted((r["channel"], r["total"]) for r in days) == [("sms", "0.0666"), ("whatsapp", "0.01")]
    steps = client.json(f"/{DB_NAME}/dispatch_steps.json", _shape="objects", workflow_id=names["W"])["rows"]
    assert [(r["step"], r["channel"], r["delivered"]) for r in steps] == [(1, "rcs", 0), (2, "sms", 1)]


METADATA = yaml.safe_load((Path(__file__).resolve().parent.parent / "config" / "metadata.yml").read_text())
CHARTS = METADATA["plugins"]["datasette-dashboards"]["callbacks"]["charts"]


def chart_sql(query, params):
    """A chart's query as datasette-dashboards runs it: a [[ ... ]] block is kept only when
    every parameter in it has a value."""
    def block(match):
        names = re.findall(r":([a-z_]+)", match.group(1))
        return match.group(1) if all(params.get(n) for n in names) else ""
    return re.sub(r"\[\[(.*?)\]\]", block, query)


# What each chart counts: the field that adds up across the two APIs, or for a percentage the
# query over workflows it must equal.
ADDS_UP = {"dispatches": "dispatches", "callbacks": "callbacks", "callbacks-per-hour": "callbacks",
           "cost-per-day": "cost_for_plot", "failover-rate": "dispatches", "top-error-codes": "callbacks",
           "billing-by-month": "messages"}
PERCENT = {
    "failover-overall": ("failover", "SELECT round(100.0 * count(CASE WHEN legs_seen > 1 OR incomplete THEN 1 END) / count(*), 1) || ' %' AS v FROM workflows WHERE api = :api"),
    "incomplete-workflows": ("incomplete", "SELECT count(*) AS v FROM workflows WHERE incomplete AND api = :api"),
    "delivered-overall": ("delivered", "SELECT round(100.0 * count(delivered_channel) / count(*), 1) || ' %' AS v FROM workflows WHERE api = :api"),
}


# Charts of rows that have no API (a refused body may not say which API sent it), and links.
WITHOUT_API = {"rejected-callbacks", "where-to-look"}
# Reconciliation with Vonage's records: a record does not say which API sent the message, and
# a message whose callbacks never came has no API of ours, so these take no API filter
# (tests/test_reconciliation_datasette.py checks them).
ALL_APIS = {"vonage-billed", "missing-callbacks-per-day"}


def test_every_chart_is_checked_here():
    assert set(CHARTS) == set(ADDS_UP) | set(PERCENT) | WITHOUT_API | ALL_APIS


@pytest.mark.parametrize("chart", sorted(set(CHARTS) - WITHOUT_API - ALL_APIS))
def test_every_chart_takes_the_api_filter(client, chart):
    """Filtered to one API, each chart counts that API's rows only."""
    def rows(api):
        params = {"api": api} if api else {}
        return client.json(f"/{DB_NAME}.json", sql=chart_sql(CHARTS[chart]["query"], params),
                           _shape="objects", **params)["rows"]

    if chart in PERCENT:
        field, expected = PERCENT[chart]
        for api in ("dispatch", "messages"):
            [want] = client.json(f"/{DB_NAME}.json", sql=expected, api=api, _shape="objects")["rows"]
            assert rows(api)[0][field] == want["v"], (chart, api)
        return
    field = ADDS_UP[chart]
    total = lambda found: round(sum(r[field] or 0 for r in found), 9)  # noqa: E731
    every, dispatch, messages = total(rows(None)), total(rows("dispatch")), total(rows("messages"))
    assert every == round(dispatch + messages, 9) and messages > 0, (chart, every, dispatch, messages)
