"""Every answer the webhook endpoints give, through Flask's test client and a real SQLite file."""

import hashlib
import io
import json

import pytest

from conftest import post_to
from payloads import SEED_FINAL_REPORT, SEED_STATUS, dumps, final_report, status
from receiver import create_app

ENDPOINTS = ["/webhooks/message-status", "/webhooks/final-report", "/webhooks/vonage"]


def flatten(errors, prefix=()):
    """{"to": {"type": [...]}} -> {"to.type"}."""
    paths = set()
    for key, value in errors.items():
        if isinstance(value, dict):
            paths |= flatten(value, prefix + (key,))
        else:
            paths.add(".".join(prefix + (key,)))
    return paths


def stored_body(rows, db_path, table, row_id):
    """The stored body as bytes, and SQLite's type for it (text or blob)."""
    [row] = rows(db_path, f"SELECT CAST(body AS BLOB) AS raw, typeof(body) AS type FROM {table} WHERE id = ?", row_id)
    return row["raw"], row["type"]


def assert_rejection_kept(rows, db_path, response, body, path="/webhooks/vonage"):
    """The rejected body is in rejected_callbacks verbatim, with the answer given."""
    answer = response.get_json()
    [row] = rows(db_path, "SELECT * FROM rejected_callbacks WHERE id = ?", answer["rejected_id"])
    raw, kind = stored_body(rows, db_path, "rejected_callbacks", answer["rejected_id"])
    assert raw == body
    assert row["body_bytes"] == len(body)
    assert row["body_truncated"] == 0
    assert row["sha256"] == hashlib.sha256(body).hexdigest()
    assert row["http_status"] == response.status_code == answer["code"]
    assert row["reason"] == answer["reason"]
    assert row["endpoint"] == path
    assert row["reprocessed_at"] is None
    kept_error = json.loads(row["error"])
    assert kept_error == {k: v for k, v in answer.items() if k != "rejected_id"}
    return row, kind


# Shapes from the seed document and the field notes, each with the kind it is.
FIELD_SHAPES = {
    "seed status": (SEED_STATUS, "message_status"),
    "seed final report": (SEED_FINAL_REPORT, "final_report"),
    "status with _links.dispatch": (status("m-dispatch", "d-1", "delivered", price="0.0333"), "message_status"),
    "status with _links.workflow": (status("m-workflow", "d-1", "read", link="workflow"), "message_status"),
    "status without _links": (status("m-nolinks", None, "submitted", channel="sms"), "message_status"),
    "viber status": (status("m-viber", "d-1", "delivered", channel="viber_service_msg"), "message_status"),
    "messenger status": (status("m-messenger", "d-1", "read", channel="messenger"), "message_status"),
    "rejected status with error": (
        status("m-rejected", "d-1", "rejected", channel="sms", error=(1330, "Delivery failed")),
        "message_status"),
    "undeliverable status": (
        status("m-undeliverable", "d-1", "undeliverable", error=(1300, "Not part of the provider network")),
        "message_status"),
    "stray tab in from.number": (
        status("m-tab", "d-1", **{"from": {"type": "sms", "number": "44770\t0900000"}}), "message_status"),
    "unknown fields everywhere": (
        status("m-unknown", "d-1", client_ref="abc", new_top={"x": [1, 2]},
               to={"type": "sms", "number": "447700900001", "network_code": "23410"}),
        "message_status"),
    "final report with viber_sevice_msg": (
        final_report("d-2", [("m-a", "viber_sevice_msg", "submitted", "0.0020"),
                             ("m-b", "sms", "delivered", "0.0333")]),
        "final_report"),
    "final report with error": (
        final_report("d-3", [("m-c", "sms", "rejected", "0")], status="error"), "final_report"),
    "final report without usage": (
        {"dispatch_uuid": "d-4", "template": "failover", "status": "completed",
         "timestamp": "2020-01-01T14:00:00.000Z"}, "final_report"),
}


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("shape", list(FIELD_SHAPES))
def test_real_callbacks_are_stored_on_every_endpoint(post, rows, db_path, path, shape):
    payload, kind = FIELD_SHAPES[shape]
    body = dumps(payload)
    response = post(body, path)
    assert response.status_code == 200
    answer = response.get_json()
    assert answer == {"status": "stored", "kind": kind, "callback_id": answer["callback_id"],
                      "delivery_count": 1}
    [row] = rows(db_path, "SELECT * FROM callbacks")
    assert (row["id"], row["kind"], row["endpoint"], row["delivery_count"]) == (
        answer["callback_id"], kind, path, 1)
    events = "status_events" if kind == "message_status" else "final_reports"
    assert [r["callback_id"] for r in rows(db_path, f"SELECT callback_id FROM {events}")] == [row["id"]]
    assert rows(db_path, "SELECT count(*) AS n FROM rejected_callbacks") == [{"n": 0}]


