"""The webhook endpoints and the health check."""

import json
import os

from flask import Blueprint, current_app, jsonify, request

from . import logs, metrics, rows, store
from .openapi import document as openapi_document
from .signatures import BASIC_REASONS
from .callbacks import ENDPOINT_KINDS, Rejection, parse
from .writer import StorageError, WriteFailed

bp = Blueprint("webhooks", __name__)

RETRY_AFTER_S = "5"


def read_body(limit):
    """Read at most ``limit`` bytes; return (body, too_large, announced_length)."""
    announced = request.content_length
    if announced is not None and announced > limit:
        return request.stream.read(limit), True, announced
    body = request.stream.read(limit + 1)
    if len(body) > limit:
        return body[:limit], True, None
    return body, False, announced


def delivery_from_request(body):
    """The request being served, as the Delivery of ``body`` (its headers read from the WSGI
    environ, as ``request.headers`` would give them, without a proxy lookup for each)."""
    environ = request.environ
    return store.Delivery(
        body=body,
        endpoint=request.path,
        received_at=store.utcnow(),
        remote_addr=environ.get("REMOTE_ADDR"),
        user_agent=environ.get("HTTP_USER_AGENT"),
        content_type=environ.get("CONTENT_TYPE"),
        authorization=environ.get("HTTP_AUTHORIZATION"),
    )


def _labels(callback):
    """(kind, api) of a parsed callback, or ('unknown', 'unknown') before one is parsed."""
    if callback is None:
        return "unknown", "unknown"
    return callback.kind, callback.api


def _unavailable(error, callback=None):
    seconds = logs.elapsed()
    metrics.storage_failed(seconds)
    kind, api = _labels(callback)
    logs.callback_outcome("unavailable", seconds, {
        "http_status": 503, "kind": kind, "api": api, "reason": "storage_unavailable",
        "error": str(error)}, "503 %s: storage failed: %s", request.path, error)
    response = jsonify(code=503, status="Service Unavailable", reason="storage_unavailable",
                       message="The callback could not be stored; retry later.")
    response.status_code = 503
    response.headers["Retry-After"] = RETRY_AFTER_S
    return response


def _reject(rejection, delivery, callback=None, **extra):
    """Keep the body in ``rejected_callbacks`` and answer the rejection's status."""
    writer = current_app.extensions["receiver.writer"]
    try:
        rejected_id = writer.run("store_rejection", rejection, delivery, **extra)
    except StorageError as error:
        # Unkept, a 4xx would lose the body for good (Vonage does not retry 4xx).
        return _unavailable(error, callback)
    seconds = logs.elapsed()
    kind, api = _labels(callback)
    metrics.callback_rejected(kind, api, rejection.reason, rejection.http_status, seconds)
    logs.callback_outcome("rejected", seconds, {
        "http_status": rejection.http_status, "kind": kind, "api": api,
        "reason": rejection.reason, "rejected_id": rejected_id},
        "%d %s: %s (%s), kept as rejected_callbacks/%d", rejection.http_status,
        request.path, rejection.reason, rejection.message, rejected_id)
    body = rejection.as_json()
    body["rejected_id"] = rejected_id
    response = jsonify(body)
    response.status_code = rejection.http_status
    if rejection.reason in BASIC_REASONS:
        response.headers["WWW-Authenticate"] = 'Basic realm="dispatch-receiver"'
    return response


