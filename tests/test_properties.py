"""Property tests: what any valid callback becomes in the store, and what any bad one cannot do.

The strategies mirror the callback schemas as the seed spec and the field notes describe
them (enums, lengths, decimal-string prices, ISO 8601 timestamps, unknown fields welcome),
written out here rather than imported from ``receiver.schemas`` so that a change to the
schemas that breaks a callback Vonage sends is caught (only the price pattern, a product
limit, is read from the published /openapi.json document).

* Every valid Message Status / Final Report posted to any webhook URL is answered 200 and
  reads back field for field from ``status_events`` / ``final_reports`` /
  ``final_report_messages`` (timestamps normalised to UTC, prices as the exact text sent).
* Every mutated callback (wrong type, missing required key, bad enum, bad date, oversized
  field, unicode look-alikes, NUL inside strings, SQL in enum fields) is answered 4xx with
  errors naming the field, leaves exactly one new ``rejected_callbacks`` row holding the body,
  and no row at all in the event tables. Never a 5xx.

Each test function has its own database; examples within it are checked by row deltas.
"""

import copy
import hashlib
import json
import re
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

pytest.importorskip("hypothesis", reason="hypothesis is not installed (test extra)")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import payloads  # noqa: E402
from receiver import create_app, openapi  # noqa: E402
from receiver.db import init_db  # noqa: E402

PROPERTY_SETTINGS = dict(
    deadline=None,
    database=None,  # no example database: each run starts fresh
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large],
)

ENDPOINTS = ("/webhooks/vonage", "/webhooks/message-status", "/webhooks/final-report")
KIND_ENDPOINT = {"message_status": "/webhooks/message-status", "final_report": "/webhooks/final-report"}

# From the seed spec and the field notes.
CHANNELS = ("sms", "mms", "viber_service_msg", "messenger", "whatsapp")
REPORT_CHANNELS = CHANNELS + ("viber_sevice_msg",)  # the spec's typo, stored normalised
STATUSES = ("submitted", "delivered", "read", "rejected", "undeliverable")
FINAL_STATUSES = ("completed", "error")
TEMPLATES = ("failover",)

EVENT_TABLES = ("callbacks", "status_events", "final_reports", "final_report_messages",
                "messages", "dispatches")
ALL_TABLES = EVENT_TABLES + ("rejected_callbacks",)

STATUS_KEYS = {"message_uuid", "to", "from", "timestamp", "status", "error", "usage", "_links"}
FINAL_KEYS = {"dispatch_uuid", "template", "status", "timestamp", "usage", "_links"}
# Unknown top-level keys must not change what kind a body is.
RESERVED_EXTRA_KEYS = STATUS_KEYS | FINAL_KEYS
# Unknown keys that look like the known ones, or like Python / JavaScript internals.
TRICKY_KEYS = ["from_", "_from", "From", "FROM", "to_", "status_", "_links_", "links", "to.type",
               "usage.price", "__class__", "__dict__", "__proto__", "constructor", "", "\u0000",
               "message_uuid ", " status", "Status", "timestamp\u0000"]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ("VONAGE_SIGNATURE_SECRET", "VONAGE_SIGNATURE_SECRETS", "RECEIVER_DB",
                 "RECEIVER_MAX_BODY_BYTES"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def store(tmp_path):
    """One database and one app (no signature secret) per test function."""
    path = tmp_path / "events.db"
    init_db(str(path))
    # Durability across power loss is not under test here: skip the fsync of every commit.
    return Store(path, create_app({"db_path": str(path), "synchronous": "NORMAL"}).test_client())


@dataclass
class Store:
    path: object
    client: object

    def query(self, sql, params=()):
        conn = sqlite3.connect(str(self.path))
        conn.row_factory = sqlite3.Row
        try:
            return [dict(row) for row in conn.execute(sql, params).fetchall()]
        finally:
            conn.close()

    def counts(self):
        return {t: self.query(f"SELECT count(*) AS n FROM {t}")[0]["n"] for t in ALL_TABLES}

    def post(self, body, path="/webhooks/vonage"):
        return self.client.post(path, data=body, content_type="application/json")


# --- strategies: valid callbacks ----------------------------------------------------------

# Any text without lone surrogates: every script, controls, NUL, astral characters.
def text(min_size=0, max_size=20):
    return st.text(min_size=min_size, max_size=max_size)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | text(),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(text(max_size=8), children, max_size=3),
    max_leaves=6,
)


def extras(known):
    """Unknown fields Vonage may add: never a reason to reject."""
    keys = text(max_size=12) | st.sampled_from(TRICKY_KEYS)
    return st.dictionaries(
        keys.filter(lambda k: k not in known and k not in RESERVED_EXTRA_KEYS),
        json_values, max_size=2,
    )


