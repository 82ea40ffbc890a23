"""Marshmallow schemas of the callbacks: Dispatch's two (the seed spec) and the Messages API v1
status webhook (Vonage's Messages spec 1.20.0; see shared/vonage/MESSAGES-V1.md).

Unknown fields are accepted and kept (Vonage adds fields over time); the raw body is stored
byte-exact beside the validated fields.
"""

import re
from datetime import datetime, timedelta, timezone

from marshmallow import (INCLUDE, Schema, ValidationError, fields, post_load, validate,
                         validates_schema)

from . import money

CHANNELS = ("sms", "mms", "viber_service_msg", "messenger", "whatsapp")
STATUSES = ("submitted", "delivered", "read", "rejected", "undeliverable")
V1_CHANNELS = ("sms", "mms", "rcs", "whatsapp", "messenger", "viber_service", "email")
# One name per channel in every table, view and metric label: Messages API v1 names Viber
# `viber_service`, Dispatch `viber_service_msg`, and the Final Report's channel enum misspells
# it in every published spec version. Each other name -> the one stored (channel_name).
CHANNEL_NAMES = {"viber_service": "viber_service_msg", "viber_sevice_msg": "viber_service_msg"}


def channel_name(name):
    """The one name a channel is stored and labelled under, whichever API or spec spelt it."""
    return CHANNEL_NAMES.get(name, name)


# Every channel as stored: Dispatch's and the Messages API's (whose statuses may come in the
# v0.1 shape too: any message can ask for v0.1 webhooks).
STORED_CHANNELS = tuple(dict.fromkeys(channel_name(c) for c in (*CHANNELS, *V1_CHANNELS)))
# Channels without `read` receipts (Messages spec 1.20.0: `read` only on the OTT channels).
NO_READ_CHANNELS = ("sms", "mms")
FINAL_STATUSES = ("completed", "error")
TEMPLATES = ("failover",)

# The current status of a message is the highest-ranked one seen, whatever the arrival order:
# submitted < delivered < read, and the terminal failures above any success.
STATUS_RANK = {"submitted": 1, "delivered": 2, "read": 3, "undeliverable": 4, "rejected": 5}
# The statuses that mean the message reached the person, and their ranks (views.reached()).
REACHED_STATUSES = ("delivered", "read")
REACHED_RANKS = tuple(STATUS_RANK[status] for status in REACHED_STATUSES)
# The ranks of a failed message: undeliverable or rejected.
FAILED_RANKS = (STATUS_RANK["undeliverable"], STATUS_RANK["rejected"])

UUID_LENGTH = validate.Length(min=1, max=100)
ERROR_CODE_RANGE = validate.Range(min=0, max=2**31 - 1)
CURRENCY_PATTERN = re.compile(r"^[A-Z]{3}\Z")


ISO_DATETIME = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:[.,](\d{1,12}))?"
    r"(?:([Zz])|[ ]?([+-])(\d{2}):?(\d{2}))?\Z",
    re.ASCII,
)


def parse_timestamp(text):
    """ISO 8601 / RFC 3339 date-time text -> aware UTC datetime, or None if it is not one.

    A time without an offset is taken as UTC; a leap second (:60) is kept as :59.999999.
    """
    match = ISO_DATETIME.match(text)
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, _z, sign, off_h, off_m = match.groups()
    micro = int((fraction or "0")[:6].ljust(6, "0"))
    second = int(second)
    if second == 60:
        second, micro = 59, 999_999
    try:
        offset = timedelta(0)
        if sign:
            offset = timedelta(hours=int(off_h), minutes=int(off_m))
            if offset >= timedelta(hours=24):
                return None
            offset = -offset if sign == "-" else offset
        moment = datetime(int(year), int(month), int(day), int(hour), int(minute), second, micro,
                          tzinfo=timezone(offset))
        return moment.astimezone(timezone.utc)
    except (ValueError, OverflowError):
        return None


def format_timestamp(moment):
    """Aware datetime -> the store's UTC text, '2020-01-01T14:00:00.000000Z' (years zero-padded)."""
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