def test_a_final_report_posted_to_message_status_is_stored_as_a_final_report(post, rows, db_path):
    response = post(SEED_FINAL_REPORT, "/webhooks/message-status")
    assert response.status_code == 200
    assert response.get_json()["kind"] == "final_report"
    assert rows(db_path, "SELECT dispatch_uuid, status FROM final_reports") == [
        {"dispatch_uuid": SEED_FINAL_REPORT["dispatch_uuid"], "status": "completed"}]
    assert rows(db_path, "SELECT count(*) AS n FROM status_events") == [{"n": 0}]


def test_a_status_posted_to_final_report_is_stored_as_a_status(post, rows, db_path):
    response = post(SEED_STATUS, "/webhooks/final-report")
    assert response.status_code == 200
    assert response.get_json()["kind"] == "message_status"
    assert rows(db_path, "SELECT message_uuid, status FROM status_events") == [
        {"message_uuid": SEED_STATUS["message_uuid"], "status": "delivered"}]
    assert rows(db_path, "SELECT count(*) AS n FROM final_reports") == [{"n": 0}]


def test_the_request_is_recorded_with_the_callback(client, rows, db_path):
    body = dumps(status("m-1", "d-1"))
    response = client.post("/webhooks/vonage", data=body, content_type="application/json; charset=utf-8",
                           headers={"User-Agent": "Vonage/1.0"}, environ_base={"REMOTE_ADDR": "203.0.113.7"})
    assert response.status_code == 200
    [row] = rows(db_path, "SELECT * FROM callbacks")
    assert row["user_agent"] == "Vonage/1.0"
    assert row["content_type"] == "application/json; charset=utf-8"
    assert row["remote_addr"] == "203.0.113.7"
    assert row["signature_status"] == "unsigned"
    assert row["received_at"] == row["last_received_at"]
    assert row["received_at"].endswith("Z") and len(row["received_at"]) == 27


@pytest.mark.parametrize(
    "body",
    [
        dumps(SEED_STATUS),
        json.dumps(SEED_STATUS, indent=4).encode() + b"\r\n",  # odd whitespace is kept too
        # Non-ASCII sent raw and sent escaped are different bytes; each is kept as sent.
        json.dumps(status("m-é", "d-1", error=(1300, "Zustellung fehlgeschlagen – Ünbekannt ✉")),
                   ensure_ascii=False).encode("utf-8"),
        json.dumps(status("m-é", "d-1", error=(1300, "Zustellung fehlgeschlagen – Ünbekannt ✉")),
                   ensure_ascii=True).encode("utf-8"),
        b'{"message_uuid":"m-\\ud83d\\ude00","status":"read","timestamp":"2020-01-01T14:00:00Z"}',
    ],
    ids=["compact", "indented", "utf-8", "escaped", "surrogate-pair"],
)
def test_callbacks_body_is_byte_exact_and_hashed(post, rows, db_path, body):
    response = post(body)
    assert response.status_code == 200
    raw, kind = stored_body(rows, db_path, "callbacks", response.get_json()["callback_id"])
    assert kind == "text"
    assert raw == body
    [row] = rows(db_path, "SELECT sha256 FROM callbacks")
    assert row["sha256"] == hashlib.sha256(body).hexdigest()


# --- duplicates ---------------------------------------------------------------------------


