"""The textbook peer: the receiver one would write in an afternoon from the docs.

Flask for the route, one marshmallow schema (unknown fields kept), Vonage's signed-webhook
check with PyJWT (``payload_hash`` against the body's sha256), and sqlite-utils
``table.insert()``: one row per callback, one ``synchronous=FULL`` commit per request, WAL,
``busy_timeout``; served by ``2 x cores + 1`` sync workers, gunicorn's documented default
advice. It stores far less than the receiver (no de-duplication, no derived rows, no kept
rejections), but it is the number a user compares with, so ``bench/run.py`` runs it under the
same load:

    export RECEIVER_DB=textbook.db
    flask --app bench.textbook_app init-db    # once, before serving (as in the Flask tutorial)
    gunicorn -w $((2 * $(nproc) + 1)) bench.textbook_app:app
"""

import hashlib
import os
from datetime import datetime, timezone

import jwt
import sqlite_utils
from flask import Flask, jsonify, request
from marshmallow import INCLUDE, Schema, ValidationError, fields

PATHS = ("/webhooks/vonage", "/webhooks/message-status", "/webhooks/final-report")


class CallbackSchema(Schema):
    """A status or a final report of the Dispatch API: what both have, the rest kept."""

    class Meta:
        unknown = INCLUDE

    timestamp = fields.String(required=True)
    status = fields.String(required=True)
    message_uuid = fields.String()
    dispatch_uuid = fields.String()


schema = CallbackSchema()


def connect():
    """The database, durable: every commit synced; wait for the write lock, do not fail."""
    db = sqlite_utils.Database(os.environ.get("RECEIVER_DB", "textbook.db"))
    db.execute("PRAGMA busy_timeout = 10000")
    db.execute("PRAGMA synchronous = FULL")
    return db


def create_app():
    app = Flask(__name__)
    secret = os.environ.get("VONAGE_SIGNATURE_SECRET")
    table = connect()["callbacks"]

    @app.cli.command("init-db")
    def init_db():
        """Create the table, in WAL mode (once, before the workers start)."""
        db = connect()
        db.enable_wal()
        db["callbacks"].create({"id": int, "received_at": str, "kind": str, "status": str,
                                "sha256": str, "body": str}, pk="id", if_not_exists=True)

    def receive():
        body = request.get_data()
        if secret:
            token = request.headers.get("Authorization", "").removeprefix("Bearer ")
            try:
                claims = jwt.decode(token, secret, algorithms=["HS256"])
            except jwt.InvalidTokenError as error:
                return jsonify(error=str(error)), 401
            if claims.get("payload_hash") != hashlib.sha256(body).hexdigest():
                return jsonify(error="payload_hash does not match the body"), 401
        try:
            data = schema.loads(body)
        except ValidationError as error:
            return jsonify(errors=error.messages), 422
        table.insert({
            "received_at": datetime.now(timezone.utc).isoformat(),
            "kind": "message_status" if "message_uuid" in data else "final_report",
            "status": data["status"],
            "sha256": hashlib.sha256(body).hexdigest(),
            "body": body.decode("utf-8"),
        })
        return jsonify(status="stored", callback_id=table.last_pk, delivery_count=1)

    for path in PATHS:
        app.add_url_rule(path, endpoint=path.rsplit("/", 1)[1], view_func=receive,
                         methods=["POST"])

    @app.get("/healthz")
    def healthz():
        return jsonify(status="ok")

    return app


app = create_app()
