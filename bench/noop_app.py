"""The benchmark's ceiling: a Flask app on the receiver's URLs that reads the body and answers 200.

Served by gunicorn with the receiver's own config (``gunicorn -c config/gunicorn.conf.py
bench.noop_app:app``), it measures what Flask and gunicorn cost before the receiver does any
work of its own. The answer has the receiver's shape and about its size.
"""

import os

from flask import Flask, jsonify, request

PATHS = ("/webhooks/vonage", "/webhooks/message-status", "/webhooks/final-report")


def create_app():
    """A Flask app with the receiver's webhook paths and a /healthz, doing nothing else."""
    app = Flask(__name__)

    def receive():
        """Read the whole body (as the receiver does) and acknowledge it."""
        body = request.stream.read()
        return jsonify(status="stored", kind="noop", callback_id=len(body), delivery_count=1)

    for path in PATHS:
        app.add_url_rule(path, endpoint=path.rsplit("/", 1)[1], view_func=receive,
                         methods=["POST"])

    @app.get("/healthz")
    def healthz():
        return jsonify(status="ok", pid=os.getpid())

    return app


app = create_app()