@pytest.mark.parametrize("second_path", ["/webhooks/vonage", "/webhooks/message-status"])
def test_a_repeated_delivery_is_stored_once_and_counted(post, rows, db_path, second_path):
    body = dumps(status("m-1", "d-1", "delivered", price="0.0333"))
    first = post(body)
    second = post(body, second_path)
    assert first.status_code == second.status_code == 200
    assert first.get_json()["status"] == "stored"
    assert second.get_json() == {"status": "duplicate", "kind": "message_status",
                                 "callback_id": first.get_json()["callback_id"], "delivery_count": 2}
    [row] = rows(db_path, "SELECT * FROM callbacks")
    assert row["delivery_count"] == 2
    assert row["last_received_at"] >= row["received_at"]
    assert rows(db_path, "SELECT count(*) AS n FROM status_events") == [{"n": 1}]
    assert rows(db_path, "SELECT event_count, price FROM messages") == [{"event_count": 1, "price": "0.0333"}]


def test_a_repeated_final_report_is_stored_once(post, rows, db_path):
    body = dumps(final_report("d-1", [("m-1", "sms", "delivered", "0.0333")]))
    assert [post(body).get_json()["delivery_count"] for _ in range(3)] == [1, 2, 3]
    assert rows(db_path, "SELECT count(*) AS n FROM final_reports") == [{"n": 1}]
    assert rows(db_path, "SELECT count(*) AS n FROM final_report_messages") == [{"n": 1}]
    assert rows(db_path, "SELECT final_report_count FROM dispatches") == [{"final_report_count": 1}]


# --- 400: not a JSON object -----------------------------------------------------------------

VALID = dumps(status("m-1", "d-1"))


@pytest.mark.parametrize(
    "body, reason",
    [
        (b'{"message_uuid": "m", "status": }', "invalid_json"),
        (b"hello, this is not JSON", "invalid_json"),
        (b"message_uuid=m&status=delivered", "invalid_json"),
        (b"", "empty_body"),
        (b'{"message_uuid": "m-\xff\xfe", "status": "delivered"}', "invalid_utf8"),
        (b"\xef\xbb\xbf" + VALID, "invalid_json"),  # byte order mark
        (VALID[:-7], "invalid_json"),  # truncated
        (VALID + b"}", "invalid_json"),  # trailing garbage
        (b'{"message_uuid": "m\x00", "status": "delivered"}', "invalid_json"),  # raw NUL
        (b"[" * 100_000, "too_deep"),
        (b'{"a": ' * 100_000, "too_deep"),
        (b'{"message_uuid": "m", "x": ' + b"[" * 33 + b"]" * 33 + b"}", "too_deep"),
    ],
    ids=["malformed", "text", "form", "empty", "invalid-utf8", "bom", "truncated", "trailing",
         "raw-nul", "deep-array", "deep-object", "depth-34"],
)
@pytest.mark.parametrize("path", ENDPOINTS)
def test_bodies_that_are_not_json_objects_get_400_and_are_kept(post, rows, db_path, body, reason, path):
    response = post(body, path)
    assert response.status_code == 400
    assert response.is_json
    answer = response.get_json()
    assert answer["reason"] == reason
    assert answer["status"] == "Bad Request"
    assert set(answer["errors"]["json"]) == {"_body"}
    row, kind = assert_rejection_kept(rows, db_path, response, body, path)
    # Text when the bytes are valid UTF-8 (readable in Datasette), else the bytes as a BLOB.
    assert kind == ("blob" if reason == "invalid_utf8" or b"\x00" in body else "text")
    assert rows(db_path, "SELECT count(*) AS n FROM callbacks") == [{"n": 0}]


def test_nesting_up_to_32_levels_is_accepted(post):
    nested = b"[" * 31 + b"]" * 31  # the object itself is level 1
    body = b'{"message_uuid": "m", "status": "read", "timestamp": "2020-01-01T14:00:00Z", "x": ' + nested + b"}"
    assert post(body).status_code == 200
    deeper = b'{"message_uuid": "m", "status": "read", "timestamp": "2020-01-01T14:00:00Z", "x": ' + b"[" * 32 + b"]" * 32 + b"}"
    assert post(deeper).get_json()["reason"] == "too_deep"


# --- 422: JSON that is not a valid callback -----------------------------------------------


