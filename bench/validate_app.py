"""A reference point between the no-op and the receiver: the receiver's own checks, no storage.

Served like the others (``gunicorn -c config/gunicorn.conf.py bench.validate_app:app``), it
reads the body, checks the signature with the receiver's ``Verifier`` and validates it with
the receiver's ``callbacks.parse`` (marshmallow), then answers as the receiver answers a stored
callback, without storing anything. ``bench/run.py --validate-only`` runs it beside the other
two, so the table shows what validation alone costs against the no-op: an upper bound on the
ratio any storage design can reach with this validation code.
"""

import json

from flask import Flask, jsonify, request

from receiver.callbacks import ENDPOINT_KINDS, Rejection, parse
from receiver.config import load_settings
from receiver.signatures import Verifier
from receiver.store import Delivery, utcnow


def create_app():
    """The receiver's webhook paths with its verification and validation and nothing else."""
    app = Flask(__name__)
    settings = load_settings()
    verifier = Verifier(settings)

    def receive():
        body = request.stream.read(settings.max_body_bytes + 1)
        delivery = Delivery(body, request.path, utcnow(), request.remote_addr,
                            request.headers.get("User-Agent"), request.headers.get("Content-Type"),
                            request.headers.get("Authorization"))
        try:
            verifier.check(delivery.authorization, body, delivery.received_epoch)
            callback = parse(body, ENDPOINT_KINDS[request.path])
        except Rejection as rejection:
            response = jsonify(rejection.as_json())
            response.status_code = rejection.http_status
            return response
        return app.response_class(
            json.dumps({"status": "stored", "kind": callback.kind, "callback_id": len(body),
                        "delivery_count": 1}, separators=(",", ":")) + "\n",
            mimetype="application/json",
        )

    for path in ENDPOINT_KINDS:
        app.add_url_rule(path, endpoint=path.rsplit("/", 1)[1], view_func=receive,
                         methods=["POST"])

    @app.get("/healthz")
    def healthz():
        return jsonify(status="ok")

    return app


app = create_app()
