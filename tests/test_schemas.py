"""The marshmallow schemas and callbacks.decode/classify/parse, without HTTP or a database."""

import copy
import json

import pytest
from marshmallow import ValidationError

from payloads import SEED_FINAL_REPORT, SEED_STATUS, dumps, final_report, status
from receiver.callbacks import Rejection, classify, decode, parse
from receiver.schemas import FINAL_REPORT, MESSAGE_STATUS, SCHEMAS, STATUSES


def load_status(body):
    return SCHEMAS[MESSAGE_STATUS].load(body)


def load_report(body):
    return SCHEMAS[FINAL_REPORT].load(body)


def errors_of(load, body):
    """The errors a schema gives for ``body`` (fails the test when it loads)."""
    with pytest.raises(ValidationError) as caught:
        load(body)
    return caught.value.normalized_messages()


def error_paths(errors, prefix=()):
    """{"to": {"type": [...]}} -> {"to.type"}: the failing fields as dotted paths."""
    paths = set()
    for key, value in errors.items():
        path = prefix + (str(key),)
        if isinstance(value, dict):
            paths |= error_paths(value, path)
        else:
            paths.add(".".join(path))
    return paths


def with_field(body, dotted, value):
    """A deep copy of ``body`` with the field at ``dotted`` ("usage.price") set to ``value``."""
    body = copy.deepcopy(body)
    *parents, last = dotted.split(".")
    target = body
    for name in parents:
        target = target.setdefault(name, {}) if not name.isdigit() else target[int(name)]
    target[last] = value
    return body


def without_field(body, name):
    body = copy.deepcopy(body)
    del body[name]
    return body


def a_report_item(**changes):
    item = {"message_uuid": "m-1", "channel": "sms", "status": "delivered",
            "usage": {"currency": "EUR", "price": "0.0333"}}
    item.update(changes)
    return final_report("d-1", [], _links={"messages": [item]})


# --- the seed's examples -------------------------------------------------------------------


def test_seed_status_example_loads_with_its_values():
    data = load_status(SEED_STATUS)
    assert data["message_uuid"] == "aaaaaaaa-bbbb-cccc-dddd-0123456789ab"
    assert data["to"] == SEED_STATUS["to"]
    assert data["from"] == SEED_STATUS["from"]
    assert data["timestamp"] == "2020-01-01T14:00:00.000000Z"
    assert data["error"] == {"code": 1300, "reason": "Not part of the provider network"}
    assert data["usage"] == {"currency": "EUR", "price": "0.0333"}
    assert data["_links"]["workflow"]["dispatch_uuid"] == "aaaaaaaa-bbbb-cccc-dddd-0123456789ab"


def test_seed_final_report_example_loads_with_its_values():
    data = load_report(SEED_FINAL_REPORT)
    assert data["dispatch_uuid"] == "aaaaaaaa-bbbb-cccc-dddd-0123456789ab"
    assert (data["template"], data["status"]) == ("failover", "completed")
    assert data["usage"] == {"price": "0.02", "currency": "EUR"}
    [item] = data["_links"]["messages"]
    assert item["channel"] == "viber_service_msg"
    assert item["usage"]["price"] == "0.0333"


# --- enums ---------------------------------------------------------------------------------


@pytest.mark.parametrize("side", ["to", "from"])
@pytest.mark.parametrize("channel", ["sms", "mms", "viber_service_msg", "messenger", "whatsapp",
                                     # Messages API channels of a v0.1-shaped status
                                     "rcs", "email", "viber_service"])
def test_endpoint_types_of_the_spec_are_accepted(side, channel):
    data = load_status(with_field(status(), f"{side}.type", channel))
    assert data[side]["type"] == channel


@pytest.mark.parametrize("side", ["to", "from"])
@pytest.mark.parametrize("channel", ["SMS", "viber", "viber_sevice_msg", "", " sms", 1, None])
def test_other_endpoint_types_are_rejected(side, channel):
    errors = errors_of(load_status, with_field(status(), f"{side}.type", channel))
    assert error_paths(errors) == {f"{side}.type"}