def _bad_status():
    body = status("m-1", "d-1", "bogus", timestamp="yesterday", price=0.0333, currency="eur",
                  error=(10**30, "r" * 1001))
    body["to"] = {"type": "fax", "number": ""}
    body["from"] = {"number": "4" * 51}
    body["_links"]["workflow"] = {"href": "/workflows/x"}
    return body


def _bad_report():
    body = final_report("d" * 101, [("m-1", "viber", "sent", "1e-3"), ("m-2", "sms", "read", "0.1")],
                        status="delivered", template="round_robin", price="-1", currency="EURO")
    del body["_links"]["messages"][1]["message_uuid"]
    return body


@pytest.mark.parametrize(
    "payload, path, reason, paths",
    [
        (_bad_status(), "/webhooks/vonage", "schema_error", {
            "status", "timestamp", "usage.price", "usage.currency", "error.code", "error.reason",
            "to.type", "to.number", "from.type", "from.number", "_links.workflow.dispatch_uuid"}),
        (_bad_report(), "/webhooks/vonage", "schema_error", {
            "dispatch_uuid", "template", "status", "usage.price", "usage.currency",
            "_links.messages.0.channel", "_links.messages.0.status", "_links.messages.0.usage.price",
            "_links.messages.0.usage.currency", "_links.messages.1.usage.currency",
            "_links.messages.1.message_uuid"}),
        ({"message_uuid": "m-1"}, "/webhooks/vonage", "schema_error", {"status", "timestamp"}),
        ({"dispatch_uuid": "d-1", "template": "failover"}, "/webhooks/message-status", "schema_error",
         {"status", "timestamp"}),
        ({}, "/webhooks/message-status", "schema_error", {"message_uuid", "status", "timestamp"}),
        ({}, "/webhooks/final-report", "schema_error", {"dispatch_uuid", "template", "status", "timestamp"}),
        ({}, "/webhooks/vonage", "unknown_kind", {"message_uuid", "dispatch_uuid"}),
        ({"status": "delivered", "timestamp": "2020-01-01T14:00:00Z"}, "/webhooks/vonage", "unknown_kind",
         {"message_uuid", "dispatch_uuid"}),
        (status("m-1", "d-1", _links={"workflow": {"dispatch_uuid": "d-1"}, "dispatch": {"dispatch_uuid": "d-2"}}),
         "/webhooks/vonage", "schema_error", {"_links.dispatch"}),
        ([SEED_STATUS], "/webhooks/vonage", "schema_error", {"_schema"}),
        (None, "/webhooks/vonage", "schema_error", {"_schema"}),
        ("delivered", "/webhooks/message-status", "schema_error", {"_schema"}),
        (1300, "/webhooks/final-report", "schema_error", {"_schema"}),
    ],
    ids=["status-everything-wrong", "report-everything-wrong", "status-missing", "report-missing-to-status-url",
         "empty-at-status-url", "empty-at-report-url", "empty-at-vonage", "no-kind", "conflicting-links",
         "array", "null", "string", "number"],
)
def test_invalid_callbacks_get_422_naming_every_failing_field(post, rows, db_path, payload, path, reason, paths):
    body = json.dumps(payload).encode()
    response = post(body, path)
    assert response.status_code == 422
    answer = response.get_json()
    assert answer["status"] == "Unprocessable Entity"
    assert answer["reason"] == reason
    assert flatten(answer["errors"]["json"]) == paths
    assert all(isinstance(problems, list) and problems for problems in _leaves(answer["errors"]["json"]))
    assert_rejection_kept(rows, db_path, response, body, path)
    assert rows(db_path, "SELECT count(*) AS n FROM callbacks") == [{"n": 0}]


def _leaves(errors):
    for value in errors.values():
        if isinstance(value, dict):
            yield from _leaves(value)
        else:
            yield value


def test_422_error_messages_say_what_is_wrong(post):
    answer = post(status("m", "d", "sent", timestamp="yesterday", to={"type": "fax"})).get_json()
    assert answer["errors"]["json"] == {
        "status": ["Must be one of: submitted, delivered, read, rejected, undeliverable."],
        "timestamp": ["Not a valid ISO 8601 date-time."],
        "to": {"type": ["Must be one of: sms, mms, viber_service_msg, messenger, whatsapp, rcs, email, viber_service."]},
    }
    assert answer["message"] == "The message status callback is invalid."


