"""Messages API v1 status webhooks and Messages failover workflows, beside Dispatch's.

The bodies are Vonage's own (spec 1.20.0 examples, SDK fixtures, a real trace; see
shared/vonage/MESSAGES-V1.md) and the shapes built from them in payloads.py.
"""

import itertools
import json
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from payloads import (V1_ADDRESSES, WORKFLOW_ID, dumps, failover_workflow, messages_failover,
                      new_uuid, status, v1_status)
from receiver import db, store
from receiver.callbacks import parse

DATA = Path(__file__).resolve().parent / "data"

# E1: .NET SDK fixture, every field (SMS and WhatsApp extras mixed, as the fixture has them).
E1 = {"message_uuid": "aaaaaaaa-bbbb-4ccc-8ddd-0123456789ab", "to": "447700900000", "from": "447700900001",
      "timestamp": "2025-02-03T12:14:25Z", "status": "submitted",
      "error": {"type": "https://developer.vonage.com/api-errors/messages#1000", "title": "1000",
                "detail": "Throttled - You have exceeded the submission capacity allowed on this account. Please wait and retry",
                "instance": "bf0ca0bf927b3b52e3cb03217e1a1ddf"},
      "client_ref": "abc123",
      "workflow": {"workflow_id": WORKFLOW_ID, "items_number": "1", "items_total": "2"},
      "usage": {"currency": "EUR", "price": "0.0333"},
      "channel": "sms", "destination": {"network_code": "12345"}, "sms": {"count_total": "2"},
      "whatsapp": {"pricing": {"type": "regular", "pricing_model": "CBP", "category": "service"},
                   "conversation": {"id": "1234567890", "origin": {"type": "user_initiated"}}}}
# E2: a real trace, SMS submitted then delivered.
E2_SUBMITTED = {"channel": "sms", "destination": {"network_code": "42507"}, "from": "972523083947",
                "message_uuid": "30af1182-e2c9-4986-bf60-0129a14bbc79", "sms": {"count_total": "1"},
                "status": "submitted", "timestamp": "2023-06-19T10:23:16Z", "to": "972532208231",
                "usage": {"currency": "EUR", "price": "0.093"}}
E2_DELIVERED = {"channel": "sms", "destination": {"network_code": "42507"}, "from": "972523083947",
                "message_uuid": "30af1182-e2c9-4986-bf60-0129a14bbc79", "status": "delivered",
                "timestamp": "2023-06-19T10:23:23Z", "to": "972532208231"}
# E3: Java SDK test: read, a numeric title, an empty workflow, an unknown property.
E3 = {"message_uuid": "aaaaaaaa-bbbb-cccc-dddd-0123456789ab", "to": "447700900000", "from": "447700900001",
      "timestamp": "2020-01-01T14:00:00.000Z", "status": "read",
      "error": {"type": "https://developer.nexmo.com/api-errors/messages-olympus#1000", "title": 1000,
                "detail": "Throttled - You have exceeded the submission capacity allowed on this account. Please wait and retry",
                "instance": "bf0ca0bf927b3b52e3cb03217e1a1ddf"},
      "usage": {"currency": "EUR", "price": "0.0333"}, "workflow": {}, "client_ref": "string",
      "channel": "whatsapp", "wubwub": {"Prop0": {"id": "ab12cdhfgjk3", "N3s7ed": {"type": "user_initiated"}}}}
# E4: Java SDK's workflow key names.
E4 = {**E3, "message_uuid": "aaaaaaaa-bbbb-cccc-dddd-0123456789ac", "status": "delivered",
      "timestamp": "2020-01-01T14:00:03.010Z", "workflow": {"id": "1001", "item_number": "2", "total_items": "3"}}
# E5: the docs' aggregated multi-segment SMS (total_count instead of count_total).
E5 = {"message_uuid": "aaaaaaaa-bbbb-4ccc-8ddd-0123456789ab", "to": "447700900000", "from": "447700900001",
      "timestamp": "2025-02-03T12:14:25Z", "status": "delivered", "channel": "sms",
      "destination": {"network_code": "12345"},
      "sms": {"total_count": "2", "segments": [{"timestamp": "2025-02-03T12:14:25Z", "status": "delivered"},
                                                {"timestamp": "2025-02-03T12:14:58Z", "status": "delivered"}]}}
