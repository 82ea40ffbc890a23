"""/openapi.json is derived from the marshmallow schemas: the document refuses exactly what
validation refuses at every limit, and a schema added to SCHEMAS appears in it by itself."""

import copy

import pytest
from marshmallow import fields, validate

import payloads
from receiver import openapi, schemas

jsonschema_rs = pytest.importorskip("jsonschema_rs", reason="installed with schemathesis (test extra)")

# A body of each schema in SCHEMAS filling every field; addresses that fit every v1 channel,
# a workflow whose total leaves room for any leg number.
EXAMPLES = {
    "message_status": payloads.SEED_STATUS,
    "final_report": payloads.SEED_FINAL_REPORT,
    "message_status_v1": payloads.v1_status(
        "aaaaaaaa-bbbb-cccc-dddd-0123456789ab", "delivered", channel="whatsapp", price="0.0110",
        workflow=("wf-1", 1, 10**6), error=("1300", "Not part of the provider network"),
        to="447700900001", client_ref="order-17", destination={"network_code": "23410"},
        sms={"count_total": "1"}),
}


def validator(kind, document=None):
    document = document or openapi.document()
    return jsonschema_rs.Draft202012Validator(
        {"$ref": f"#/components/schemas/{openapi.component_name(kind)}",
         "components": document["components"]})


def limited_fields(schema, example, path=()):
    """(path, field) of every field with a validator that ``example`` fills, nested included."""
    for name, field in schema.fields.items():
        key = field.data_key or name
        if key not in example:
            continue
        value = example[key]
        if field.validators:
            yield path + (key,), field
        if isinstance(field, fields.Nested) and isinstance(value, dict):
            yield from limited_fields(field.schema, value, path + (key,))
        elif isinstance(field, fields.List) and isinstance(field.inner, fields.Nested) and value:
            yield from limited_fields(field.inner.schema, value[0], path + (key, 0))


def at(body, path):
    for step in path:
        body = body[step]
    return body


def rule_cases(example, path, field, rule):
    """Values just inside and just outside one validator's limit (and what it expects)."""
    if isinstance(rule, validate.Length) and isinstance(field, fields.List):
        item = at(example, path)[:1]
        yield item * rule.max, True
        yield item * (rule.max + 1), False
    elif isinstance(rule, validate.Length):
        if rule.max is not None:
            yield "x" * rule.max, True
            yield "x" * (rule.max + 1), False
        if rule.min:
            yield "x" * (rule.min - 1), False
    elif isinstance(rule, validate.OneOf):
        for choice in rule.choices:
            yield choice, True
        yield "not-" + rule.choices[0], False
    elif isinstance(rule, validate.Range):
        yield rule.max, True
        yield rule.max + 1, False
        yield rule.min - 1, False
    elif isinstance(rule, validate.Regexp):
        yield "EUR", True
        yield "eur", False


def boundary_cases():
    found = []
    for kind, example in EXAMPLES.items():
        for path, field in limited_fields(schemas.SCHEMAS[kind], example):
            for rule in field.validators:
                for value, valid in rule_cases(example, path, field, rule):
                    found.append(pytest.param(kind, path, value, valid,
                                              id=f"{kind}:{'.'.join(map(str, path))}:{valid}:{str(value)[:12]}"))
    return found


CASES = boundary_cases()


def test_every_schema_has_an_example_that_validates():
    assert set(EXAMPLES) == set(schemas.SCHEMAS)
    for kind, example in EXAMPLES.items():
        assert schemas.SCHEMAS[kind].validate(example) == {}, kind
        assert validator(kind).is_valid(example), kind


def test_the_cases_reach_every_kind_of_limit():
    paths = {(case.values[0], ".".join(map(str, case.values[1]))) for case in CASES}
    assert {("message_status", p) for p in ("message_uuid", "status", "to.type", "to.number",
                                             "error.code", "usage.currency")} <= paths
    assert {("final_report", "_links.messages"), ("final_report", "_links.messages.0.channel")} <= paths
    assert {("message_status_v1", p) for p in ("to", "channel", "workflow.items_number",
                                                "sms.count_total", "client_ref")} <= paths
    assert {case.values[3] for case in CASES} == {True, False}


@pytest.mark.parametrize("kind, path, value, valid", CASES)
def test_document_and_validation_agree_at_every_limit(kind, path, value, valid):
    """Marshmallow decides; the document must say the same. (``valid`` is what the limit
    alone expects: a rule across fields, such as a v1 channel's address lengths, may refuse
    a value the field's own limit allows.)"""
    body = copy.deepcopy(EXAMPLES[kind])
    at(body, path[:-1])[path[-1]] = value
    errors = schemas.SCHEMAS[kind].validate(body)
    if not valid:
        assert errors, f"{value!r} passed validation"
    assert validator(kind).is_valid(body) == (not errors), errors


def test_the_document_expresses_every_rule_of_the_schemas():
    """A field type, validator or cross-field rule the derivation cannot express is listed
    here; a schema added later must not make the document silently looser."""
    assert openapi.unsupported_parts() == []


def test_a_schema_added_to_schemas_appears_by_itself(monkeypatch):
    class ProbeCallback(schemas.Base):
        probe_uuid = fields.String(required=True, validate=validate.Length(min=1, max=7))
        colour = fields.String(validate=validate.OneOf(["red", "green"]))

    monkeypatch.setitem(schemas.SCHEMAS, "probe", ProbeCallback())
    document = openapi.document()
    probe = document["components"]["schemas"]["ProbeCallback"]
    assert probe["required"] == ["probe_uuid"]
    assert probe["properties"]["probe_uuid"] == {"type": "string", "minLength": 1, "maxLength": 7}
    assert probe["properties"]["colour"]["enum"] == ["red", "green"]
    body = document["paths"]["/webhooks/vonage"]["post"]["requestBody"]["content"]["application/json"]
    assert {"$ref": "#/components/schemas/ProbeCallback"} in body["schema"]["anyOf"]
    assert validator("probe", document).is_valid({"probe_uuid": "abc"})
    assert not validator("probe", document).is_valid({"probe_uuid": "abcdefgh"})


def test_the_spec_spelling_of_a_channel_is_documented_as_accepted():
    body = copy.deepcopy(payloads.SEED_FINAL_REPORT)
    body["_links"]["messages"][0]["channel"] = "viber_sevice_msg"
    assert not schemas.SCHEMAS["final_report"].validate(body)
    assert validator("final_report").is_valid(body)


def test_links_naming_two_dispatches_are_refused_by_both():
    body = payloads.status(payloads.new_uuid(), "dispatch-a", link="workflow")
    body["_links"]["dispatch"] = {"dispatch_uuid": "dispatch-b"}
    assert schemas.SCHEMAS["message_status"].validate(body)
    assert not validator("message_status").is_valid(body)


def test_a_timestamp_longer_than_validation_reads_is_refused_by_both():
    body = copy.deepcopy(payloads.SEED_STATUS)
    body["timestamp"] = "2020-01-01T14:00:00." + "0" * 45 + "Z"
    assert len(body["timestamp"]) > 64
    assert schemas.SCHEMAS["message_status"].validate(body)
    assert not validator("message_status").is_valid(body)