# --- 413: too large ------------------------------------------------------------------------


@pytest.fixture
def small_client(db_path):
    """An app whose RECEIVER_MAX_BODY_BYTES is 100."""
    return create_app({"db_path": str(db_path), "max_body_bytes": 100}).test_client()


MINIMAL = b'{"message_uuid":"m","status":"read","timestamp":"2020-01-01T14:00:00Z"}'


def test_a_body_at_the_limit_is_taken(small_client, rows, db_path):
    body = MINIMAL.ljust(100)  # JSON allows the trailing spaces
    assert len(body) == 100
    response = post_to(small_client, body)
    assert response.status_code == 200
    assert stored_body(rows, db_path, "callbacks", response.get_json()["callback_id"])[0] == body


@pytest.mark.parametrize("size", [101, 5000])
def test_a_body_over_the_limit_gets_413_and_its_start_is_kept(small_client, rows, db_path, size):
    body = MINIMAL.ljust(size)
    response = post_to(small_client, body)
    assert response.status_code == 413
    answer = response.get_json()
    assert answer["reason"] == "body_too_large"
    assert answer["errors"] == {"json": {"_body": [f"Body is {size} bytes; the limit is 100 bytes."]}}
    [row] = rows(db_path, "SELECT * FROM rejected_callbacks")
    assert row["id"] == answer["rejected_id"]
    assert stored_body(rows, db_path, "rejected_callbacks", row["id"])[0] == body[:100]
    assert (row["http_status"], row["reason"], row["body_bytes"], row["body_truncated"]) == (
        413, "body_too_large", size, 1)
    assert json.loads(row["error"]) == {k: v for k, v in answer.items() if k != "rejected_id"}
    assert rows(db_path, "SELECT count(*) AS n FROM callbacks") == [{"n": 0}]


def test_a_chunked_body_over_the_limit_gets_413(small_client, rows, db_path):
    """Without Content-Length the limit still holds (gunicorn marks chunked input terminated)."""
    body = MINIMAL.ljust(5000)
    response = small_client.post("/webhooks/vonage", input_stream=io.BytesIO(body),
                                 headers={"Transfer-Encoding": "chunked"},
                                 environ_overrides={"wsgi.input_terminated": True})
    assert response.status_code == 413
    [row] = rows(db_path, "SELECT * FROM rejected_callbacks")
    assert stored_body(rows, db_path, "rejected_callbacks", row["id"])[0] == body[:100]
    assert row["body_truncated"] == 1


def test_a_chunked_body_under_the_limit_is_stored(small_client, rows, db_path):
    response = small_client.post("/webhooks/vonage", input_stream=io.BytesIO(MINIMAL),
                                 headers={"Transfer-Encoding": "chunked"},
                                 environ_overrides={"wsgi.input_terminated": True})
    assert response.status_code == 200
    assert stored_body(rows, db_path, "callbacks", response.get_json()["callback_id"])[0] == MINIMAL


def test_the_default_limit_takes_a_large_callback(post, rows, db_path):
    body = dumps(status("m-big", "d-1", note="x" * 900_000))
    assert len(body) < 1024 * 1024
    response = post(body)
    assert response.status_code == 200
    assert stored_body(rows, db_path, "callbacks", response.get_json()["callback_id"])[0] == body


# --- hostile bodies: never a 5xx, always kept ----------------------------------------------

BASE = '"message_uuid": "m-hostile", "status": "delivered", "timestamp": "2020-01-01T14:00:00Z"'


def raw(extra):
    """A status body with ``extra`` JSON members spliced in as text."""
    return ("{" + BASE + ", " + extra + "}").encode("utf-8")


def nested_prices(n, price):
    return dumps(final_report("d-overflow", [(f"m-{i}", "sms", "delivered", price) for i in range(n)], price="1"))