@pytest.mark.parametrize("side", ["to", "from"])
def test_endpoint_type_is_required(side):
    errors = errors_of(load_status, with_field(status(), side, {"number": "447700900000"}))
    assert errors == {side: {"type": ["Missing data for required field."]}}


@pytest.mark.parametrize("value", STATUSES)
def test_message_statuses_of_the_spec_are_accepted(value):
    assert load_status(status(status=value))["status"] == value


@pytest.mark.parametrize("value", ["Delivered", "failed", "accepted", "completed", "", 2, None])
def test_other_message_statuses_are_rejected(value):
    assert error_paths(errors_of(load_status, status(status=value))) == {"status"}


@pytest.mark.parametrize("value", ["completed", "error"])
def test_final_report_statuses_are_accepted(value):
    assert load_report(final_report(status=value))["status"] == value


@pytest.mark.parametrize("value", ["delivered", "failed", "Completed", "", None])
def test_other_final_report_statuses_are_rejected(value):
    assert error_paths(errors_of(load_report, final_report(status=value))) == {"status"}


def test_template_failover_is_accepted_and_others_rejected():
    assert load_report(final_report(template="failover"))["template"] == "failover"
    errors = errors_of(load_report, final_report(template="round_robin"))
    assert errors == {"template": ["Must be one of: failover."]}


@pytest.mark.parametrize(
    "sent, loaded",
    [
        ("sms", "sms"),
        ("mms", "mms"),
        ("messenger", "messenger"),
        ("whatsapp", "whatsapp"),
        ("viber_service_msg", "viber_service_msg"),
        # Every published spec spells the enum value this way: accepted, stored normalised.
        ("viber_sevice_msg", "viber_service_msg"),
    ],
)
def test_report_message_channels_are_accepted_and_normalised(sent, loaded):
    data = load_report(a_report_item(channel=sent))
    assert data["_links"]["messages"][0]["channel"] == loaded


@pytest.mark.parametrize("channel", ["viber", "email", "WHATSAPP", "", 3])
def test_other_report_message_channels_are_rejected(channel):
    errors = errors_of(load_report, a_report_item(channel=channel))
    assert error_paths(errors) == {"_links.messages.0.channel"}


@pytest.mark.parametrize("value", STATUSES)
def test_report_message_statuses(value):
    assert load_report(a_report_item(status=value))["_links"]["messages"][0]["status"] == value


def test_report_message_status_outside_the_enum_is_rejected():
    errors = errors_of(load_report, a_report_item(status="completed"))
    assert error_paths(errors) == {"_links.messages.0.status"}


def test_report_message_needs_its_message_uuid():
    body = a_report_item()
    del body["_links"]["messages"][0]["message_uuid"]
    assert errors_of(load_report, body) == {
        "_links": {"messages": {0: {"message_uuid": ["Missing data for required field."]}}}
    }


def test_report_lists_at_most_100_messages():
    items = [(f"m-{i}", "sms", "delivered", "0.01") for i in range(101)]
    assert load_report(final_report("d", items[:100]))["_links"]["messages"][99]["message_uuid"] == "m-99"
    assert error_paths(errors_of(load_report, final_report("d", items))) == {"_links.messages"}


# --- lengths -------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["to.id", "to.number", "from.id", "from.number"])
@pytest.mark.parametrize("length", [1, 16, 50])
def test_ids_and_numbers_of_1_to_50_characters_are_accepted(field, length):
    value = "4" * length
    data = load_status(with_field(status(), field, value))
    side, name = field.split(".")
    assert data[side][name] == value


