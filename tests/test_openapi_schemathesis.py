"""The OpenAPI document at /openapi.json against the real server that serves it.

The production process (gunicorn with config/gunicorn.conf.py, one worker, no
signature secret as in a fresh install) runs on 127.0.0.1; Schemathesis loads the document
from it and, for every operation, sends generated requests (valid and invalid bodies) and
checks each answer: no server error, a status code the document declares, a response body
matching the declared schema, and the declared content type.

A few specific disagreements between the document and the server are pinned below with
requests built by hand, so that they are reported the same way on every run.
"""

import pytest
import requests

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is not installed (test extra)")

from hypothesis import HealthCheck, given, settings  # noqa: E402  (installed with schemathesis)
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

import payloads  # noqa: E402
from testing.processes import Gunicorn  # noqa: E402

CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance,
          content_type_conformance]


@pytest.fixture(scope="module")
def receiver_server(tmp_path_factory):
    """The real gunicorn with the production config, stopped (whole group) at the end."""
    directory = tmp_path_factory.mktemp("openapi-server")
    server = Gunicorn(directory / "events.db", directory / "gunicorn.log", workers=1,
                      RECEIVER_LOG_LEVEL="WARNING")
    server.start(timeout=30)
    yield server
    server.stop()


OPERATIONS = {"POST /webhooks/vonage", "POST /webhooks/message-status", "POST /webhooks/final-report",
              "GET /healthz"}
# GET /healthz takes no input at all: there is nothing to make invalid.
RUNS = [(label, mode) for label in sorted(OPERATIONS) for mode in ("positive", "negative")
        if (label, mode) != ("GET /healthz", "negative")]


@pytest.fixture(scope="module")
def api_schema(receiver_server):
    """The document as the running server serves it, loaded by Schemathesis.

    (Schemathesis 4.32's lazy ``schemathesis.pytest.from_fixture`` fails on pytest 9.2 with
    "'Function' object has no attribute '_nodeid'", and a module-level ``from_url`` would need
    the server at collection time, so operations are driven through Schemathesis' Python API:
    ``from_url``, ``as_strategy`` and ``call_and_validate``.)
    """
    return schemathesis.openapi.from_url(f"{receiver_server.url}/openapi.json", timeout=10)


def test_document_names_every_operation(api_schema):
    assert {result.ok().label for result in api_schema.get_all_operations()} == OPERATIONS


@pytest.mark.parametrize("label, mode", RUNS)
def test_operation_answers_as_documented(api_schema, receiver_server, label, mode):
    """Generated requests (schema-valid, or invalid in one place) get documented answers."""
    (operation,) = [r.ok() for r in api_schema.get_all_operations() if r.ok().label == label]
    strategy = operation.as_strategy(generation_mode=GenerationMode(mode))

    @settings(max_examples=50, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                     HealthCheck.data_too_large])
    @given(case=strategy)
    def conforms(case):
        case.call_and_validate(base_url=receiver_server.url, checks=CHECKS, timeout=15)

    conforms()


# --- the document itself ------------------------------------------------------------------


def test_document_is_served_as_openapi_3_1_json(receiver_server):
    response = requests.get(f"{receiver_server.url}/openapi.json", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    document = response.json()
    assert document["openapi"] == "3.1.0"
    assert set(document["paths"]) >= {"/webhooks/vonage", "/webhooks/message-status",
                                       "/webhooks/final-report", "/healthz"}
    for path in ("/webhooks/vonage", "/webhooks/message-status", "/webhooks/final-report"):
        assert set(document["paths"][path]) == {"post"}
        assert {"200", "400", "401", "413", "422", "503"} <= set(document["paths"][path]["post"]["responses"])


def test_documented_example_callbacks_are_accepted(receiver_server):
    """The seed's own examples, as the document describes them, get 200 at every URL."""
    for path in ("/webhooks/vonage", "/webhooks/message-status", "/webhooks/final-report"):
        for body in (payloads.status(), payloads.final_report()):
            response = requests.post(f"{receiver_server.url}{path}", json=body, timeout=10)
            assert response.status_code == 200, response.text
            assert response.json()["status"] == "stored"


# --- disagreements between the document and the server ------------------------------------


def document_validator(server, name):
    """A JSON Schema validator of the served document's component ``name``."""
    jsonschema_rs = pytest.importorskip("jsonschema_rs")  # installed with schemathesis
    document = requests.get(f"{server.url}/openapi.json", timeout=10).json()
    return jsonschema_rs.Draft202012Validator(
        {"$ref": f"#/components/schemas/{name}", "components": document["components"]})


def test_links_naming_different_dispatches_are_refused_as_documented(receiver_server):
    """Was a strict xfail (found by Schemathesis' positive_data_acceptance): the document let
    _links.workflow and _links.dispatch name different dispatches, which the server refuses."""
    body = payloads.status(payloads.new_uuid(), "dispatch-a", link="workflow")
    body["_links"]["dispatch"] = {"dispatch_uuid": "dispatch-b"}
    assert not document_validator(receiver_server, "MessageStatus").is_valid(body)
    response = requests.post(f"{receiver_server.url}/webhooks/vonage", json=body, timeout=10)
    assert response.status_code == 422, response.text


def test_integral_float_error_code_as_documented(receiver_server):
    body = payloads.status(error=(1300.0, "Not part of the provider network"))
    assert document_validator(receiver_server, "MessageStatus").is_valid(body)
    response = requests.post(f"{receiver_server.url}/webhooks/vonage", json=body, timeout=10)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("method, path", [("GET", "/webhooks/vonage"), ("PUT", "/webhooks/final-report"),
                                          ("DELETE", "/webhooks/message-status"), ("POST", "/healthz")])
def test_undeclared_method_is_405_json(receiver_server, method, path):
    response = requests.request(method, f"{receiver_server.url}{path}", timeout=10)
    assert response.status_code == 405
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json()["code"] == 405


@pytest.mark.parametrize("method, path, allowed", [("GET", "/webhooks/vonage", {"POST"}),
                                                   ("TRACE", "/healthz", {"GET", "HEAD"})])
def test_405_lists_allowed_methods(receiver_server, method, path, allowed):
    """RFC 9110 requires Allow on a 405; the JSON error handler used to drop it (found by
    Schemathesis' unsupported_method check)."""
    response = requests.request(method, f"{receiver_server.url}{path}", timeout=10)
    assert response.status_code == 405
    assert "Allow" in response.headers, dict(response.headers)
    assert allowed <= {m.strip() for m in response.headers["Allow"].split(",")}
