"""Marshmallow schemas of the two Dispatch callbacks, field by field after the seed spec.

Unknown fields are accepted and kept (Vonage adds fields over time); the raw body is stored
byte-exact beside the validated fields.
"""

import re
from datetime import datetime, timedelta, timezone

from marshmallow import INCLUDE, Schema, ValidationError, fields, validate, validates_schema

from . import money

CHANNELS = ("sms", "mms", "viber_service_msg", "messenger", "whatsapp")
# The Final Report's channel enum is misspelt in every published spec version.
CHANNEL_ALIASES = {"viber_sevice_msg": "viber_service_msg"}
STATUSES = ("submitted", "delivered", "read", "rejected", "undeliverable")
FINAL_STATUSES = ("completed", "error")
TEMPLATES = ("failover",)

# The current status of a message is the highest-ranked one seen, whatever the arrival order:
# submitted < delivered < read, and the terminal failures above any success.
STATUS_RANK = {"submitted": 1, "delivered": 2, "read": 3, "undeliverable": 4, "rejected": 5}

UUID_LENGTH = validate.Length(min=1, max=100)
ERROR_CODE_RANGE = validate.Range(min=0, max=2**31 - 1)
CURRENCY_PATTERN = re.compile(r"^[A-Z]{3}\Z")


ISO_DATETIME = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:[.,](\d{1,12}))?"
    r"(?:([Zz])|([+-])(\d{2}):?(\d{2}))?\Z",
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
    """A channel name; the spec's misspelling is accepted and stored normalised."""

    def _deserialize(self, value, attr, data, **kwargs):
        text = super()._deserialize(value, attr, data, **kwargs)
        return CHANNEL_ALIASES.get(text, text)


class Base(Schema):
    """Every callback schema keeps unknown fields instead of rejecting them."""

    class Meta:
        unknown = INCLUDE


class Endpoint(Base):
    """The ``to`` / ``from`` object of a message status."""

    type = fields.String(required=True, validate=validate.OneOf(CHANNELS))
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


MESSAGE_STATUS = "message_status"
FINAL_REPORT = "final_report"
KINDS = (MESSAGE_STATUS, FINAL_REPORT)

# Built once: a schema built per request costs five times as much as one reused.
SCHEMAS = {MESSAGE_STATUS: MessageStatus(), FINAL_REPORT: FinalReport()}