# E6: Java SDK's minimal required set.
E6 = {"message_uuid": "aaaaaaaa-bbbb-4ccc-8ddd-0123456789ad", "to": "447700900000", "from": "447700900001",
      "timestamp": "2020-01-08T15:43:21.000Z", "status": "undeliverable", "channel": "mms"}


def event(rows, db_path, message_uuid):
    return rows(db_path, "SELECT * FROM status_events WHERE message_uuid = ? ORDER BY id", message_uuid)


def stored(post, *bodies):
    for body in bodies:
        response = post(body)
        assert response.status_code == 200, response.get_json()


# --- every channel, Vonage's own bodies --------------------------------------------------


def test_the_spec_fixture_with_every_field_is_stored_in_columns(post, rows, db_path):
    stored(post, E1)
    [row] = event(rows, db_path, E1["message_uuid"])
    assert {k: row[k] for k in ("api", "channel", "status", "timestamp", "to_number", "from_number",
                                "error_code", "error_title", "error_type", "error_detail", "client_ref",
                                "workflow_id", "workflow_leg", "workflow_legs", "network_code",
                                "sms_count", "price", "price_nano", "currency", "dispatch_uuid")} == {
        "api": "messages", "channel": "sms", "status": "submitted", "timestamp": "2025-02-03T12:14:25.000000Z",
        "to_number": "447700900000", "from_number": "447700900001",
        "error_code": 1000, "error_title": "1000",
        "error_type": "https://developer.vonage.com/api-errors/messages#1000",
        "error_detail": E1["error"]["detail"], "client_ref": "abc123",
        "workflow_id": WORKFLOW_ID, "workflow_leg": 1, "workflow_legs": 2, "network_code": "12345",
        "sms_count": 2, "price": "0.0333", "price_nano": 33_300_000, "currency": "EUR", "dispatch_uuid": None,
    }
    [callback] = rows(db_path, "SELECT api, kind, body FROM callbacks")
    assert (callback["api"], callback["kind"]) == ("messages", "message_status")
    assert json.loads(callback["body"]) == E1  # everything, the WhatsApp extras included, kept raw


def test_the_real_sms_trace_makes_one_message_charged_at_submitted(post, rows, db_path):
    stored(post, E2_SUBMITTED, E2_DELIVERED)
    [message] = rows(db_path, "SELECT * FROM messages")
    assert (message["api"], message["status"], message["price"], message["currency"], message["sms_count"]) == (
        "messages", "delivered", "0.093", "EUR", 1)
    [line] = rows(db_path, "SELECT * FROM billing_lines")
    assert (line["api"], line["charged_status"], line["charged_at"], line["price_nano"]) == (
        "messages", "submitted", "2023-06-19T10:23:16.000000Z", 93_000_000)


def test_a_numeric_title_an_empty_workflow_and_unknown_fields(post, rows, db_path):
    stored(post, E3)
    [row] = event(rows, db_path, E3["message_uuid"])
    assert (row["error_title"], row["error_code"], row["workflow_id"], row["status"]) == ("1000", 1000, None, "read")
    assert rows(db_path, "SELECT count(*) AS n FROM workflows") == [{"n": 0}]  # `workflow: {}` is no workflow


def test_the_java_sdk_workflow_spelling(post, rows, db_path):
    stored(post, E4)
    [row] = event(rows, db_path, E4["message_uuid"])
    assert (row["workflow_id"], row["workflow_leg"], row["workflow_legs"]) == ("1001", 2, 3)
    [workflow] = rows(db_path, "SELECT * FROM workflows")
    assert (workflow["workflow_id"], workflow["api"], workflow["legs"], workflow["legs_seen"]) == ("1001", "messages", 3, 1)


def test_segments_and_the_docs_total_count(post, rows, db_path):
    stored(post, E5, E6)
    assert event(rows, db_path, E5["message_uuid"])[0]["sms_count"] == 2
    [mms] = event(rows, db_path, E6["message_uuid"])
    assert (mms["channel"], mms["status"], mms["status_rank"]) == ("mms", "undeliverable", 4)