class Timestamp(fields.Field):
    """An ISO 8601 date-time, loaded as normalised UTC text ('2020-01-01T14:00:00.000000Z').

    Normalising makes the column sort and compare as time; the text Vonage sent stays in the
    raw callback.
    """

    default_error_messages = {"invalid": "Not a valid ISO 8601 date-time."}

    def _deserialize(self, value, attr, data, **kwargs):
        moment = parse_timestamp(value) if isinstance(value, str) and len(value) <= 64 else None
        if moment is None:
            raise self.make_error("invalid")
        return format_timestamp(moment)


class Price(fields.String):
    """A charge as Vonage sends it: a decimal string such as "0.0333", kept exactly."""

    default_error_messages = {
        "invalid_price": "Must be a decimal string such as \"0.0333\" "
        "(non-negative, at most 5 digits before and 9 after the point)."
    }

    def _deserialize(self, value, attr, data, **kwargs):
        text = super()._deserialize(value, attr, data, **kwargs)
        if not money.is_price(text):
            raise self.make_error("invalid_price")
        return text


class Channel(fields.String):
    """A channel name; another spelling of it (CHANNEL_NAMES) is accepted and loaded as the
    one name."""

    def _deserialize(self, value, attr, data, **kwargs):
        return channel_name(super()._deserialize(value, attr, data, **kwargs))


class Base(Schema):
    """Every callback schema keeps unknown fields instead of rejecting them."""

    class Meta:
        unknown = INCLUDE


class Endpoint(Base):
    """The ``to`` / ``from`` object of a message status in the v0.1 shape: Dispatch's, or a
    Messages API message's that asked for v0.1 webhooks (any Messages channel)."""

    # stored under channel_name (rows.py); the Final Report's misspelling is no status's
    type = fields.String(required=True,
                         validate=validate.OneOf((*STORED_CHANNELS, "viber_service")))
    id = fields.String(validate=validate.Length(min=1, max=50))
    number = fields.String(validate=validate.Length(min=1, max=50))


class ErrorCode(fields.Integer):
    """An integer error code; 1300.0 is the JSON number 1300 too (strings and 1300.5 are not)."""

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        return super()._deserialize(value, attr, data, **kwargs)


class Error(Base):
    code = ErrorCode(strict=True, validate=ERROR_CODE_RANGE)
    reason = fields.String(validate=validate.Length(max=1000))


class Usage(Base):
    currency = fields.String(validate=validate.Regexp(CURRENCY_PATTERN, error="Must be an ISO 4217 code such as EUR."))
    price = Price()


class DispatchLink(Base):
    dispatch_uuid = fields.String(required=True, validate=UUID_LENGTH)
    href = fields.String(validate=validate.Length(max=2000))


class StatusLinks(Base):
    """The spec names the parent link ``workflow``; real payloads name it ``dispatch``."""

    workflow = fields.Nested(DispatchLink)
    dispatch = fields.Nested(DispatchLink)
    # links_agree in /openapi.json: JSON Schema cannot say "equal", so the document asks for
    # one of the two links, a little stricter than the server (which takes both if they agree).
    openapi_extra = {"not": {"required": ["workflow", "dispatch"]}}

    @validates_schema
    def links_agree(self, data, **kwargs):
        workflow, dispatch = data.get("workflow"), data.get("dispatch")
        if workflow and dispatch and workflow["dispatch_uuid"] != dispatch["dispatch_uuid"]:
            raise ValidationError(
                "_links.workflow and _links.dispatch name different dispatch_uuids.", "dispatch"
            )


# The Message Status callback: one per status change of one message of a workflow. Built
# with from_dict so that `from` (a Python keyword) loads under its own name: an attribute
# name differing from the key could be overwritten by an unknown key of that name.
MessageStatus = Base.from_dict(
    {
        "message_uuid": fields.String(required=True, validate=UUID_LENGTH),
        "to": fields.Nested(Endpoint),
        "from": fields.Nested(Endpoint),
        "timestamp": Timestamp(required=True),
        "status": fields.String(required=True, validate=validate.OneOf(STATUSES)),
        "error": fields.Nested(Error),
        "usage": fields.Nested(Usage),
        "_links": fields.Nested(StatusLinks),
        # A Messages failover leg sent with webhook_version v0.1 (see MessagesStatus below).
        "client_ref": fields.String(validate=validate.Length(max=100)),
        "workflow": fields.Nested(lambda: Workflow()),
    },
    name="MessageStatus",
)


