"""From raw request bytes to a validated callback: decode, parse, decide the kind, validate.

This is the one place that decides what kind a callback is. Anything a client can send
ends here either as a ``Callback`` or as a ``Rejection`` carrying the HTTP status, a typed
reason and the errors keyed by field.
"""

import json
import re
from dataclasses import dataclass

from marshmallow import ValidationError

from .schemas import FINAL_REPORT, KINDS, MESSAGE_STATUS, V01, V1, schema_for

# Each webhook path and the kind it expects when a body's shape does not decide.
ENDPOINT_KINDS = {
    "/webhooks/message-status": MESSAGE_STATUS,
    "/webhooks/final-report": FINAL_REPORT,
    "/webhooks/vonage": None,
}

# Real callbacks nest four levels deep; anything past this is not a callback.
MAX_DEPTH = 32

HTTP_STATUS_TEXT = {
    400: "Bad Request",
    401: "Unauthorized",
    413: "Payload Too Large",
    422: "Unprocessable Entity",
    503: "Service Unavailable",
}


# Every typed reason a refusal can have (Rejection.reason), what `reprocess --reason` takes.
REASONS = (
    # the bytes (400) and the JSON (422)
    "empty_body", "invalid_utf8", "invalid_json", "invalid_unicode", "too_deep", "body_too_large",
    "schema_error", "unknown_kind", "inbound_message", "unstorable",
    # signatures and credentials (401)
    "missing_token", "malformed_token", "bad_algorithm", "bad_signature", "unknown_api_key",
    "payload_hash_mismatch", "missing_iat", "bad_iat", "expired_token", "token_not_yet_valid",
    "future_iat", "stale_iat", "missing_basic_auth", "bad_basic_auth",
)


class Rejection(Exception):
    """A callback the receiver will not store as an event, with why."""

    def __init__(self, http_status, reason, message, errors=None):
        super().__init__(message)
        self.http_status = http_status
        self.reason = reason
        self.message = message
        self.errors = errors or {}

    def as_json(self):
        """The response body and the stored error: status, typed reason, errors by field."""
        return {
            "code": self.http_status,
            "status": HTTP_STATUS_TEXT.get(self.http_status, ""),
            "reason": self.reason,
            "message": self.message,
            "errors": {"json": self.errors},
        }


@dataclass(frozen=True)
class Callback:
    """A validated callback: its kind, the loaded fields (unknown fields included), the API it
    came from ('dispatch' or 'messages') and its webhook body version ('v0.1' or 'v1')."""

    kind: str
    data: dict
    api: str = "dispatch"
    version: str = V01


DISPATCH, MESSAGES = "dispatch", "messages"


def classify(payload, default=None):
    """Decide a callback's kind and body version by its shape: (kind, version).

    - a Messages inbound message is refused, it is no status: no ``status``, and its type in
      ``message_type`` (v1) or in ``message.content.type`` (v0.1, with ``to``/``from`` objects);
    - a final report has a top-level ``dispatch_uuid`` and ``template`` (or its message links);
    - a status has ``message_uuid``: Messages v1 when ``to``/``from`` are strings or
      ``channel`` is top-level, else the v0.1 shape Dispatch and Messages v0.1 share.
    The endpoint's ``default`` kind decides when the shape does not; (None, V01) if nothing does.
    """
    if "status" not in payload and ("message_type" in payload or _v01_inbound(payload)):
        raise Rejection(
            422, "inbound_message",
            "This is a Messages API inbound message (a user's reply), not a status: the "
            "application's Inbound URL points at the status receiver. Point the Inbound URL at "
            "the service that handles replies; only the Status URL belongs here.",
            {"message_type" if "message_type" in payload else "message.content.type":
                ["Inbound messages are not stored by the status receiver."]},
        )
    if "message_uuid" in payload:
        v1 = (isinstance(payload.get("to"), str) or isinstance(payload.get("from"), str)
              or "channel" in payload)
        return MESSAGE_STATUS, V1 if v1 else V01
    if "dispatch_uuid" in payload and ("template" in payload or "_links" in payload):
        return FINAL_REPORT, V01
    return default, V01