@pytest.mark.parametrize("channel", sorted(V1_ADDRESSES))
def test_every_channel_is_stored_under_one_name(post, rows, db_path, channel):
    statuses = ["submitted", "delivered"] + ([] if channel in ("sms", "mms") else ["read"])
    m = new_uuid()
    stored(post, *(v1_status(m, name, channel=channel, timestamp=f"2026-11-01T10:00:0{i}+01:00")
                   for i, name in enumerate(statuses)))
    [message] = rows(db_path, "SELECT * FROM messages WHERE message_uuid = ?", m)
    expected = "viber_service_msg" if channel == "viber_service" else channel  # as Dispatch rows name it
    assert message["channel"] == expected
    assert message["status"] == statuses[-1]
    assert message["first_seen_at"] == "2026-11-01T09:00:00.000000Z"  # the offset is applied


def test_viber_has_one_name_in_both_apis(post, rows, db_path):
    stored(post, v1_status(channel="viber_service"), status(channel="viber_service_msg"))
    assert rows(db_path, "SELECT DISTINCT channel FROM messages") == [{"channel": "viber_service_msg"}]


# --- telling the kinds apart -------------------------------------------------------------


@pytest.mark.parametrize("body, api, version", [
    (v1_status(), "messages", "v1"),
    ({**v1_status(), "to": {"type": "sms", "number": "447700900000"}}, "messages", "v1"),  # channel decides
    (status(), "dispatch", "v0.1"),
    (status(link=None, workflow={"workflow_id": "w", "items_number": "2", "items_total": "2"}), "messages", "v0.1"),
])
def test_the_shape_decides_the_api_and_version(body, api, version):
    if isinstance(body.get("to"), dict) and "channel" in body:
        with pytest.raises(Exception) as error:  # a v1 body with an object `to` is a v1 body with a bad `to`
            parse(dumps(body))
        assert error.value.errors == {"to": ["Not a valid string."]}
        return
    callback = parse(dumps(body))
    assert (callback.kind, callback.api, callback.version) == ("message_status", api, version)


def test_the_same_url_takes_both_apis(post, rows, db_path):
    d, wa, sms, bodies = failover_workflow()
    workflow_id, uuids, v1_bodies = messages_failover(("whatsapp", "sms"))
    stored(post, *bodies, *v1_bodies)
    workflows = {r["workflow_id"]: r for r in rows(db_path, "SELECT * FROM workflows")}
    assert (workflows[d]["api"], workflows[workflow_id]["api"]) == ("dispatch", "messages")
    assert rows(db_path, "SELECT api, count(*) AS n FROM messages GROUP BY api ORDER BY api") == [
        {"api": "dispatch", "n": 2}, {"api": "messages", "n": 2}]


INBOUND_SMS = {"channel": "sms", "message_uuid": "52afe398-e31a-4362-8c42-beb0c3b1d098", "to": "447700900000",
               "from": "447700900001", "timestamp": "2020-01-01T14:00:00.000Z", "text": "Hello From Vonage!",
               "message_type": "text", "sms": {"total_count": "2", "num_messages": "2", "keyword": "HELLO"},
               "usage": {"currency": "EUR", "price": "0.0333"}, "origin": {"network_code": "12345"}}


def test_an_inbound_message_is_refused_with_why_and_kept(post, rows, db_path):
    response = post(INBOUND_SMS)
    assert response.status_code == 422
    answer = response.get_json()
    assert answer["reason"] == "inbound_message"
    assert "Inbound URL" in answer["message"]
    [kept] = rows(db_path, "SELECT body, reason FROM rejected_callbacks WHERE id = ?", answer["rejected_id"])
    assert (json.loads(kept["body"]), kept["reason"]) == (INBOUND_SMS, "inbound_message")
    assert rows(db_path, "SELECT count(*) AS n FROM status_events") == [{"n": 0}]


# --- hostile and wrong v1 bodies: 422 naming the field, kept ------------------------------