def with_extras(base, known):
    return st.tuples(base, extras(known)).map(lambda pair: {**pair[1], **pair[0]})


# Prices as the published contract (/openapi.json) allows them: a decimal string.
PRICES = st.from_regex(openapi.document()["components"]["schemas"]["MessageStatus"]["properties"]
                       ["usage"]["properties"]["price"]["pattern"], fullmatch=True)
CURRENCIES = st.from_regex(r"[A-Z]{3}", fullmatch=True)


@st.composite
def timestamps(draw):
    """(text as sent, the UTC instant as the store writes it) over RFC 3339 / ISO 8601 forms."""
    local = draw(st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2099, 12, 31)))
    digits = draw(st.sampled_from([0, 0, 1, 2, 3, 3, 4, 5, 6, 6, 7, 9]))
    if digits < 6:  # only instants the digits can express exactly
        local = local.replace(microsecond=local.microsecond - local.microsecond % 10 ** (6 - digits))
    separator = draw(st.sampled_from(["T", "T", "T", "t", " "]))
    text_ = local.strftime("%Y-%m-%d") + separator + local.strftime("%H:%M:%S")
    if digits:
        mark = draw(st.sampled_from([".", ".", ","]))
        text_ += mark + f"{local.microsecond:06d}"[:digits].ljust(digits, "0")
    zone = draw(st.sampled_from(["Z", "z", "offset", "offset", "+00:00", "-00:00", "none"]))
    offset = timedelta(0)
    if zone == "offset":
        minutes = draw(st.integers(-(23 * 60 + 59), 23 * 60 + 59))
        offset = timedelta(minutes=minutes)
        sign = "-" if minutes < 0 else "+"
        hours, mins = divmod(abs(minutes), 60)
        colon = draw(st.sampled_from([":", ":", ""]))
        text_ += f"{sign}{hours:02d}{colon}{mins:02d}"
    elif zone != "none":  # no offset at all is read as UTC
        text_ += zone
    utc = (local - offset).replace(tzinfo=timezone.utc)
    return text_, utc.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def endpoint_objects():
    base = st.fixed_dictionaries(
        {"type": st.sampled_from(CHANNELS)},
        optional={"id": text(1, 50), "number": text(1, 50)},
    )
    return with_extras(base, {"type", "id", "number"})


def usages():
    return with_extras(st.fixed_dictionaries({}, optional={"currency": CURRENCIES, "price": PRICES}),
                       {"currency", "price"})


def dispatch_link(uuid):
    return with_extras(
        st.fixed_dictionaries({"dispatch_uuid": st.just(uuid)}, optional={"href": text(0, 200)}),
        {"dispatch_uuid", "href"},
    )


@st.composite
def status_callbacks(draw):
    """(body, expected status_events columns)."""
    timestamp, expected_timestamp = draw(timestamps())
    body = {
        "message_uuid": draw(text(1, 100)),
        "timestamp": timestamp,
        "status": draw(st.sampled_from(STATUSES)),
    }
    for key, strategy in [
        ("to", endpoint_objects()),
        ("from", endpoint_objects()),
        ("error", with_extras(st.fixed_dictionaries(
            {}, optional={"code": st.integers(0, 2**31 - 1), "reason": text(0, 1000)}), {"code", "reason"})),
        ("usage", usages()),
    ]:
        if draw(st.booleans()):
            body[key] = draw(strategy)
    links = draw(st.sampled_from(["none", "workflow", "dispatch", "both"]))
    parent = None
    if links != "none":
        parent = draw(text(1, 100))
        names = ["workflow", "dispatch"] if links == "both" else [links]
        body["_links"] = draw(with_extras(
            st.fixed_dictionaries({name: dispatch_link(parent) for name in names}),
            {"workflow", "dispatch"}))
    body = {**draw(extras(STATUS_KEYS)), **body}
    to, sender = body.get("to", {}), body.get("from", {})
    error, usage = body.get("error", {}), body.get("usage", {})
    expected = {
        "message_uuid": body["message_uuid"],
        "dispatch_uuid": parent,
        "channel": to.get("type") or sender.get("type"),
        "status": body["status"],
        "timestamp": expected_timestamp,
        "to_type": to.get("type"), "to_id": to.get("id"), "to_number": to.get("number"),
        "from_type": sender.get("type"), "from_id": sender.get("id"), "from_number": sender.get("number"),
        "error_code": error.get("code"), "error_reason": error.get("reason"),
        "price": usage.get("price"), "price_nano": nano(usage.get("price")),
        "currency": usage.get("currency"),
    }
    return body, expected


def nano(price):
    return None if price is None else int(Decimal(price) * 10**9)


