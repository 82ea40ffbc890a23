"""A reference point between the no-op and the receiver: the receiver's own checks, no storage.

Served like the others (``gunicorn -c config/gunicorn.conf.py bench.validate_app:app``), it
reads the body, checks the signature with the receiver's ``Verifier`` and validates it with
the receiver's ``callbacks.parse`` (marshmallow), then answers as the receiver answers a stored
callback (the receiver's own functions, from ``receiver.routes``), without storing anything.
``bench/run.py`` runs it beside the other apps (``--apps validate-only``), so the table shows
what validation alone costs against the no-op: an upper bound on the ratio any storage design
can reach with this validation code.
"""

from flask import Flask, jsonify

from receiver.callbacks import ENDPOINT_KINDS, Rejection, parse
from receiver.config import load_settings
from receiver.routes import delivery_from_request, read_body, stored_answer
from receiver.signatures import Verifier
from receiver.store import Stored


def create_app():
    """The receiver's webhook paths with its verification and validation and nothing else."""
    app = Flask(__name__)
    settings = load_settings()
    verifier = Verifier(settings)

    def receive():
        body, too_large, _ = read_body(settings.max_body_bytes)
        if too_large:
            return jsonify(code=413, reason="body_too_large"), 413
        delivery = delivery_from_request(body)
        try:
            verifier.check(delivery)
            callback = parse(body, ENDPOINT_KINDS[delivery.endpoint])
        except Rejection as rejection:
            response = jsonify(rejection.as_json())
            response.status_code = rejection.http_status
            return response
        return stored_answer(Stored(callback_id=len(body), delivery_count=1, kind=callback.kind))

    for path in ENDPOINT_KINDS:
        app.add_url_rule(path, endpoint=path.rsplit("/", 1)[1], view_func=receive,
                         methods=["POST"])

    @app.get("/healthz")
    def healthz():
        return jsonify(status="ok")

    return app


app = create_app()