@pytest.mark.parametrize("field", ["to.id", "to.number", "from.id", "from.number"])
@pytest.mark.parametrize("value", ["", "4" * 51, "4" * 5000])
def test_ids_and_numbers_outside_1_to_50_characters_are_rejected(field, value):
    errors = errors_of(load_status, with_field(status(), field, value))
    assert errors == {field.split(".")[0]: {field.split(".")[1]: ["Length must be between 1 and 50."]}}


@pytest.mark.parametrize("value", [447700900000, None, ["447700900000"]])
def test_numbers_must_be_strings(value):
    assert error_paths(errors_of(load_status, with_field(status(), "to.number", value))) == {"to.number"}


def test_a_stray_tab_in_a_number_is_kept_as_sent():
    # FIELD-NOTES: a real trace shows a tab inside from.number; keep what was sent.
    assert load_status(with_field(status(), "from.number", "44770\t0900000"))["from"]["number"] == "44770\t0900000"


def test_message_uuid_length_limits():
    assert load_status(status("u" * 100))["message_uuid"] == "u" * 100
    assert error_paths(errors_of(load_status, status("u" * 101))) == {"message_uuid"}
    assert error_paths(errors_of(load_status, with_field(status(), "message_uuid", ""))) == {"message_uuid"}


def test_dispatch_uuid_length_limits():
    assert load_report(final_report("d" * 100))["dispatch_uuid"] == "d" * 100
    assert error_paths(errors_of(load_report, final_report("d" * 101))) == {"dispatch_uuid"}


# --- timestamps ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sent, stored",
    [
        ("2020-01-01T14:00:00.000Z", "2020-01-01T14:00:00.000000Z"),
        ("2020-01-01T14:00:00Z", "2020-01-01T14:00:00.000000Z"),
        ("2020-01-01T14:00:00.123456Z", "2020-01-01T14:00:00.123456Z"),
        ("2020-01-01T14:00:00+00:00", "2020-01-01T14:00:00.000000Z"),
        # An offset is normalised to UTC, crossing the date line if it must.
        ("2020-01-01T15:00:00+01:00", "2020-01-01T14:00:00.000000Z"),
        ("2020-01-01T09:30:00.5-04:30", "2020-01-01T14:00:00.500000Z"),
        ("2020-01-01T01:00:00+11:00", "2019-12-31T14:00:00.000000Z"),
        # Without an offset the time is taken as UTC.
        ("2020-01-01T14:00:00", "2020-01-01T14:00:00.000000Z"),
        ("2020-01-01 14:00:00", "2020-01-01T14:00:00.000000Z"),
        ("2020-01-01t14:00:00z", "2020-01-01T14:00:00.000000Z"),
        # A leap second is kept inside its minute.
        ("2016-12-31T23:59:60Z", "2016-12-31T23:59:59.999999Z"),
    ],
)
def test_iso_8601_timestamps_are_normalised_to_utc(sent, stored):
    assert load_status(status(timestamp=sent))["timestamp"] == stored
    assert load_report(final_report(timestamp=sent))["timestamp"] == stored


@pytest.mark.parametrize(
    "sent",
    [
        "yesterday",
        "",
        "2020-01-01",  # a date is not a date-time
        "2020-13-01T14:00:00Z",
        "2020-02-30T14:00:00Z",
        "2020-01-01T25:00:00Z",
        "01/01/2020 14:00",
        "2020-01-01T14:00:00+25:00",
        "0001-01-01T00:00:00+01:00",  # before year 1 once in UTC
        "9999-12-31T23:59:59-01:00",  # after year 9999 once in UTC
        "2020-01-01T14:00:00Z" + " " * 100,
        1577887200,
        1577887200.5,
        ["2020-01-01T14:00:00Z"],
        {"iso": "2020-01-01T14:00:00Z"},
    ],
)
def test_garbage_timestamps_are_rejected(sent):
    assert errors_of(load_status, status(timestamp=sent)) == {"timestamp": ["Not a valid ISO 8601 date-time."]}
    assert errors_of(load_report, final_report(timestamp=sent)) == {"timestamp": ["Not a valid ISO 8601 date-time."]}