HOSTILE = {
    # wrong types for every known field
    "message_uuid number": b'{"message_uuid": 123, "status": "read", "timestamp": "2020-01-01T14:00:00Z"}',
    "message_uuid null": b'{"message_uuid": null, "status": "read", "timestamp": "2020-01-01T14:00:00Z"}',
    "message_uuid object": b'{"message_uuid": {"$gt": ""}, "status": "read", "timestamp": "2020-01-01T14:00:00Z"}',
    "status list": b'{"message_uuid": "m", "status": ["read"], "timestamp": "2020-01-01T14:00:00Z"}',
    "timestamp number": b'{"message_uuid": "m", "status": "read", "timestamp": 1577887200}',
    "to string": raw('"to": "sms"'),
    "to list": raw('"to": [{"type": "sms"}]'),
    "from null": raw('"from": null'),
    "error string": raw('"error": "1300"'),
    "usage list": raw('"usage": ["EUR", "0.0333"]'),
    "_links list": raw('"_links": []'),
    "_links.dispatch string": raw('"_links": {"dispatch": "d-1"}'),
    "report messages object": dumps(final_report("d", [], _links={"messages": {"0": {"message_uuid": "m"}}})),
    "report messages of strings": dumps(final_report("d", [], _links={"messages": ["m-1", "m-2"]})),
    "report messages of nulls": dumps(final_report("d", [], _links={"messages": [None]})),
    "report 101 messages": dumps(final_report("d", [(f"m{i}", "sms", "read", "0") for i in range(101)])),
    # numbers
    "error.code 10**30": raw('"error": {"code": 1000000000000000000000000000000}'),
    "error.code 1e400": raw('"error": {"code": 1e400}'),
    "error.code -1e400": raw('"error": {"code": -1e400}'),
    "error.code NaN": raw('"error": {"code": NaN}'),
    "error.code Infinity": raw('"error": {"code": Infinity}'),
    "error.code float": raw('"error": {"code": 1300.5}'),
    "error.code true": raw('"error": {"code": true}'),
    "5000-digit number": raw('"x": ' + "9" * 5000),
    "1e400 in an unknown field": raw('"x": 1e400, "y": -1e400, "z": NaN'),
    "price 1e400": raw('"usage": {"currency": "EUR", "price": 1e400}'),
    # strings
    "NUL escapes": raw('"to": {"type": "sms", "number": "4477\\u0000"}, "error": {"code": 1, "reason": "\\u0000\\u0000"}'),
    "NUL in a key": raw('"\\u0000": "\\u0000"'),
    "SQL in message_uuid": b'{"message_uuid": "x\'); DROP TABLE callbacks; --", "status": "read", "timestamp": "2020-01-01T14:00:00Z"}',
    "SQL in reason": raw('"error": {"code": 1, "reason": "\' OR 1=1; DELETE FROM messages; --"}'),
    "SQL in unknown key": raw('"\'; DROP TABLE status_events; --": 1'),
    "control characters": raw('"error": {"code": 1, "reason": "\\b\\f\\n\\r\\t\\u001b[31m"}'),
    "right-to-left override": raw('"error": {"code": 1, "reason": "\\u202egnp.exe"}'),
    "emoji": raw('"error": {"code": 1, "reason": "\U0001F4E8\U0001F525"}'),
    "long message_uuid": dumps(status("m" * 10_000)),
    "long reason": dumps(status(error=(1, "r" * 100_000))),
    "long unknown string": dumps(status(note="n" * 500_000)),
    "long number": dumps(status(to={"type": "sms", "number": "4" * 100_000})),
    "many unknown keys": dumps(status(**{f"k{i}": i for i in range(20_000)})),
    "prototype keys": raw('"__proto__": {"admin": true}, "constructor": {"prototype": 1}'),
    "duplicate keys": raw('"status": "bogus"'),
    "nested 32 deep in to": raw('"to": {"type": "sms", "x": ' + "[" * 30 + "]" * 30 + "}"),
    "huge price": raw('"usage": {"currency": "EUR", "price": "99999.999999999"}'),
    "price too large": raw('"usage": {"currency": "EUR", "price": "999999999.999999999"}'),
    "zero price": raw('"usage": {"currency": "EUR", "price": "0"}'),
    # a JSON escape of a lone surrogate is not a character: 400, kept
    "lone surrogate in to.number": raw('"to": {"type": "sms", "number": "\\ud800"}'),
    "lone surrogate in message_uuid":
        b'{"message_uuid": "\\udfff", "status": "read", "timestamp": "2020-01-01T14:00:00Z"}',
    "lone surrogate in an unknown key": raw('"\\udbff": 1'),
    "escaped surrogate pair (an emoji) in an unknown field": raw('"note": "\\ud83d\\ude00"'),
    "price with trailing newline": raw('"usage": {"currency": "EUR", "price": "0.5\\n"}'),
    "unknown key from_": raw('"from_": "not an object"'),
    "unknown key from_ with a list": raw('"from_": {"type": "sms", "number": ["4477"]}'),
    "a final report of 100 maximal prices": nested_prices(100, "99999.999999999"),
}