@pytest.mark.parametrize("change, field", [
    ({"to": 447700900000}, "to"),
    ({"from": ["447700900001"]}, "from"),
    ({"to": "1" * 16}, "to"),  # longer than the spec's ToNumber for SMS
    ({"channel": "pigeon"}, "channel"),
    ({"channel": None}, "channel"),
    ({"status": "clicked"}, "status"),
    ({"status": "read"}, "status"),  # SMS has no read receipts
    ({"timestamp": "yesterday"}, "timestamp"),
    ({"client_ref": "x" * 101}, "client_ref"),
    ({"workflow": "3TcNjgu"}, "workflow"),
    ({"workflow": ["w", 1, 2]}, "workflow"),
    ({"workflow": {"workflow_id": "w", "items_number": "two"}}, "workflow"),
    ({"workflow": {"workflow_id": "w", "items_number": "3", "items_total": "2"}}, "workflow"),
    ({"workflow": {"workflow_id": "w", "id": "v"}}, "workflow"),
    ({"workflow": {"workflow_id": "x" * 256}}, "workflow"),
    ({"error": {"title": {"code": 1000}}}, "error"),
    ({"error": "1000"}, "error"),
    ({"usage": {"price": 0.0333, "currency": "EUR"}}, "usage"),
    ({"usage": {"price": "1e-3", "currency": "EUR"}}, "usage"),
    ({"sms": {"count_total": "-1"}}, "sms"),
    ({"destination": {"network_code": "9" * 21}}, "destination"),
])
def test_a_wrong_v1_body_is_refused_naming_the_field_and_kept(post, rows, db_path, change, field):
    body = {**v1_status(), **change}
    response = post(body)
    assert response.status_code == 422, response.get_json()
    answer = response.get_json()
    assert answer["reason"] == "schema_error"
    assert answer["message"] == "The Messages API v1 status callback is invalid."
    assert field in answer["errors"]["json"]
    [kept] = rows(db_path, "SELECT body FROM rejected_callbacks WHERE id = ?", answer["rejected_id"])
    assert json.loads(kept["body"]) == body


@pytest.mark.parametrize("missing", ["message_uuid", "to", "from", "timestamp", "status", "channel"])
def test_each_required_v1_field_is_named_when_missing(post, missing):
    body = {k: v for k, v in v1_status().items() if k != missing}
    if missing == "channel":  # string addresses alone make it v1
        assert isinstance(body["to"], str)
    response = post(body)
    if missing == "message_uuid":  # without message_uuid no shape says "status"
        assert response.status_code == 422
        assert "message_uuid" in response.get_json()["errors"]["json"]
        return
    assert response.status_code == 422
    assert response.get_json()["errors"]["json"] == {missing: ["Missing data for required field."]}


@pytest.mark.parametrize("address, channel", [
    ("US.13491208655302741918", "whatsapp"),  # a business-scoped user id
    ("customer+tag@example.co.uk", "email"),
    ("5432109876543210987654321", "messenger"),
])
def test_addresses_are_not_phone_numbers(post, rows, db_path, address, channel):
    body = v1_status(channel=channel, to=address)
    stored(post, body)
    [row] = event(rows, db_path, body["message_uuid"])
    assert (row["to_id"], row["to_number"]) == (address, None)


# --- Messages failover: the same rows in every arrival order -----------------------------


def derived(conn, workflow_id, uuids):
    """The workflow's derived rows with its ids replaced by names, comparable across runs."""
    names = {workflow_id: "W", **{u: f"LEG{i}" for i, u in enumerate(uuids, 1)}}

    def query(sql, *params):
        cursor = conn.execute(sql, params)
        columns = [c[0] for c in cursor.description]
        return [{k: names.get(v, v) if isinstance(v, str) else v for k, v in zip(columns, r)} for r in cursor]

    return (query("SELECT * FROM workflows WHERE workflow_id = ?", workflow_id),
            query("SELECT * FROM messages WHERE workflow_id = ? ORDER BY workflow_position", workflow_id))