def report_messages():
    base = st.fixed_dictionaries(
        {"message_uuid": text(1, 100)},
        optional={"href": text(0, 100), "channel": st.sampled_from(REPORT_CHANNELS),
                  "usage": usages(), "status": st.sampled_from(STATUSES)},
    )
    return with_extras(base, {"message_uuid", "href", "channel", "usage", "status"})


@st.composite
def final_report_callbacks(draw):
    """(body, expected final_reports columns, expected final_report_messages rows)."""
    timestamp, expected_timestamp = draw(timestamps())
    body = {
        "dispatch_uuid": draw(text(1, 100)),
        "template": draw(st.sampled_from(TEMPLATES)),
        "status": draw(st.sampled_from(FINAL_STATUSES)),
        "timestamp": timestamp,
    }
    if draw(st.booleans()):
        body["usage"] = draw(usages())
    messages = []
    if draw(st.booleans()):
        links = draw(extras({"messages"}))
        if draw(st.integers(0, 4)):
            messages = draw(st.lists(report_messages(), max_size=6))
            links["messages"] = messages
        body["_links"] = links
    body = {**draw(extras(FINAL_KEYS)), **body}
    usage = body.get("usage", {})
    expected = {
        "dispatch_uuid": body["dispatch_uuid"], "template": body["template"],
        "status": body["status"], "timestamp": expected_timestamp,
        "price": usage.get("price"), "price_nano": nano(usage.get("price")),
        "currency": usage.get("currency"), "message_count": len(messages),
    }
    expected_messages = [
        {
            "dispatch_uuid": body["dispatch_uuid"], "position": position,
            "message_uuid": item["message_uuid"],
            "channel": {"viber_sevice_msg": "viber_service_msg"}.get(item.get("channel"), item.get("channel")),
            "status": item.get("status"),
            "price": item.get("usage", {}).get("price"),
            "price_nano": nano(item.get("usage", {}).get("price")),
            "currency": item.get("usage", {}).get("currency"),
        }
        for position, item in enumerate(messages, start=1)
    ]
    return body, expected, expected_messages


def encode(body, ascii_only):
    return json.dumps(body, ensure_ascii=ascii_only).encode("utf-8")


# --- valid callbacks are stored field for field -------------------------------------------


def post_valid(store, body, data, path):
    before = store.counts()
    response = store.post(data, path)
    assert response.status_code == 200, (response.status_code, response.get_data(as_text=True))
    answer = response.get_json()
    after = store.counts()
    stored = answer["status"] == "stored"
    assert answer["status"] in ("stored", "duplicate")
    assert after["callbacks"] - before["callbacks"] == int(stored)
    assert after["rejected_callbacks"] == before["rejected_callbacks"]
    (callback,) = store.query("SELECT * FROM callbacks WHERE id = ?", (answer["callback_id"],))
    assert callback["body"] == data.decode("utf-8")
    assert callback["sha256"] == hashlib.sha256(data).hexdigest()
    assert callback["signature_status"] == "unsigned"
    return answer, callback


@settings(max_examples=150, **PROPERTY_SETTINGS)
@given(callback=status_callbacks(), path=st.sampled_from(ENDPOINTS), ascii_only=st.booleans())
def test_any_valid_status_is_stored_field_for_field(store, callback, path, ascii_only):
    body, expected = callback
    data = encode(body, ascii_only)
    answer, row = post_valid(store, body, data, path)
    assert answer["kind"] == row["kind"] == "message_status"
    (event,) = store.query("SELECT * FROM status_events WHERE callback_id = ?", (answer["callback_id"],))
    assert {column: event[column] for column in expected} == expected


@settings(max_examples=150, **PROPERTY_SETTINGS)
@given(callback=final_report_callbacks(), path=st.sampled_from(ENDPOINTS), ascii_only=st.booleans())
def test_any_valid_final_report_is_stored_field_for_field(store, callback, path, ascii_only):
    body, expected, expected_messages = callback
    data = encode(body, ascii_only)
    answer, row = post_valid(store, body, data, path)
    assert answer["kind"] == row["kind"] == "final_report"
    (report,) = store.query("SELECT * FROM final_reports WHERE callback_id = ?", (answer["callback_id"],))
    assert {column: report[column] for column in expected} == expected
    items = store.query("SELECT * FROM final_report_messages WHERE final_report_id = ? ORDER BY position",
                        (report["id"],))
    columns = ("dispatch_uuid", "position", "message_uuid", "channel", "status", "price", "price_nano",
               "currency")
    assert [{column: item[column] for column in columns} for item in items] == expected_messages


# --- strategies: mutated callbacks --------------------------------------------------------


