"""The OpenAPI 3.1 document of the receiver's own endpoints, served at /openapi.json.

Enums and limits come from receiver.schemas, so the document and the validation agree.
"""

from . import __version__
from .schemas import CHANNELS, CHANNEL_ALIASES, FINAL_STATUSES, STATUSES, TEMPLATES

STRING_1_50 = {"type": "string", "minLength": 1, "maxLength": 50}
UUID = {"type": "string", "minLength": 1, "maxLength": 100}
TIMESTAMP = {"type": "string", "format": "date-time", "example": "2020-01-01T14:00:00.000Z"}
PRICE = {"type": "string", "pattern": r"^(0|[1-9][0-9]{0,4})(\.[0-9]{1,9})?$", "example": "0.0333"}
CURRENCY = {"type": "string", "pattern": "^[A-Z]{3}$", "example": "EUR"}


def _object(properties, required=()):
    schema = {"type": "object", "properties": properties, "additionalProperties": True}
    if required:
        schema["required"] = list(required)
    return schema


USAGE = _object({"currency": CURRENCY, "price": PRICE})
ENDPOINT = _object({"type": {"type": "string", "enum": list(CHANNELS)}, "id": STRING_1_50,
                    "number": STRING_1_50}, ["type"])
DISPATCH_LINK = _object({"dispatch_uuid": UUID, "href": {"type": "string", "maxLength": 2000}},
                        ["dispatch_uuid"])

MESSAGE_STATUS = _object(
    {
        "message_uuid": UUID,
        "to": ENDPOINT,
        "from": ENDPOINT,
        "timestamp": TIMESTAMP,
        "status": {"type": "string", "enum": list(STATUSES)},
        "error": _object({"code": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1},
                          "reason": {"type": "string", "maxLength": 1000}}),
        "usage": USAGE,
        "_links": _object({"workflow": DISPATCH_LINK, "dispatch": DISPATCH_LINK}),
    },
    ["message_uuid", "timestamp", "status"],
)

FINAL_REPORT = _object(
    {
        "dispatch_uuid": UUID,
        "template": {"type": "string", "enum": list(TEMPLATES)},
        "status": {"type": "string", "enum": list(FINAL_STATUSES)},
        "timestamp": TIMESTAMP,
        "usage": USAGE,
        "_links": _object({
            "messages": {
                "type": "array",
                "maxItems": 100,
                "items": _object({
                    "message_uuid": UUID,
                    "href": {"type": "string", "maxLength": 2000},
                    "channel": {"type": "string", "enum": list(CHANNELS) + list(CHANNEL_ALIASES)},
                    "usage": USAGE,
                    "status": {"type": "string", "enum": list(STATUSES)},
                }, ["message_uuid"]),
            }
        }),
    },
    ["dispatch_uuid", "template", "status", "timestamp"],
)

ERROR = _object(
    {
        "code": {"type": "integer"},
        "status": {"type": "string"},
        "reason": {"type": "string"},
        "message": {"type": "string"},
        "errors": {"type": "object"},
        "rejected_id": {"type": "integer"},
    },
    ["code", "reason", "message"],
)

STORED = _object(
    {
        "status": {"type": "string", "enum": ["stored", "duplicate"]},
        "kind": {"type": "string", "enum": ["message_status", "final_report"]},
        "callback_id": {"type": "integer"},
        "delivery_count": {"type": "integer", "minimum": 1},
    },
    ["status", "kind", "callback_id", "delivery_count"],
)


def _error(description):
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _webhook(summary, body_schema):
    return {
        "post": {
            "summary": summary,
            "requestBody": {"required": True,
                            "content": {"application/json": {"schema": body_schema}}},
            "responses": {
                "200": {"description": "Stored (or already stored: a repeated delivery).",
                        "content": {"application/json": {
                            "schema": {"$ref": "#/components/schemas/Stored"}}}},
                "400": _error("Not JSON: empty, malformed, not UTF-8 or nested too deep. Body kept."),
                "401": _error("Signature missing or wrong (when a secret is configured). Body kept."),
                "413": _error("Body larger than RECEIVER_MAX_BODY_BYTES. Start of body kept."),
                "422": _error("JSON that is not a valid callback; errors name each field. Body kept."),
                "503": _error("Not stored (database locked, full or read-only); retry."),
            },
        }
    }


EITHER = {"anyOf": [{"$ref": "#/components/schemas/MessageStatus"},
                    {"$ref": "#/components/schemas/FinalReport"}]}


def document():
    """The OpenAPI document as a dict."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "dispatch-receiver",
            "version": __version__,
            "description": "Webhook receiver for Vonage Dispatch API callbacks. Every endpoint "
                           "accepts both kinds and tells them apart by shape.",
        },
        "paths": {
            "/webhooks/message-status": _webhook("Message Status callback", EITHER),
            "/webhooks/final-report": _webhook("Final Report callback", EITHER),
            "/webhooks/vonage": _webhook("Either callback, at one Status URL", EITHER),
            "/healthz": {
                "get": {
                    "summary": "Database reachable and writable",
                    "responses": {
                        "200": {"description": "Healthy.", "content": {"application/json": {
                            "schema": _object({"status": {"const": "ok"}}, ["status"])}}},
                        "503": {"description": "Database not writable.", "content": {
                            "application/json": {"schema": _object({"status": {"type": "string"}})}}},
                    },
                }
            },
        },
        "components": {
            "schemas": {
                "MessageStatus": MESSAGE_STATUS,
                "FinalReport": FINAL_REPORT,
                "Stored": STORED,
                "Error": ERROR,
            },
            "securitySchemes": {
                "vonageSignature": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                                    "description": "HS256 JWT signed with the account's "
                                                   "signature secret; payload_hash = SHA-256 of the body."},
            },
        },
    }