SCENARIOS = {
    "one leg delivered": (("whatsapp",), True),
    "two legs, SMS after WhatsApp": (("whatsapp", "sms"), True),
    "two legs, both rejected": (("rcs", "sms"), False),
    "three legs, SMS last": (("rcs", "whatsapp", "sms"), True),
}
EXPECTED_WORKFLOWS = {
    "one leg delivered": dict(legs=1, legs_seen=1, channels="whatsapp", delivered_channel="whatsapp",
                              outcome="delivered", price="0.01", currency="EUR"),
    "two legs, SMS after WhatsApp": dict(legs=2, legs_seen=2, channels="whatsapp,sms", delivered_channel="sms",
                                         outcome="delivered", price="0.0333", currency="EUR"),
    "two legs, both rejected": dict(legs=2, legs_seen=2, channels="rcs,sms", delivered_channel=None,
                                    outcome="failed", price="0.0333", currency="EUR"),  # SMS charged at submitted
    "three legs, SMS last": dict(legs=3, legs_seen=3, channels="rcs,whatsapp,sms", delivered_channel="sms",
                                 outcome="delivered", price="0.0333", currency="EUR"),
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
@pytest.mark.parametrize("spelling", ["spec", "java"])
def test_every_arrival_order_of_a_messages_workflow_gives_the_same_rows(tmp_path, scenario, spelling):
    channels, delivered = SCENARIOS[scenario]
    path = str(tmp_path / "orders.db")
    db.init_db(path)
    results, first = set(), None
    with closing(db.connect(path, synchronous="OFF")) as conn:
        _, _, sample = messages_failover(channels, delivered=delivered)
        for order in itertools.permutations(range(len(sample))):
            workflow_id, uuids, bodies = messages_failover(channels, delivered=delivered, spelling=spelling)
            with store.transaction(conn):
                for i in order:
                    body = dumps(bodies[i])
                    store.store_callback(conn, parse(body), store.Delivery(body, "/webhooks/vonage", store.utcnow()))
            rows = derived(conn, workflow_id, uuids)
            first = first or rows
            results.add(json.dumps(rows, sort_keys=True))
        assert store.derived_differences(conn) == {"messages": 0, "dispatches": 0, "workflows": 0}
    assert len(results) == 1, f"{len(results)} different results over the arrival orders"
    [workflow], legs = first
    expected = EXPECTED_WORKFLOWS[scenario]
    assert {k: workflow[k] for k in expected} == expected
    assert (workflow["api"], workflow["workflow_id"]) == ("messages", "W")
    assert [leg["workflow_position"] for leg in legs] == list(range(1, len(channels) + 1))
    assert all(leg["dispatch_uuid"] is None and leg["api"] == "messages" for leg in legs)


def test_a_pending_workflow_and_a_late_status_of_an_earlier_leg(post, rows, db_path):
    workflow_id, (wa, sms), bodies = messages_failover(("whatsapp", "sms"))
    stored(post, bodies[0], bodies[1], bodies[2])  # WhatsApp submitted, rejected; SMS submitted
    [workflow] = rows(db_path, "SELECT * FROM workflows")
    assert (workflow["outcome"], workflow["delivered_channel"]) == ("pending", None)
    stored(post, bodies[3])  # SMS delivered
    assert rows(db_path, "SELECT outcome, delivered_channel FROM workflows") == [
        {"outcome": "delivered", "delivered_channel": "sms"}]
    # A late WhatsApp `read` days later (WhatsApp statuses come up to 30 days late) does not
    # change which leg reached the person first.
    stored(post, v1_status(wa, "read", channel="whatsapp", timestamp="2026-11-05T10:00:00Z",
                           workflow=(workflow_id, 1, 2)))
    [after] = rows(db_path, "SELECT * FROM workflows")
    assert (after["outcome"], after["delivered_channel"], after["last_seen_at"]) == (
        "delivered", "sms", "2026-11-05T10:00:00.000000Z")


def test_a_workflow_mixing_a_v01_shaped_leg_and_v1_legs(post, rows, db_path):
    workflow_id, (rcs, sms), bodies = messages_failover(("rcs", "sms"))
    # The SMS leg asked for webhook_version v0.1: objects for to/from, its workflow kept.
    v01 = [status(sms, None, b["status"], channel="sms", timestamp=b["timestamp"],
                  price=(b.get("usage") or {}).get("price"), link=None, workflow=b["workflow"])
           for b in bodies[2:]]
    stored(post, *bodies[:2], *v01)
    [workflow] = rows(db_path, "SELECT * FROM workflows")
    assert {k: workflow[k] for k in ("api", "legs", "channels", "delivered_channel", "outcome", "price")} == {
        "api": "messages", "legs": 2, "channels": "rcs,sms", "delivered_channel": "sms",
        "outcome": "delivered", "price": "0.0333"}
    assert rows(db_path, "SELECT api, count(*) AS n FROM callbacks GROUP BY api") == [{"api": "messages", "n": 4}]


def test_a_workflow_priced_in_two_currencies_is_never_summed(post, rows, db_path):
    workflow_id, uuids, bodies = messages_failover(("sms", "sms"), delivered=True)
    bodies[0]["usage"] = {"currency": "USD", "price": "0.0400"}
    stored(post, *bodies)
    [workflow] = rows(db_path, "SELECT price, price_nano, currency FROM workflows")
    assert workflow == {"price": None, "price_nano": None, "currency": "USD,EUR"} or workflow == {
        "price": None, "price_nano": None, "currency": "EUR,USD"}
    costs = rows(db_path, "SELECT currency, price, price_nano FROM workflow_costs WHERE workflow_id = ? "
                 "ORDER BY currency", workflow_id)
    assert costs == [{"currency": "EUR", "price": "0.0333", "price_nano": 33_300_000},
                     {"currency": "USD", "price": "0.04", "price_nano": 40_000_000}]


def test_reconciliation_says_a_messages_workflow_has_no_provider_total(post, rows, db_path):
    workflow_id, _, bodies = messages_failover(("whatsapp", "sms"))
    stored(post, *bodies)
    [line] = rows(db_path, "SELECT * FROM billing_reconciliation WHERE workflow_id = ?", workflow_id)
    assert line["api"] == "messages"
    assert "no total" in line["reason"]
    assert line["messages_total"] == "0.0333"


def test_billing_lines_follow_vonages_rule_for_v1(post, rows, db_path):
    """SMS and MMS charged at submitted, the other channels at delivered."""
    m_sms, m_wa, m_rcs = new_uuid(), new_uuid(), new_uuid()
    stored(post,
           v1_status(m_sms, "submitted", channel="sms", price="0.0333", timestamp="2026-11-01T10:00:00Z"),
           v1_status(m_wa, "submitted", channel="whatsapp", timestamp="2026-11-01T10:00:00Z"),
           v1_status(m_wa, "delivered", channel="whatsapp", price="0.0100", timestamp="2026-11-01T10:00:09Z"),
           v1_status(m_rcs, "submitted", channel="rcs", timestamp="2026-11-01T10:00:00Z"))
    lines = {r["message_uuid"]: r for r in rows(db_path, "SELECT * FROM billing_lines")}
    assert set(lines) == {m_sms, m_wa}  # the RCS message was never delivered: not charged
    assert (lines[m_sms]["charged_status"], lines[m_wa]["charged_status"]) == ("submitted", "delivered")
    assert lines[m_wa]["charged_at"] == "2026-11-01T10:00:09.000000Z"


# --- upgrading an existing database ------------------------------------------------------


@pytest.fixture
def old_db(tmp_path):
    """A copy of a database written by the receiver before v1 support (schema 1)."""
    path = tmp_path / "events.db"
    shutil.copy(DATA / "schema1.db", path)
    return path


EVENT_TABLES = ("callbacks", "status_events", "final_reports", "final_report_messages", "rejected_callbacks")


def table_rows(path, table, columns=None):
    with closing(sqlite3.connect(path)) as conn:
        names = columns or [c[1] for c in conn.execute(f"PRAGMA table_info({table})")]
        return [tuple(r) for r in conn.execute(f"SELECT {', '.join(names)} FROM {table} ORDER BY rowid")], names


def test_init_db_migrates_an_old_database_in_place(old_db, rows):
    before = {t: table_rows(old_db, t) for t in (*EVENT_TABLES, "messages", "dispatches")}
    assert db.init_db(str(old_db)) == 1
    for table, (values, columns) in before.items():
        assert table_rows(old_db, table, columns)[0] == values, f"{table} rows were rewritten"
    assert rows(old_db, "PRAGMA user_version") == [{"user_version": db.SCHEMA_VERSION}]
    [workflow] = rows(old_db, "SELECT * FROM workflows")
    assert {k: workflow[k] for k in ("workflow_id", "api", "legs", "channels", "delivered_channel", "outcome",
                                     "price", "currency")} == {
        "workflow_id": "11111111-2222-4333-8444-555555555555", "api": "dispatch", "legs": 2,
        "channels": "whatsapp,sms", "delivered_channel": "sms", "outcome": "delivered",
        "price": "0.0333", "currency": "EUR"}
    assert rows(old_db, "SELECT DISTINCT api FROM messages") == [{"api": "dispatch"}]
    with closing(db.connect(str(old_db))) as conn:
        assert store.derived_differences(conn) == {"messages": 0, "dispatches": 0, "workflows": 0}


def test_reprocess_stores_the_v1_body_an_older_version_refused(old_db, rows, runner):
    [refused] = rows(old_db, "SELECT * FROM rejected_callbacks")
    assert (refused["http_status"], refused["reason"]) == (422, "schema_error")
    result = runner.invoke(["init-db", "--db", str(old_db)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(["reprocess", "--db", str(old_db)])
    assert result.exit_code == 0, result.output
    [callback] = rows(old_db, "SELECT * FROM callbacks WHERE api = 'messages'")
    assert callback["received_at"] == refused["received_at"]  # its original arrival
    assert callback["body"] == refused["body"]
    [event] = rows(old_db, "SELECT * FROM status_events WHERE api = 'messages'")
    assert (event["message_uuid"], event["workflow_id"], event["price"]) == (
        "30af1182-e2c9-4986-bf60-0129a14bbc79", WORKFLOW_ID, "0.093")
    assert rows(old_db, "SELECT workflow_id, api, outcome FROM workflows WHERE api = 'messages'") == [
        {"workflow_id": WORKFLOW_ID, "api": "messages", "outcome": "pending"}]
    assert rows(old_db, "SELECT reprocess_result FROM rejected_callbacks") == [{"reprocess_result": "stored"}]
    result = runner.invoke(["check", "--db", str(old_db)])
    assert result.exit_code == 0, result.output


# --- simulated Messages traffic ----------------------------------------------------------


def test_simulate_makes_realistic_messages_failover_beside_dispatch(tmp_path, runner, rows):
    path = tmp_path / "sim.db"
    result = runner.invoke(["simulate", "--api", "mixed", "--dispatches", "300", "--seed", "7", "--db", str(path)])
    assert result.exit_code == 0, result.output
    assert "0 rejected" in result.stderr  # every simulated body passes today's validation
    apis = {r["api"]: r["n"] for r in rows(path, "SELECT api, count(*) AS n FROM workflows GROUP BY api")}
    assert apis["dispatch"] > 100 and apis["messages"] > 100
    bodies = [json.loads(r["body"]) for r in rows(path, "SELECT body FROM callbacks WHERE api = 'messages'")]
    workflows = [b["workflow"] for b in bodies if "workflow" in b]
    assert any("workflow_id" in w for w in workflows) and any("id" in w for w in workflows)  # both spellings
    titles = [b["error"]["title"] for b in bodies if "error" in b]
    assert any(isinstance(t, int) for t in titles) and any(isinstance(t, str) for t in titles)
    # Legs rejected then the next leg: failed-over workflows delivered on a later leg.
    later = rows(path, "SELECT count(*) AS n FROM workflows w JOIN messages m ON m.workflow_id = w.workflow_id "
                       "AND m.channel = w.delivered_channel WHERE w.api = 'messages' AND m.workflow_position > 1")
    assert later[0]["n"] > 10
    # Late statuses of earlier legs: a leg's submitted arriving after a later leg's callback.
    late = rows(path, """SELECT count(*) AS n FROM status_events a JOIN status_events b
                         ON a.workflow_id = b.workflow_id AND a.workflow_leg < b.workflow_leg
                         WHERE a.received_at > b.received_at""")
    assert late[0]["n"] > 0
    result = runner.invoke(["check", "--db", str(path)])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("timestamp, stored", [
    ("2025-02-03T12:14:25Z", "2025-02-03T12:14:25.000000Z"),  # the spec's example, no milliseconds
    ("2020-01-01T14:00:00.000Z", "2020-01-01T14:00:00.000000Z"),
    ("2020-01-01T14:00:03.010+01:00", "2020-01-01T13:00:03.010000Z"),
    ("2020-01-01 14:00:00 +0000", "2020-01-01T14:00:00.000000Z"),  # the Java SDK's 2022 format
])
def test_v1_timestamps_with_or_without_milliseconds_z_or_an_offset(post, rows, db_path, timestamp, stored):
    body = v1_status(timestamp=timestamp)
    assert post(body).status_code == 200
    assert event(rows, db_path, body["message_uuid"])[0]["timestamp"] == stored


def test_a_space_before_z_is_still_no_timestamp(post):
    response = post(v1_status(timestamp="2020-01-01T14:00:00 Z"))
    assert response.status_code == 422
    assert "timestamp" in response.get_json()["errors"]["json"]