@dataclass(frozen=True)
class Obj:
    fields: dict
    required: tuple = ()


@dataclass(frozen=True)
class ListOf:
    item: Obj
    max_items: int


ENDPOINT_SPEC = Obj({"type": "channel", "id": "short", "number": "short"}, ("type",))
USAGE_SPEC = Obj({"currency": "currency", "price": "price"})
LINK_SPEC = Obj({"dispatch_uuid": "uuid", "href": "href"}, ("dispatch_uuid",))
STATUS_SPEC = Obj(
    {"message_uuid": "uuid", "to": ENDPOINT_SPEC, "from": ENDPOINT_SPEC, "timestamp": "timestamp",
     "status": "status", "error": Obj({"code": "code", "reason": "reason"}), "usage": USAGE_SPEC,
     "_links": Obj({"workflow": LINK_SPEC, "dispatch": LINK_SPEC})},
    ("message_uuid", "timestamp", "status"),
)
REPORT_MESSAGE_SPEC = Obj(
    {"message_uuid": "uuid", "href": "href", "channel": "report_channel", "usage": USAGE_SPEC,
     "status": "status"},
    ("message_uuid",),
)
FINAL_SPEC = Obj(
    {"dispatch_uuid": "uuid", "template": "template", "status": "final_status",
     "timestamp": "timestamp", "usage": USAGE_SPEC,
     "_links": Obj({"messages": ListOf(REPORT_MESSAGE_SPEC, 100)})},
    ("dispatch_uuid", "template", "status", "timestamp"),
)

ENUMS = {"channel": CHANNELS, "report_channel": REPORT_CHANNELS, "status": STATUSES,
         "final_status": FINAL_STATUSES, "template": TEMPLATES}


def candidates(spec, value, path=()):
    """(action, path, field spec) for each mutation this body allows."""
    if isinstance(spec, ListOf):
        yield "replace", path, spec
        if isinstance(value, list):
            for index, item in enumerate(value):
                yield from candidates(spec.item, item, path + (index,))
        return
    if isinstance(spec, Obj):
        if path:
            yield "replace", path, spec
        for name in spec.required:
            yield "remove", path + (name,), None
        for name, field in spec.fields.items():
            if name in value:
                yield from candidates(field, value[name], path + (name,))
        return
    yield "replace", path, spec


def fullwidth(text_):
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text_)


def arabic_digits(text_):
    return "".join(chr(0x0660 + int(c)) if c.isascii() and c.isdigit() else c for c in text_)


# Unicode look-alikes, padding, NUL and invisible characters around a valid value.
LOOKALIKES = [
    str.upper, str.title, lambda v: " " + v, lambda v: v + " ", lambda v: v + "\t",
    lambda v: v + "\u0000", lambda v: v[:1] + "\u0000" + v[1:], lambda v: "\u0000" + v,
    lambda v: v + "\u200b", lambda v: "\ufeff" + v, lambda v: v[:1] + "\u00ad" + v[1:],
    fullwidth, lambda v: v.replace("e", "\u0435").replace("s", "\u0455").replace("i", "\u0131"),
    lambda v: v + "\u0301", lambda v: "",
]
SQL_STRINGS = [
    "delivered' OR '1'='1", "delivered'; DROP TABLE callbacks; --", "sms'--",
    "' UNION SELECT body FROM rejected_callbacks --", "\"); DELETE FROM status_events; --",
    "failover' OR 1=1 --", "completed\" OR \"\"=\"", "NULL", "null", "%", "_", "*",
    "delivered%", "1; SELECT sqlite_version()", "read/**/OR/**/1=1",
]

IMPOSSIBLE_DATES = [
    "2020-13-01T00:00:00Z", "2020-00-10T00:00:00Z", "2020-02-30T00:00:00Z",
    "2021-02-29T00:00:00Z", "2020-04-31T12:00:00Z", "2020-01-32T00:00:00Z",
    "2020-01-01T24:00:00Z", "2020-01-01T23:60:00Z", "2020-01-01T00:00:61Z",
    "2020-01-01T00:00:00+24:00", "2020-01-01T00:00:00+23:5", "2020-01-01T00:00:00+0",
    "2020-1-1T0:0:0Z", "2020-01-01", "14:00:00Z", "2020-01-01T14:00Z",
    "2020-01-01T14:00:00.Z", "2020-01-01T14:00:00ZZ", "2020-01-01T14:00:00UTC",
    "2020-01-01T14:00:00 Z", "2020/01/01 14:00:00", "01/01/2020", "yesterday", "now", "",
    "1577836800", "2020-01-01T14:00:00\u0000", "\u00002020-01-01T14:00:00Z",
    "2020-01-01\u0000T14:00:00Z", "+2020-01-01T14:00:00Z", "2020-01-01T14:00:00-",
]
BAD_PRICES = [
    "-1", "-0.01", "1e3", "1E-2", "1.", ".5", "01", "00.1", "0.1234567890", "1234567890",
    " 1", "1 ", "1,5", "NaN", "Infinity", "0x10", "\u0661", "\uff11", "0.5\u0000", "\u00000.5",
    "", "0.0333 EUR", "€0.03", "1_000",
]
BAD_CURRENCIES = ["eur", "EURO", "EU", "E", "", "€", "E U", "EUR\u0000", "\u0000EUR", "ＥＵＲ",
                  "EUR ", " EUR", "ÉUR", "12A"]