class ReportMessage(Base):
    """One item of a Final Report's ``_links.messages``: a message of the workflow, in order."""

    message_uuid = fields.String(required=True, validate=UUID_LENGTH)
    href = fields.String(validate=validate.Length(max=2000))
    channel = Channel(validate=validate.OneOf(CHANNELS))
    usage = fields.Nested(Usage)
    status = fields.String(validate=validate.OneOf(STATUSES))


class ReportLinks(Base):
    messages = fields.List(fields.Nested(ReportMessage), validate=validate.Length(max=100))


class FinalReport(Base):
    """The Final Report callback: one per workflow, when its condition was met or it ended."""

    dispatch_uuid = fields.String(required=True, validate=UUID_LENGTH)
    template = fields.String(required=True, validate=validate.OneOf(TEMPLATES))
    status = fields.String(required=True, validate=validate.OneOf(FINAL_STATUSES))
    timestamp = Timestamp(required=True)
    usage = fields.Nested(Usage)
    _links = fields.Nested(ReportLinks)


# --- Messages API v1 status webhook -----------------------------------------------------------

class ErrorTitle(fields.Field):
    """The v1 error code in ``title``: text in the spec ('1000'), a number in some of Vonage's
    SDK fixtures (1000). Loaded as text either way."""

    default_error_messages = {"invalid": "Must be an error code: a string or an integer."}
    # Its JSON Schema in /openapi.json (receiver/openapi.py reads ``openapi`` of a field type).
    openapi = {"anyOf": [{"type": "string", "maxLength": 100},
                         {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}]}

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31:
            return str(value)
        if isinstance(value, str) and len(value) <= 100:
            return value
        raise self.make_error("invalid")


class Count(fields.Field):
    """A count or position that Vonage sends as a string ('2') and its SDKs as a number (2)."""

    default_error_messages = {"invalid": "Must be a whole number, as a string or an integer."}
    # Its JSON Schema in /openapi.json; a Range validator bounds the integer form.
    openapi = {"anyOf": [{"type": "string", "pattern": "^[0-9]{1,9}$"}, {"type": "integer"}]}

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 9:
            return int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise self.make_error("invalid")


COUNT_RANGE = validate.Range(min=0, max=10**6)
POSITION_RANGE = validate.Range(min=1, max=10**6)


class V1Error(Base):
    type = fields.String(validate=validate.Length(max=2000))
    title = ErrorTitle()
    detail = fields.String(validate=validate.Length(max=2000))
    instance = fields.String(validate=validate.Length(max=200))


class Workflow(Base):
    """``workflow`` of a failover leg. The spec (and .NET SDK) name its keys ``workflow_id``,
    ``items_number``, ``items_total``; Vonage's Java SDK ``id``, ``item_number``,
    ``total_items``. Both load to the spec's names; ``{}`` is legal (Java SDK tests send it)."""

    workflow_id = fields.String(validate=validate.Length(min=1, max=255))
    id = fields.String(validate=validate.Length(min=1, max=255))
    items_number = Count(validate=POSITION_RANGE)
    item_number = Count(validate=POSITION_RANGE)
    items_total = Count(validate=POSITION_RANGE)
    total_items = Count(validate=POSITION_RANGE)

    SPELLINGS = (("workflow_id", "id"), ("items_number", "item_number"),
                 ("items_total", "total_items"))
    # spellings_agree in /openapi.json: JSON Schema cannot say "equal" or "at most", so the
    # document asks for one spelling of each key (the leg number against the total is not said).
    openapi_extra = {"not": {"anyOf": [{"required": list(pair)} for pair in SPELLINGS]}}

    @validates_schema
    def spellings_agree(self, data, **kwargs):
        errors = {}
        for name, alias in self.SPELLINGS:
            if name in data and alias in data and data[name] != data[alias]:
                errors[alias] = [f"Differs from {name} ({data[name]!r})."]
        number = data.get("items_number", data.get("item_number"))
        total = data.get("items_total", data.get("total_items"))
        if number is not None and total is not None and number > total:
            errors["items_number"] = [f"Leg {number} of a workflow of {total} legs."]
        if errors:
            raise ValidationError(errors)

    @post_load
    def canonical(self, data, **kwargs):
        """The spec's key names, whichever spelling arrived."""
        for name, alias in self.SPELLINGS:
            if alias in data:
                data.setdefault(name, data.pop(alias))
        return data


class Destination(Base):
    network_code = fields.String(validate=validate.Length(max=20))


