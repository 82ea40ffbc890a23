"""The OpenAPI 3.1 document of the receiver's own endpoints, served at /openapi.json.

The callback schemas are derived from the marshmallow schemas in receiver.schemas (every
schema of ``SCHEMAS``, walked field by field: types, required, lengths, enums, ranges,
patterns, nesting), so the document and the validation cannot disagree on a limit. A rule
between several fields (a ``validates_schema``) has no JSON Schema form; its schema class
states its counterpart as ``openapi_extra``.
"""

from marshmallow import EXCLUDE, INCLUDE, fields, validate

from . import __version__, money
from .schemas import CHANNEL_NAMES, KINDS, SCHEMAS, Channel, Price, Timestamp

TIMESTAMP = {"type": "string", "format": "date-time", "maxLength": 64,
             "example": "2020-01-01T14:00:00.000Z"}


def _object(properties, required=()):
    schema = {"type": "object", "properties": properties, "additionalProperties": True}
    if required:
        schema["required"] = list(required)
    return schema


def _pattern(regex):
    """A Python regex as an anchored ECMA-262 pattern (JSON Schema's dialect)."""
    text = regex.pattern if hasattr(regex, "pattern") else regex
    text = text[:-2] + "$" if text.endswith("\\Z") else text
    return (text if text.startswith("^") else "^" + text) if text.endswith("$") else f"^(?:{text})$"


def _apply_validator(schema, validator, field):
    """Add one marshmallow validator to ``schema``; False when it has no JSON Schema form."""
    array = schema.get("type") == "array"
    if isinstance(validator, validate.Length) and validator.equal is None:
        if validator.min is not None:
            schema["minItems" if array else "minLength"] = validator.min
        if validator.max is not None:
            schema["maxItems" if array else "maxLength"] = validator.max
    elif isinstance(validator, validate.OneOf):
        choices = list(validator.choices)
        if isinstance(field, Channel):  # other spellings are accepted, then normalised
            choices += [alias for alias in CHANNEL_NAMES if alias not in choices]
        schema["enum"] = choices
    elif isinstance(validator, validate.Range):
        if validator.min is not None:
            schema["minimum" if validator.min_inclusive else "exclusiveMinimum"] = validator.min
        if validator.max is not None:
            schema["maximum" if validator.max_inclusive else "exclusiveMaximum"] = validator.max
    elif isinstance(validator, validate.Regexp):
        schema["pattern"] = _pattern(validator.regex)
    else:
        return False
    return True


def field_schema(field, unsupported=None):
    """The JSON Schema of one marshmallow field; what cannot be expressed goes to ``unsupported``."""
    if isinstance(field, fields.Nested):
        schema = schema_of(field.schema, unsupported)
        if field.many:
            schema = {"type": "array", "items": schema}
    elif isinstance(field, fields.List):
        schema = {"type": "array", "items": field_schema(field.inner, unsupported)}
    elif isinstance(field, Timestamp):
        schema = dict(TIMESTAMP)
    elif isinstance(field, Price):
        schema = {"type": "string", "pattern": _pattern(money.PRICE_PATTERN), "example": "0.0333"}
    elif getattr(field, "openapi", None) is not None:  # a custom field type says its form
        schema = dict(field.openapi)
    elif isinstance(field, fields.Integer):
        schema = {"type": "integer"}
    elif isinstance(field, fields.Number):
        schema = {"type": "number"}
    elif isinstance(field, fields.Boolean):
        schema = {"type": "boolean"}
    elif isinstance(field, (fields.Dict, fields.Mapping)):
        schema = {"type": "object"}
    elif isinstance(field, fields.String):
        schema = {"type": "string"}
    else:
        schema = {}
        if unsupported is not None and type(field) is not fields.Raw:
            unsupported.append(f"field {type(field).__name__}")
    for validator in field.validators:
        if not _apply_validator(schema, validator, field) and unsupported is not None:
            unsupported.append(f"validator {type(validator).__name__}")
    return schema


def schema_of(schema, unsupported=None):
    """The JSON Schema object of a marshmallow schema (instance), nested schemas inlined."""
    properties, required = {}, []
    for name, field in schema.fields.items():
        key = field.data_key or name
        properties[key] = field_schema(field, unsupported)
        if field.required:
            required.append(key)
    result = _object(properties, required)
    result["additionalProperties"] = schema.unknown in (INCLUDE, EXCLUDE)
    result.update(getattr(schema, "openapi_extra", {}))
    if unsupported is not None and type(schema)._hooks.get("validates_schema") and \
            not hasattr(schema, "openapi_extra"):
        unsupported.append(f"validates_schema of {type(schema).__name__}")
    return result


def component_name(kind):
    """The components/schemas name of a callback kind: its marshmallow schema's class name."""
    return type(SCHEMAS[kind]).__name__


def callback_schemas():
    """{component name: JSON Schema} of every callback schema in receiver.schemas.SCHEMAS."""
    return {component_name(kind): schema_of(schema) for kind, schema in SCHEMAS.items()}


def unsupported_parts():
    """What in SCHEMAS the document cannot express (a test keeps this empty)."""
    unsupported = []
    for schema in SCHEMAS.values():
        schema_of(schema, unsupported)
    return unsupported


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

def _stored():
    return _object({
        "status": {"type": "string", "enum": ["stored", "duplicate"]},
        "kind": {"type": "string", "enum": list(KINDS)},
        "callback_id": {"type": "integer"},
        "delivery_count": {"type": "integer", "minimum": 1},
    }, ["status", "kind", "callback_id", "delivery_count"])


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


def _any_callback():
    """Every endpoint takes every kind and tells them apart by shape."""
    return {"anyOf": [{"$ref": f"#/components/schemas/{component_name(kind)}"} for kind in SCHEMAS]}


def document():
    """The OpenAPI document as a dict."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Vonage callback receiver (Dispatch and Messages APIs)",
            "version": __version__,
            "description": "Webhook receiver for Vonage's callbacks: the Dispatch API's and the "
                           "Messages API's. Every endpoint accepts every kind and tells them "
                           "apart by shape.",
        },
        "paths": {
            "/webhooks/message-status": _webhook("Message Status callback", _any_callback()),
            "/webhooks/final-report": _webhook("Final Report callback", _any_callback()),
            "/webhooks/vonage": _webhook("Either callback, at one Status URL", _any_callback()),
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
            "schemas": {**callback_schemas(), "Stored": _stored(), "Error": ERROR},
            "securitySchemes": {
                "vonageSignature": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                                    "description": "HS256 JWT signed with the account's "
                                                   "signature secret; payload_hash = SHA-256 of the body."},
            },
        },
    }