WRONG_FOR_STRING = st.one_of(
    st.integers(-(2**40), 2**40), st.floats(allow_nan=False, allow_infinity=False), st.booleans(),
    st.none(), st.lists(st.integers(), max_size=2), st.dictionaries(text(max_size=4), st.integers(), max_size=2),
)
WRONG_FOR_OBJECT = st.one_of(
    text(max_size=10), st.integers(), st.booleans(), st.none(),
    st.lists(st.integers(), max_size=2), st.just([{}]), st.floats(allow_nan=False),
)
WRONG_FOR_LIST = st.one_of(
    text(max_size=10), st.integers(), st.booleans(), st.none(),
    st.dictionaries(text(max_size=4), st.integers(), max_size=2),
)
WRONG_FOR_CODE = st.one_of(
    text(max_size=10), st.just("1300"),
    st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: f != int(f)),
    st.booleans(), st.none(), st.lists(st.integers(), max_size=2), st.integers(max_value=-1),
    st.integers(min_value=2**31), st.just({"value": 1300}),
)


def long_text(size):
    return text(max_size=8).map(lambda tail: ("x" * size + tail))


def wrong_types(field):
    """Values of a JSON type the field does not have."""
    if isinstance(field, Obj):
        return WRONG_FOR_OBJECT
    if isinstance(field, ListOf):
        return WRONG_FOR_LIST
    if field == "code":
        return WRONG_FOR_CODE
    return WRONG_FOR_STRING


def bad_enum_values(field, current):
    """Strings that are not in the field's enum: SQL, look-alikes, NUL, other enums, noise."""
    allowed = ENUMS[field]
    looks = st.sampled_from(LOOKALIKES).map(lambda f: f(current)).filter(lambda v: v not in allowed)
    return st.one_of(
        st.sampled_from(SQL_STRINGS), looks,
        st.sampled_from([v for e in ENUMS.values() for v in e if v not in allowed]),
        text(max_size=20).filter(lambda v: v not in allowed),
    )


def bad_dates(current):
    looks = st.sampled_from([
        fullwidth, arabic_digits, lambda v: v + "\u0000", lambda v: v[:4] + "\u0000" + v[4:],
        lambda v: " " + v, lambda v: v + " ", lambda v: v + "\u200b", lambda v: v.replace("-", "\u2010"),
    ]).map(lambda f: f(current)).filter(lambda v: v != current)
    return st.one_of(
        st.sampled_from(IMPOSSIBLE_DATES), looks,
        text(max_size=25).filter(lambda v: not re.match(r"\s*\d{4}-\d\d-\d\d", v, re.ASCII)),
    )


def bad_formats(field):
    """Values of the right JSON type that break a length, range or pattern."""
    if isinstance(field, ListOf):
        return st.integers(field.max_items + 1, field.max_items + 5).map(
            lambda n: [{"message_uuid": f"m{i}"} for i in range(n)])
    return {
        "code": st.one_of(st.integers(max_value=-1), st.integers(min_value=2**31)),
        "price": st.sampled_from(BAD_PRICES),
        "currency": st.sampled_from(BAD_CURRENCIES),
        "uuid": st.one_of(st.just(""), long_text(101), text(101, 110)),
        "short": st.one_of(st.just(""), long_text(51), text(51, 60)),
        "href": long_text(2001),
        "reason": long_text(1001),
    }[field]


CATEGORIES = {
    # category: (which candidates it mutates, the strategy of bad values for one)
    "wrong_type": (lambda action, field: action == "replace", lambda field, current: wrong_types(field)),
    "bad_enum": (lambda action, field: action == "replace" and isinstance(field, str) and field in ENUMS,
                 bad_enum_values),
    "bad_date": (lambda action, field: field == "timestamp", lambda field, current: bad_dates(current)),
    "bad_format": (lambda action, field: action == "replace" and (isinstance(field, ListOf) or (
        isinstance(field, str) and field in ("code", "price", "currency", "uuid", "short", "href", "reason"))),
        lambda field, current: bad_formats(field)),
}