class SmsDetails(Base):
    """``sms`` of an SMS status: the spec writes ``count_total``, Vonage's docs ``total_count``."""

    count_total = Count(validate=COUNT_RANGE)
    total_count = Count(validate=COUNT_RANGE)


# Lengths of `to` and `from` per channel, after the spec's address types: ToNumber (7-15
# digits, E.164 without +), FromNumber / alphanumeric senders / RCS sender ids, Messenger's
# ToId/FromId (1-50), WhatsApp's phone number or business-scoped user id ("US.1349..."),
# email addresses (at most 254 characters, RFC 5321). Not checked as E.164.
ADDRESS_LENGTHS = {
    "sms": ((7, 15), (1, 50)),
    "mms": ((7, 15), (1, 50)),
    "rcs": ((7, 15), (1, 50)),
    "viber_service": ((7, 15), (1, 50)),
    "whatsapp": ((7, 100), (1, 50)),
    "messenger": ((1, 50), (1, 50)),
    "email": ((3, 254), (3, 254)),
}
ADDRESS = validate.Length(min=1, max=254)


def _check_v1(schema, data, **kwargs):
    """Per channel: the lengths of `to` and `from`, and `read` only where the channel has it."""
    channel = data.get("channel")
    if channel not in ADDRESS_LENGTHS:
        return
    errors = {}
    for key, (low, high) in zip(("to", "from"), ADDRESS_LENGTHS[channel]):
        value = data.get(key)
        if value is not None and not low <= len(value) <= high:
            errors[key] = [f"Length must be between {low} and {high} for the {channel} channel."]
    if channel in NO_READ_CHANNELS and data.get("status") == "read":
        errors["status"] = [f"The {channel} channel has no read status."]
    if errors:
        raise ValidationError(errors)


def _v1_openapi():
    """_check_v1 in /openapi.json: the lengths of `to` and `from` per channel, no `read` where
    the channel has none."""
    rules = [{"if": {"properties": {"channel": {"const": channel}}, "required": ["channel"]},
              "then": {"properties": {key: {"minLength": low, "maxLength": high}
                                      for key, (low, high) in zip(("to", "from"), lengths)}}}
             for channel, lengths in ADDRESS_LENGTHS.items()]
    rules.append({"if": {"properties": {"channel": {"enum": list(NO_READ_CHANNELS)}},
                         "required": ["channel"]},
                  "then": {"properties": {"status": {"not": {"const": "read"}}}}})
    return {"allOf": rules}


# The Messages API v1 status webhook: `to` and `from` are strings and `channel` is top-level.
MessagesStatus = Base.from_dict(
    {
        "message_uuid": fields.String(required=True, validate=UUID_LENGTH),
        "to": fields.String(required=True, validate=ADDRESS),
        "from": fields.String(required=True, validate=ADDRESS),
        "channel": fields.String(required=True, validate=validate.OneOf(V1_CHANNELS)),
        "timestamp": Timestamp(required=True),
        "status": fields.String(required=True, validate=validate.OneOf(STATUSES)),
        "error": fields.Nested(V1Error),
        "usage": fields.Nested(Usage),
        "client_ref": fields.String(validate=validate.Length(max=100)),
        "workflow": fields.Nested(Workflow),
        "destination": fields.Nested(Destination),
        "sms": fields.Nested(SmsDetails),
        "check_addresses": validates_schema(_check_v1),
    },
    name="MessagesStatus",
)
MessagesStatus.openapi_extra = _v1_openapi()


MESSAGE_STATUS = "message_status"
FINAL_REPORT = "final_report"
KINDS = (MESSAGE_STATUS, FINAL_REPORT)
# The two webhook body versions Vonage sends (the Messages API's `webhook_version`): Dispatch
# and Messages v0.1 share one shape, Messages v1 has its own.
V01, V1 = "v0.1", "v1"

# Built once: a schema built per request costs five times as much as one reused.
# Keyed by kind, and by kind + "_v1" for the v1 shape of a kind.
SCHEMAS = {
    MESSAGE_STATUS: MessageStatus(),
    FINAL_REPORT: FinalReport(),
    f"{MESSAGE_STATUS}_v1": MessagesStatus(),
}


def schema_for(kind, version):
    """The schema that validates a ``kind`` callback of webhook ``version``."""
    return SCHEMAS[kind if version == V01 else f"{kind}_v1"]