def test_a_null_timestamp_is_rejected():
    assert errors_of(load_status, status(timestamp=None)) == {"timestamp": ["Field may not be null."]}


def test_normalised_timestamps_sort_as_time():
    # strftime('%Y') does not zero-pad years before 1000 on Linux; the stored text must.
    early = load_status(status(timestamp="0999-01-01T00:00:00Z"))["timestamp"]
    late = load_status(status(timestamp="2020-01-01T00:00:00Z"))["timestamp"]
    assert early == "0999-01-01T00:00:00.000000Z"
    assert early < late


# --- money ---------------------------------------------------------------------------------


@pytest.mark.parametrize("price", ["0.0333", "0", "0.02", "10", "0.000000001", "99999.999999999"])
def test_decimal_string_prices_are_kept_exactly(price):
    assert load_status(status(price=price))["usage"]["price"] == price
    assert load_report(final_report(price=price))["usage"]["price"] == price
    assert load_report(a_report_item(usage={"price": price}))["_links"]["messages"][0]["usage"]["price"] == price


@pytest.mark.parametrize(
    "price",
    [
        0.0333,  # a JSON number, not a string
        0,
        "1e-3",
        "-1",
        "-0.0333",
        "abc",
        "",
        ".5",
        "1.",
        "01.5",
        "+1",
        " 0.0333",
        "0,0333",
        "1.0000000001",  # ten decimals
        "1000000000",  # ten digits
        "NaN",
        "Infinity",
        "\u0661.5",  # an Arabic-Indic digit
        "100000",  # beyond the largest price kept (99999.999999999): sums must fit 64 bits
        None,
        ["0.0333"],
    ],
)
def test_prices_that_are_not_decimal_strings_are_rejected(price):
    body = with_field(status(price="0.01"), "usage.price", price)
    assert error_paths(errors_of(load_status, body)) == {"usage.price"}
    assert error_paths(errors_of(load_report, final_report(price=price))) == {"usage.price"}
    body = a_report_item(usage={"currency": "EUR", "price": price})
    assert error_paths(errors_of(load_report, body)) == {"_links.messages.0.usage.price"}


@pytest.mark.parametrize("price", ["0.5\n", "1\n", "\n1", "0.0333\r\n"])
def test_a_price_with_a_trailing_newline_is_rejected(price):
    # A regex ending in '$' matches before a final newline; '0.5\n' then broke money.to_nano.
    assert error_paths(errors_of(load_status, status(price=price))) == {"usage.price"}


@pytest.mark.parametrize("currency", ["EUR", "USD", "GBP"])
def test_iso_4217_currencies_are_accepted(currency):
    assert load_status(status(price="0.01", currency=currency))["usage"]["currency"] == currency


@pytest.mark.parametrize("currency", ["eur", "EURO", "EU", "", "E1R", "€", 978, None])
def test_other_currencies_are_rejected(currency):
    assert error_paths(errors_of(load_status, status(price="0.01", currency=currency))) == {"usage.currency"}
    assert error_paths(errors_of(load_report, final_report(currency=currency))) == {"usage.currency"}


def test_a_currency_with_a_trailing_newline_is_rejected():
    assert error_paths(errors_of(load_status, status(price="0.01", currency="EUR\n"))) == {"usage.currency"}


# --- error codes ---------------------------------------------------------------------------


@pytest.mark.parametrize("code", [0, 1300, 2**31 - 1, 1300.0])  # 1300.0 is the JSON number 1300
def test_error_codes_are_integers(code):
    loaded = load_status(status(error=(code, "x")))["error"]["code"]
    assert loaded == code and isinstance(loaded, int)


@pytest.mark.parametrize("code", [-1, 2**31, 10**30, 1300.5, 1e20, "1300", True, float("inf"), float("nan")])
def test_error_codes_that_are_not_small_integers_are_rejected(code):
    assert error_paths(errors_of(load_status, status(error=(code, "x")))) == {"error.code"}