def get_path(value, path):
    for key in path:
        value = value[key]
    return value


def apply(body, action, path, value=None):
    changed = copy.deepcopy(body)
    parent = get_path(changed, path[:-1])
    if action == "remove":
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return changed


@st.composite
def mutated_callbacks(draw, category):
    """(kind, mutated body, path of the field made invalid) for one category of mutation."""
    kind = draw(st.sampled_from(["message_status", "final_report"]))
    if kind == "message_status":
        body, _ = draw(status_callbacks())
        spec = STATUS_SPEC
    else:
        body = draw(final_report_callbacks())[0]
        spec = FINAL_SPEC
    if category == "missing":
        choices = [(a, p, f) for a, p, f in candidates(spec, body) if a == "remove"]
        action, path, _ = draw(st.sampled_from(choices))
        return kind, apply(body, "remove", path), path
    applies, values = CATEGORIES[category]
    choices = [(a, p, f) for a, p, f in candidates(spec, body) if applies(a, f)]
    # Never empty: every body has a uuid, a status enum and a timestamp.
    _, path, field = draw(st.sampled_from(choices))
    value = draw(values(field, get_path(body, path)))
    return kind, apply(body, "replace", path, value), path


def error_at(errors, path):
    node = errors
    for key in path:
        assert isinstance(node, dict), (errors, path)
        assert str(key) in node, (errors, path)
        node = node[str(key)]
    assert node, (errors, path)


def assert_rejected_and_kept(store, before, response, data, expected_status=None):
    """4xx, exactly one new rejected_callbacks row with the body verbatim, no event row."""
    assert 400 <= response.status_code < 500, (response.status_code, response.get_data(as_text=True))
    if expected_status is not None:
        assert response.status_code == expected_status, response.get_data(as_text=True)
    answer = response.get_json()
    after = store.counts()
    assert after["rejected_callbacks"] - before["rejected_callbacks"] == 1
    for table in EVENT_TABLES:
        assert after[table] == before[table], table
    (row,) = store.query("SELECT * FROM rejected_callbacks WHERE id = ?", (answer["rejected_id"],))
    assert row["http_status"] == response.status_code == answer["code"]
    assert row["reason"] == answer["reason"]
    assert row["body_bytes"] == len(data)
    assert row["sha256"] == hashlib.sha256(data).hexdigest()
    try:
        as_text = data.decode("utf-8")
    except UnicodeDecodeError:
        as_text = None
    if as_text is not None and "\x00" not in as_text:
        assert row["body"] == as_text
    else:
        assert row["body"] == data
    stored_error = json.loads(row["error"])
    assert stored_error["reason"] == answer["reason"]
    assert stored_error["errors"] == answer["errors"]
    assert answer["errors"]["json"], answer
    return answer


# --- mutated callbacks are refused, kept, and leave no partial rows -----------------------


@pytest.mark.parametrize("category", ["wrong_type", "missing", "bad_enum", "bad_date", "bad_format"])
@settings(max_examples=80, **PROPERTY_SETTINGS)
@given(data=st.data(), ascii_only=st.booleans())
def test_any_invalid_callback_is_refused_with_field_errors_and_kept(store, category, data, ascii_only):
    kind, body, path = data.draw(mutated_callbacks(category), label="mutated")
    raw = encode(body, ascii_only)
    before = store.counts()
    response = store.post(raw, KIND_ENDPOINT[kind])
    answer = assert_rejected_and_kept(store, before, response, raw, 422)
    assert answer["reason"] == "schema_error"
    if path[:1] in (("to",), ("from",)) and isinstance(body.get(path[0]), str) and "channel" not in body:
        # A string address makes the body a Messages API v1 status: its v1 schema then names
        # what such a body lacks, the top-level channel.
        path = ("channel",)
    error_at(answer["errors"]["json"], path)


