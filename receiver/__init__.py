"""dispatch-receiver: receive, validate and store Vonage Dispatch API callbacks."""

import logging

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

from .config import load_settings

__version__ = "0.1.0"


def create_app(config=None):
    """Build the Flask app; ``config`` overrides settings (``{"db_path": ...}``) or Flask keys."""
    config = dict(config or {})
    overrides = {k: config.pop(k) for k in list(config) if k.islower()}
    settings = load_settings(**overrides)

    app = Flask(__name__)
    app.config.update(RECEIVER_SETTINGS=settings, **config)
    logging.getLogger("receiver").setLevel(settings.log_level)
    from . import logs

    logs.init_app(app, settings)  # X-Request-ID on every answer; RECEIVER_LOG_FORMAT

    if settings.proxy_hops:
        from werkzeug.middleware.proxy_fix import ProxyFix

        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.proxy_hops, x_proto=settings.proxy_hops)

    from .signatures import Verifier
    from .writer import writer_for

    app.extensions["receiver.writer"] = writer_for(settings)
    app.extensions["receiver.verifier"] = Verifier(settings)

    from . import routes

    app.register_blueprint(routes.bp)

    @app.errorhandler(HTTPException)
    def http_error(error):
        """Every HTTP error as JSON (404, 405, ...), never an HTML page."""
        response = jsonify(code=error.code, status=error.name, message=error.description)
        response.status_code = error.code
        for name, value in error.get_headers():
            if name.lower() != "content-type":
                response.headers[name] = value  # e.g. Allow on a 405
        return response

    @app.errorhandler(Exception)
    def unexpected_error(error):
        """A bug must not leak a stack trace, nor look final to Vonage: log it, answer 503."""
        app.logger.exception("unexpected error")
        response = jsonify(code=503, status="Service Unavailable", reason="internal_error",
                           message="The callback could not be handled; retry later.")
        response.status_code = 503
        response.headers["Retry-After"] = "5"
        return response

    return app