def test_error_reason_is_limited_to_1000_characters():
    assert load_status(status(error=(1300, "r" * 1000)))["error"]["reason"] == "r" * 1000
    assert error_paths(errors_of(load_status, status(error=(1300, "r" * 1001)))) == {"error.reason"}


# --- links ---------------------------------------------------------------------------------


@pytest.mark.parametrize("link", ["workflow", "dispatch"])
def test_both_spellings_of_the_parent_link_are_accepted(link):
    data = load_status(status("m", "d-1", link=link))
    assert data["_links"][link]["dispatch_uuid"] == "d-1"


def test_both_links_naming_the_same_dispatch_are_accepted():
    body = status("m", "d-1")
    body["_links"]["workflow"] = {"dispatch_uuid": "d-1", "href": "/workflows/d-1"}
    data = load_status(body)
    assert data["_links"]["workflow"]["dispatch_uuid"] == data["_links"]["dispatch"]["dispatch_uuid"] == "d-1"


def test_conflicting_links_are_rejected():
    body = status("m", "d-1")
    body["_links"]["workflow"] = {"dispatch_uuid": "d-2"}
    assert errors_of(load_status, body) == {
        "_links": {"dispatch": ["_links.workflow and _links.dispatch name different dispatch_uuids."]}
    }


@pytest.mark.parametrize("link", ["workflow", "dispatch"])
def test_a_parent_link_needs_its_dispatch_uuid(link):
    body = status(_links={link: {"href": "v0.1/dispatch/x"}})
    assert errors_of(load_status, body) == {
        "_links": {link: {"dispatch_uuid": ["Missing data for required field."]}}
    }


def test_a_status_without_links_is_accepted():
    assert "_links" not in load_status(status("m", None))


# --- required fields and unknown fields ---------------------------------------------------


@pytest.mark.parametrize("name", ["message_uuid", "status", "timestamp"])
def test_status_required_fields(name):
    assert errors_of(load_status, without_field(status(), name)) == {
        name: ["Missing data for required field."]
    }


@pytest.mark.parametrize("name", ["dispatch_uuid", "template", "status", "timestamp"])
def test_final_report_required_fields(name):
    assert errors_of(load_report, without_field(final_report(), name)) == {
        name: ["Missing data for required field."]
    }


def test_minimal_status_needs_only_the_required_fields():
    data = load_status({"message_uuid": "m", "status": "read", "timestamp": "2020-01-01T14:00:00Z"})
    assert data == {"message_uuid": "m", "status": "read", "timestamp": "2020-01-01T14:00:00.000000Z"}


def test_every_failing_field_is_named_at_once():
    body = status(status="bogus", timestamp="never", price=0.1, currency="eur", error=(-5, "x"))
    body["to"]["type"] = "fax"
    body["from"]["number"] = "4" * 51
    del body["message_uuid"]
    assert error_paths(errors_of(load_status, body)) == {
        "message_uuid", "status", "timestamp", "usage.price", "usage.currency", "error.code",
        "to.type", "from.number",
    }


def test_unknown_fields_are_kept_in_the_loaded_data():
    body = status(client_ref="order-17", profile={"name": "Ann"})
    body["to"]["network_code"] = "23410"
    body["usage"] = {"currency": "EUR", "price": "0.01", "vat": "0.002"}
    data = load_status(body)
    assert data["client_ref"] == "order-17"
    assert data["profile"] == {"name": "Ann"}
    assert data["to"]["network_code"] == "23410"
    assert data["usage"]["vat"] == "0.002"

    report = final_report(brand="Acme")
    report["_links"]["self"] = {"href": "v0.1/dispatch/x"}
    data = load_report(report)
    assert data["brand"] == "Acme"
    assert data["_links"]["self"] == {"href": "v0.1/dispatch/x"}