@settings(max_examples=150, **PROPERTY_SETTINGS)
@given(
    data=st.one_of(
        st.binary(max_size=200),
        text(max_size=60).map(lambda t: t.encode("utf-8")),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.sampled_from([b"", b"{", b"[]", b"null", b"\xef\xbb\xbf{}", b'{"a":"\x00"}', b"\xff\xfe{}",
                         b'{"message_uuid": NaN}', b"{}" * 3, b'"message_uuid"',
                         b'{"message_uuid": "\\udc00", "status": "read", "timestamp": "2020-01-01T00:00:00Z"}',
                         b'{"\\ud800": 1, "message_uuid": "m", "status": "read", "timestamp": "2020-01-01T00:00:00Z"}']),
    ),
    path=st.sampled_from(ENDPOINTS),
)
def test_any_bytes_are_answered_without_server_error_and_kept(store, data, path):
    before = store.counts()
    response = store.post(data, path)
    assert response.status_code in (200, 400, 422), (response.status_code, response.get_data(as_text=True))
    if response.status_code == 200:  # only if the bytes happen to be a valid callback
        after = store.counts()
        assert after["rejected_callbacks"] == before["rejected_callbacks"]
        assert after["callbacks"] - before["callbacks"] == int(response.get_json()["status"] == "stored")
        return
    answer = assert_rejected_and_kept(store, before, response, data)
    if response.status_code == 400:
        assert answer["reason"] in ("empty_body", "invalid_utf8", "invalid_json", "too_deep",
                                    "invalid_unicode")
    else:
        assert answer["reason"] in ("schema_error", "unknown_kind")


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty_body"),
        (b'{"message_uuid": "\xc3\x28"}', "invalid_utf8"),
        (b"\x80" * 10, "invalid_utf8"),
        (b'{"message_uuid": "m1",', "invalid_json"),
        (b'{"message_uuid": "m1" "status": "read"}', "invalid_json"),
        (b"{'message_uuid': 'm1'}", "invalid_json"),
        (b'{"message_uuid": "a\x00b"}', "invalid_json"),
        (b"[" * 200_000 + b"]" * 200_000, "too_deep"),
        (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "too_deep"),
    ],
    ids=["empty", "bad-utf8-in-string", "not-utf8", "truncated", "missing-comma", "single-quotes",
         "raw-nul", "deep-array", "deep-object"],
)
def test_bytes_that_are_not_json_get_400_with_reason(store, data, reason):
    before = store.counts()
    response = store.post(data)
    answer = assert_rejected_and_kept(store, before, response, data, 400)
    assert answer["reason"] == reason
    assert answer["errors"]["json"]["_body"]


def nested(depth):
    value = 1
    for _ in range(depth):
        value = {"n": value}
    return value


def test_nesting_limit_is_32_levels(store):
    """Real callbacks nest four levels; 32 are accepted, 33 are refused as too_deep."""
    within = dict(payloads.status(), extra=nested(31))  # 1 + 31 = 32 levels
    response = store.post(payloads.dumps(within))
    assert response.status_code == 200, response.get_data(as_text=True)

    beyond = dict(payloads.status(), extra=nested(32))
    data = payloads.dumps(beyond)
    before = store.counts()
    answer = assert_rejected_and_kept(store, before, store.post(data), data, 400)
    assert answer["reason"] == "too_deep"


@pytest.mark.parametrize("body", [[], [payloads.SEED_STATUS], "callback", 42, None, True],
                         ids=["list", "list-of-callback", "string", "number", "null", "true"])
def test_json_that_is_not_an_object_gets_422(store, body):
    data = json.dumps(body).encode()
    before = store.counts()
    answer = assert_rejected_and_kept(store, before, store.post(data), data, 422)
    assert answer["reason"] == "schema_error"


@pytest.mark.parametrize("body", [{}, {"status": "delivered", "timestamp": "2020-01-01T00:00:00Z"},
                                  {"dispatch_uuid": "d1"}, {"template": "failover", "status": "completed"}],
                         ids=["empty-object", "no-uuid", "dispatch-uuid-only", "no-dispatch-uuid"])
def test_body_of_no_known_kind_at_the_common_url_gets_unknown_kind(store, body):
    data = json.dumps(body).encode()
    before = store.counts()
    answer = assert_rejected_and_kept(store, before, store.post(data, "/webhooks/vonage"), data, 422)
    assert answer["reason"] == "unknown_kind"
    assert set(answer["errors"]["json"]) == {"message_uuid", "dispatch_uuid"}


@pytest.mark.parametrize("field, value", [
    ("status", "delivered' OR '1'='1"),
    ("status", "delivered'; DROP TABLE callbacks; --"),
    ("to", {"type": "sms' OR 1=1 --", "number": "447700900001"}),
])
def test_sql_in_enum_fields_is_refused_and_tables_survive(store, field, value):
    body = dict(payloads.SEED_STATUS, **{field: value})
    data = json.dumps(body).encode()
    before = store.counts()
    assert_rejected_and_kept(store, before, store.post(data), data, 422)
    # A later valid callback still goes in: nothing was dropped or altered.
    assert store.post(payloads.dumps(payloads.status())).status_code == 200