def receive():
    """Read, validate and durably store one callback; answer 200 only once it is on disk."""
    app = current_app._get_current_object()  # one context lookup for the request's three
    settings = app.config["RECEIVER_SETTINGS"]
    body, too_large, announced = read_body(settings.max_body_bytes)
    delivery = delivery_from_request(body)
    if too_large:
        size = f"{announced} bytes" if announced is not None else "more than that"
        rejection = Rejection(
            413, "body_too_large",
            f"The body is larger than the limit of {settings.max_body_bytes} bytes.",
            {"_body": [f"Body is {size}; the limit is {settings.max_body_bytes} bytes."]},
        )
        return _reject(rejection, delivery, truncated=True, body_bytes=announced or len(body))
    try:
        signature = app.extensions["receiver.verifier"].check(delivery)
        metrics.signature_checked(signature.status)
        callback = parse(body, ENDPOINT_KINDS[delivery.endpoint])
    except Rejection as rejection:
        return _reject(rejection, delivery)
    try:
        # The rows are built here, in the worker; the writer only runs SQL.
        planned = rows.plan(callback, delivery, signature)
        stored = app.extensions["receiver.writer"].run("store_planned", planned)
    except WriteFailed as error:
        # Valid, yet this write fails on its own (retrying would too): keep the body.
        return _reject(Rejection(422, "unstorable", "The callback is valid but could not be "
                                 "stored; it is kept for reprocessing.",
                                 {"_body": [str(error)]}), delivery, callback)
    except StorageError as error:
        return _unavailable(error, callback)
    seconds = logs.elapsed()
    kind, api = _labels(callback)
    metrics.callback_stored(kind, api, stored.duplicate, seconds,
                            delivery.received_epoch, callback.data)
    logs.callback_outcome("duplicate" if stored.duplicate else "stored", seconds, {
        "http_status": 200, "kind": kind, "api": api, "callback_id": stored.callback_id},
        "200 %s: %s callbacks/%d", delivery.endpoint,
        "duplicate" if stored.duplicate else "stored", stored.callback_id)
    return stored_answer(stored)


def stored_answer(stored):
    """The 200 for a stored callback, built directly (jsonify costs twice as much); the same
    bytes jsonify gives: compact, keys sorted, a final newline."""
    return current_app.response_class(
        json.dumps({
            "callback_id": stored.callback_id,
            "delivery_count": stored.delivery_count,
            "kind": stored.kind,
            "status": "duplicate" if stored.duplicate else "stored",
        }, separators=(",", ":")) + "\n",
        mimetype="application/json",
    )


# /webhooks/message-status and /webhooks/final-report are the seed's URLs; each stores the
# other kind too when the body's shape says so. /webhooks/vonage takes either.
for _path in ENDPOINT_KINDS:
    bp.add_url_rule(_path, endpoint=_path.rsplit("/", 1)[1], view_func=receive, methods=["POST"])


@bp.get("/openapi.json")
def openapi():
    """The OpenAPI 3.1 document of these endpoints."""
    return jsonify(openapi_document())


@bp.get("/metrics")
def metrics_page():
    """Prometheus metrics (text format); a bearer token when RECEIVER_METRICS_TOKEN is set."""
    settings = current_app.config["RECEIVER_SETTINGS"]
    if not metrics.token_allows(settings, request.headers.get("Authorization")):
        response = jsonify(code=401, status="Unauthorized", reason="bad_metrics_token",
                           message="GET /metrics needs Authorization: Bearer <RECEIVER_METRICS_TOKEN>.")
        response.status_code = 401
        response.headers["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    body, content_type = metrics.exposition(settings)
    return current_app.response_class(body, content_type=content_type)


@bp.get("/healthz")
def healthz():
    """200 when the database takes writes, else 503 saying why (at once when the writer
    process is gone or hung). The writer answers from a commit of the last second when there
    was one (no write per probe), else writes the health row in its next group commit. The
    answer says how far the derived rows trail the event log (``projection_lag_ms``, and how
    many stored callbacks they have yet to take, ``projection_behind``)."""
    writer = current_app.extensions["receiver.writer"]
    pid = os.getpid()
    try:
        projection = writer.run("record_health", pid)
    except StorageError as error:
        response = jsonify(status="unavailable", database="not writable", error=str(error))
        response.status_code = 503
        response.headers["Retry-After"] = RETRY_AFTER_S
        return response
    return jsonify(status="ok", database="writable", pid=pid, **projection)