def test_an_unknown_key_cannot_replace_a_validated_field():
    # Unknown keys are kept under their own name; one named like a field's Python attribute
    # ("from_" for "from") must not replace the validated value that rows.py reads.
    body = status("m", "d")
    body["from_"] = "not an object"
    data = load_status(body)
    assert data["from"] == body["from"]
    assert data["from_"] == "not an object"


# --- decode, classify, parse --------------------------------------------------------------


@pytest.mark.parametrize(
    "payload, default, kind",
    [
        (SEED_STATUS, None, MESSAGE_STATUS),
        (SEED_FINAL_REPORT, None, FINAL_REPORT),
        (SEED_STATUS, FINAL_REPORT, MESSAGE_STATUS),  # the shape wins over the endpoint
        (SEED_FINAL_REPORT, MESSAGE_STATUS, FINAL_REPORT),
        ({"dispatch_uuid": "d", "_links": {}}, None, FINAL_REPORT),  # no template, but links
        ({"dispatch_uuid": "d", "template": "failover", "message_uuid": "m"}, None, MESSAGE_STATUS),
        ({"dispatch_uuid": "d"}, None, None),
        ({"dispatch_uuid": "d"}, FINAL_REPORT, FINAL_REPORT),
        ({}, MESSAGE_STATUS, MESSAGE_STATUS),
        ({}, None, None),
    ],
)
def test_classify_by_shape_then_endpoint(payload, default, kind):
    assert classify(payload, default)[0] == kind


@pytest.mark.parametrize("body, kind", [(SEED_STATUS, MESSAGE_STATUS), (SEED_FINAL_REPORT, FINAL_REPORT)])
@pytest.mark.parametrize("default", [None, MESSAGE_STATUS, FINAL_REPORT])
def test_parse_returns_the_kind_and_loaded_data(body, kind, default):
    callback = parse(dumps(body), default)
    assert callback.kind == kind
    assert callback.data == SCHEMAS[kind].load(body)


def test_parse_of_an_unrecognisable_object_names_both_keys():
    with pytest.raises(Rejection) as caught:
        parse(b'{"status": "delivered"}', None)
    assert (caught.value.http_status, caught.value.reason) == (422, "unknown_kind")
    assert set(caught.value.errors) == {"message_uuid", "dispatch_uuid"}


def test_parse_of_an_invalid_callback_is_a_422_with_the_field_errors():
    with pytest.raises(Rejection) as caught:
        parse(dumps(status(status="bogus")), None)
    rejection = caught.value
    assert (rejection.http_status, rejection.reason) == (422, "schema_error")
    assert rejection.as_json() == {
        "code": 422,
        "status": "Unprocessable Entity",
        "reason": "schema_error",
        "message": "The message status callback is invalid.",
        "errors": {"json": {"status": [f"Must be one of: {', '.join(STATUSES)}."]}},
    }


@pytest.mark.parametrize(
    "body, status_code, reason",
    [
        (b"", 400, "empty_body"),
        (b'{"a": "\xff"}', 400, "invalid_utf8"),
        (b"{not json", 400, "invalid_json"),
        (b'{"a": 1', 400, "invalid_json"),
        (b"\xef\xbb\xbf{}", 400, "invalid_json"),  # a UTF-8 byte order mark
        (b"[" * 100_000, 400, "too_deep"),
        (b'{"a":' * 100_000, 400, "too_deep"),
        (b"[]", 422, "schema_error"),
        (b"null", 422, "schema_error"),
        (b"42", 422, "schema_error"),
        (b'"text"', 422, "schema_error"),
    ],
)
def test_decode_rejects_what_is_not_a_json_object(body, status_code, reason):
    with pytest.raises(Rejection) as caught:
        decode(body)
    assert (caught.value.http_status, caught.value.reason) == (status_code, reason)
    json.dumps(caught.value.as_json())  # the error must be storable as JSON