@pytest.mark.parametrize("body", list(HOSTILE.values()), ids=list(HOSTILE))
def test_hostile_bodies_get_a_definite_answer_and_are_kept(post, rows, db_path, body):
    response = post(body)
    assert response.is_json
    # 200 stored, or a 4xx whose body is kept: never a 5xx, which Vonage would retry in vain.
    assert response.status_code in (200, 400, 422), response.get_json()
    answer = response.get_json()
    if response.status_code == 200:
        raw_body, _ = stored_body(rows, db_path, "callbacks", answer["callback_id"])
    else:
        raw_body, _ = stored_body(rows, db_path, "rejected_callbacks", answer["rejected_id"])
    assert raw_body == body
    # the tables are all still there
    for table in ("callbacks", "status_events", "messages", "dispatches", "rejected_callbacks"):
        rows(db_path, f"SELECT count(*) FROM {table}")


def test_sql_looking_values_are_stored_verbatim(post, rows, db_path):
    uuid = "x'); DROP TABLE callbacks; --"
    reason = "' OR 1=1; DELETE FROM messages; --"
    assert post(status(uuid, "d'--", "rejected", error=(1, reason))).status_code == 200
    assert rows(db_path, "SELECT message_uuid, dispatch_uuid, error_reason FROM status_events") == [
        {"message_uuid": uuid, "dispatch_uuid": "d'--", "error_reason": reason}]
    assert rows(db_path, "SELECT message_uuid, status FROM messages") == [{"message_uuid": uuid, "status": "rejected"}]


def test_nul_characters_are_stored_verbatim(post, rows, db_path):
    body = raw('"to": {"type": "sms", "number": "4477\\u0000"}, "error": {"code": 1, "reason": "a\\u0000b"}')
    assert post(body).status_code == 200
    assert rows(db_path, "SELECT to_number, error_reason FROM status_events") == [
        {"to_number": "4477\x00", "error_reason": "a\x00b"}]


# --- other routes --------------------------------------------------------------------------


def test_healthz_answers_200_json_and_writes(client, rows, db_path):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.is_json
    assert response.get_json()["status"] == "ok"
    [row] = rows(db_path, "SELECT * FROM receiver_health")
    assert row["pid"] == response.get_json()["pid"]


@pytest.mark.parametrize("method", ["get", "put", "delete", "patch"])
@pytest.mark.parametrize("path", ENDPOINTS)
def test_other_methods_on_webhooks_get_405_json(client, method, path):
    response = getattr(client, method)(path)
    assert response.status_code == 405
    assert response.is_json
    assert response.get_json()["code"] == 405


def test_405_says_which_methods_are_allowed(client):
    response = client.get("/webhooks/vonage")
    assert response.status_code == 405
    assert "POST" in response.headers.get("Allow", "")


@pytest.mark.parametrize("path", ["/", "/webhooks", "/webhooks/status", "/webhooks/vonage/", "/healthz/x"])
def test_unknown_paths_get_404_json(client, path):
    response = client.post(path, data=VALID)
    assert response.status_code == 404
    assert response.is_json
    assert response.get_json()["code"] == 404


def test_nothing_is_stored_for_404_or_405(client, rows, db_path):
    client.post("/nowhere", data=VALID)
    client.get("/webhooks/vonage")
    for table in ("callbacks", "rejected_callbacks"):
        assert rows(db_path, f"SELECT count(*) AS n FROM {table}") == [{"n": 0}]