def test_sql_in_free_text_fields_is_stored_as_plain_text(store):
    hostile = "x'); DROP TABLE callbacks; --"
    body = payloads.status(hostile, hostile, error=(1300, hostile), price="0.01")
    body["to"]["number"] = "1' OR '1'='1"
    response = store.post(payloads.dumps(body))
    assert response.status_code == 200
    (event,) = store.query("SELECT * FROM status_events")
    assert (event["message_uuid"], event["dispatch_uuid"], event["error_reason"], event["to_number"]) \
        == (hostile, hostile, hostile, "1' OR '1'='1")
    assert store.counts()["callbacks"] == 1


# --- regressions of fixed bugs -------------------------------------------------------------


def _never_5xx_and_kept(store, data):
    before = store.counts()
    response = store.post(data)
    after = store.counts()
    assert response.status_code < 500, (response.status_code, response.get_data(as_text=True))
    assert (after["callbacks"] - before["callbacks"]) + (after["rejected_callbacks"] - before["rejected_callbacks"]) == 1
    return response


@pytest.mark.parametrize("field, value", [
    ("usage.price", "0.5\n"), ("usage.price", "1\n"), ("usage.currency", "EUR\n"),
    ("timestamp", "2020-01-01T14:00:00Z\n"), ("final_report.usage.price", "0.0353\n"),
])
def test_trailing_newline_in_patterned_fields_is_refused(store, field, value):
    """The OpenAPI patterns ('^...$' in JSON Schema) do not match a trailing newline; nor may
    the receiver (Python's '$' does), where '0.5\n' used to crash money.to_nano with a 503."""
    if field.startswith("final_report"):
        body = payloads.final_report()
        body["usage"]["price"] = value
    else:
        body = payloads.status(price="0.01")
        if field == "timestamp":
            body["timestamp"] = value
        else:
            body["usage"][field.split(".")[1]] = value
    data = json.dumps(body).encode()
    before = store.counts()
    response = store.post(data)
    assert_rejected_and_kept(store, before, response, data, 422)


@pytest.mark.parametrize("value", ["x", {"type": "carrier-pigeon", "number": "N" * 500}, {"number": {"a": 1}}],
                         ids=["string", "invalid-endpoint", "nested-object"])
def test_unknown_from_underscore_key_does_not_replace_from(store, value):
    """'from' used to load into the attribute 'from_', which an unknown key of that name replaced."""
    body = payloads.status(payloads.new_uuid(), channel="sms")
    body["from_"] = value
    response = _never_5xx_and_kept(store, json.dumps(body).encode())
    assert response.status_code == 200
    (event,) = store.query("SELECT * FROM status_events")
    assert (event["from_type"], event["from_number"]) == ("sms", body["from"]["number"])


LONE_SURROGATE = "\ud83d"  # half of a UTF-16 pair: valid JSON ("\ud83d"), not encodable as UTF-8


@pytest.mark.parametrize("where", ["message_uuid", "to.number", "error.reason", "_links.dispatch_uuid",
                                   "final_report.dispatch_uuid", "final_report.messages.message_uuid"])
def test_lone_surrogate_in_text_field_is_kept_not_503(store, where):
    """A \\ud83d escape is valid JSON but no character: sqlite3 cannot encode it, which used to
    answer 503 (Vonage retries for a day) without keeping the body anywhere."""
    if where.startswith("final_report"):
        body = payloads.final_report(messages=[(payloads.new_uuid(), "sms", "delivered", "0.01")])
        if where.endswith("dispatch_uuid"):
            body["dispatch_uuid"] = "d-" + LONE_SURROGATE
        else:
            body["_links"]["messages"][0]["message_uuid"] = "m-" + LONE_SURROGATE
    else:
        body = payloads.status(payloads.new_uuid(), payloads.new_uuid(), error=(1300, "x"))
        if where == "message_uuid":
            body["message_uuid"] = "m-" + LONE_SURROGATE
        elif where == "to.number":
            body["to"]["number"] = "4477" + LONE_SURROGATE
        elif where == "error.reason":
            body["error"]["reason"] = "bad " + LONE_SURROGATE
        else:
            body["_links"]["dispatch"]["dispatch_uuid"] = "d-" + LONE_SURROGATE
    _never_5xx_and_kept(store, json.dumps(body).encode())


def test_largest_accepted_prices_never_make_a_dispatch_unstorable(store):
    """Ten prices of 999999999.999999999 used to pass validation, then overflow SQLite's 64-bit
    sum(price_nano) of their dispatch: 503, body not kept, and every later callback of that
    dispatch failing the same way. Whatever the limit, each must be answered and kept."""
    dispatch_uuid = payloads.new_uuid()
    for _ in range(10):
        body = payloads.status(None, dispatch_uuid, "submitted", price="999999999.999999999")
        _never_5xx_and_kept(store, payloads.dumps(body))
    _never_5xx_and_kept(store, payloads.dumps(payloads.status(None, dispatch_uuid, "delivered", price="0.01")))