def _v01_inbound(payload):
    """True for the v0.1 shape of a Messages inbound message: ``message.content.type``."""
    message = payload.get("message")
    return (isinstance(message, dict) and isinstance(message.get("content"), dict)
            and "type" in message["content"])


def api_of(payload, version):
    """Which API sent a callback: Messages for the v1 shape, and for a v0.1-shaped failover leg
    (a ``workflow`` object and no Dispatch ``_links``); Dispatch otherwise."""
    if version == V1 or ("workflow" in payload and "_links" not in payload):
        return MESSAGES
    return DISPATCH


def decode(body):
    """Raw bytes -> a JSON object, or Rejection(400) naming what is wrong with the bytes."""
    if not body:
        raise Rejection(400, "empty_body", "The request body is empty; expected a JSON object.",
                        {"_body": ["Empty body."]})
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise Rejection(400, "invalid_utf8", "The request body is not valid UTF-8.",
                        {"_body": [f"Invalid UTF-8 at byte {error.start}."]}) from None
    try:
        payload = json.loads(text)
    except RecursionError:
        raise Rejection(400, "too_deep", "The JSON is nested too deeply.",
                        {"_body": ["JSON nesting too deep."]}) from None
    except ValueError as error:
        raise Rejection(400, "invalid_json", "The request body is not valid JSON.",
                        {"_body": [str(error)]}) from None
    if LONE_SURROGATE_ESCAPE.search(text) and _has_lone_surrogate(payload):
        raise Rejection(400, "invalid_unicode",
                        "The JSON has a \\u escape of a lone surrogate, which is not a character.",
                        {"_body": ["Lone surrogate (\\ud800-\\udfff) in a string."]})
    if _depth_exceeds(payload, MAX_DEPTH):
        raise Rejection(400, "too_deep", f"The JSON is nested more than {MAX_DEPTH} levels deep.",
                        {"_body": [f"JSON nesting deeper than {MAX_DEPTH} levels."]})
    if not isinstance(payload, dict):
        raise Rejection(422, "schema_error", "A callback must be a JSON object.",
                        {"_schema": [f"Expected a JSON object, got {type(payload).__name__}."]})
    return payload


# A \\u escape in the surrogate range; most bodies have none, so the exact check below is rare.
LONE_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")


def _has_lone_surrogate(value):
    """True when a string (key or value) anywhere in ``value`` cannot be encoded as UTF-8."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _depth_exceeds(value, limit):
    """True when containers in ``value`` nest more than ``limit`` deep (iterative, no recursion)."""
    level = [value]
    for _ in range(limit):
        level = [
            child
            for item in level
            for child in (item.values() if isinstance(item, dict) else item if isinstance(item, list) else ())
            if isinstance(child, (dict, list))
        ]
        if not level:
            return False
    return True


def parse(body, default_kind=None):
    """Raw bytes from an endpoint whose own kind is ``default_kind`` -> a validated Callback."""
    payload = decode(body)
    kind, version = classify(payload, default_kind)
    if kind not in KINDS:
        raise Rejection(
            422, "unknown_kind",
            "Cannot tell the kind of callback: a message status has message_uuid, "
            "a final report has dispatch_uuid and template.",
            {"message_uuid": ["Missing data for required field."],
             "dispatch_uuid": ["Missing data for required field."]},
        )
    try:
        data = schema_for(kind, version).load(payload)
    except ValidationError as error:
        name = "Messages API v1 status" if version == V1 else kind.replace("_", " ")
        raise Rejection(422, "schema_error", f"The {name} callback is invalid.",
                        error.normalized_messages()) from None
    except RecursionError:
        raise Rejection(400, "too_deep", "The JSON is nested too deeply.",
                        {"_body": ["JSON nesting too deep."]}) from None
    return Callback(kind, data, api_of(payload, version), version)
