"""Logging: a request id on every answer, one line per callback outcome, JSON on demand.

``RECEIVER_LOG_FORMAT=json`` turns the receiver's log and gunicorn's error and access logs
into one JSON object per line (``GunicornLogger``, set as gunicorn's ``logger_class`` in
config/gunicorn.conf.py); plain text, the default, reads as it always did.
"""

import json
import logging
import os
import re
import sys
import time
from collections.abc import Mapping
from datetime import datetime, timezone

from flask import g, request
from gunicorn.glogging import Logger

REQUEST_ID_HEADER = "X-Request-ID"
MAX_REQUEST_ID_LENGTH = 128
_NOT_IN_REQUEST_ID = re.compile(r"[^A-Za-z0-9._-]+")

log = logging.getLogger("receiver")

# Whether this process logs JSON; set by configure().
_json = False


def request_id(sent):
    """The id of a request: the client's X-Request-ID, sanitised to [A-Za-z0-9._-] and at most
    128 characters, or a new random one when none (or nothing usable) was sent."""
    if sent:
        cleaned = _NOT_IN_REQUEST_ID.sub("", sent)[:MAX_REQUEST_ID_LENGTH]
        if cleaned:
            return cleaned
    return os.urandom(16).hex()


def init_app(app, settings):
    """Give every request an id and every answer its X-Request-ID; set up the log format."""
    configure(settings.log_format)

    @app.before_request
    def start_request():
        g.request_started = time.perf_counter()
        g.request_id = request_id(request.environ.get("HTTP_X_REQUEST_ID"))  # X-Request-ID

    @app.after_request
    def tag_response(response):
        response.headers[REQUEST_ID_HEADER] = g.get("request_id") or request_id(None)
        return response


def elapsed():
    """Seconds since the current request started."""
    started = g.get("request_started")
    return time.perf_counter() - started if started is not None else 0.0


def callback_outcome(outcome, seconds, fields, message, *args):
    """Log what became of one callback: ``outcome`` (stored, duplicate, rejected, unavailable),
    ``fields`` (kind, api, reason, the row id...) and a text ``message`` % ``args``.

    Stored callbacks are logged at INFO in JSON (one line per callback for a log pipeline) and
    at DEBUG in text, where gunicorn's access log already has a line for each.
    """
    if outcome in ("stored", "duplicate"):
        level = logging.INFO if _json else logging.DEBUG
    elif outcome == "rejected":
        level = logging.WARNING
    else:
        level = logging.ERROR
    if not log.isEnabledFor(level):
        return
    rid = g.get("request_id")
    if _json:
        record = {"request_id": rid, "outcome": outcome, "path": request.path}
        record.update(fields)
        record["latency_ms"] = round(seconds * 1000, 3)
        log.log(level, message, *args, extra={"fields": record})
    else:
        log.log(level, message + " [request %s]", *args, rid)


# --- formats -------------------------------------------------------------------------------


def _timestamp(record):
    return (datetime.fromtimestamp(record.created, timezone.utc)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"))


def _access_fields(atoms):
    """gunicorn's access-log atoms (quotes escaped for its text format) as JSON fields."""

    def text(key):
        value = atoms.get(key)
        return value.replace('\\"', '"') if isinstance(value, str) else value

    status = text("s")
    return {
        "message": text("r"),
        "remote_addr": text("h"),
        "method": text("m"),
        "path": text("U"),
        "query": text("q") or "",
        "status": int(status) if isinstance(status, str) and status.isdigit() else status,
        "bytes": atoms.get("B"),
        "duration_ms": round(atoms.get("D", 0) / 1000, 3),
        "user_agent": text("a"),
        "request_id": text("{x-request-id}o"),
    }


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, pid, message and the record's fields."""

    def format(self, record):
        entry = {"time": _timestamp(record), "level": record.levelname.lower(),
                 "logger": record.name, "pid": record.process}
        if record.name == "gunicorn.access" and isinstance(record.args, Mapping):
            entry.update(_access_fields(record.args))
        else:
            entry["message"] = record.getMessage()
        entry.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure(log_format):
    """Set this process's receiver log format ('text' or 'json'); safe to call again."""
    global _json
    _json = log_format == "json"
    for handler in list(log.handlers):
        if getattr(handler, "_receiver", False):
            log.removeHandler(handler)
    if _json:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        handler._receiver = True
        log.addHandler(handler)
        log.propagate = False
    else:
        log.propagate = True


# The access log's line (config/gunicorn.conf.py): client, request line, status, bytes, time,
# user agent.
ACCESS_LOG_FORMAT = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms "%(a)s"'


class GunicornLogger(Logger):
    """gunicorn's logger, writing JSON lines when RECEIVER_LOG_FORMAT=json.

    Its access-log atoms are only those ACCESS_LOG_FORMAT and the JSON lines use: gunicorn's
    own ``atoms`` copies every request header and environ variable into the dict of each line,
    and formats the time, about 8 % of a worker's CPU per callback under load (bench/README.md).
    With another ``--access-logformat`` gunicorn's are used.
    """

    def atoms(self, resp, req, environ, request_time):
        if self.cfg.access_log_format != ACCESS_LOG_FORMAT:
            return super().atoms(resp, req, environ, request_time)
        status = resp.status
        if isinstance(status, str):
            status = status.split(None, 1)[0]
        sent = getattr(resp, "sent", None)
        micros = request_time.seconds * 1_000_000 + request_time.microseconds
        atoms = {
            "h": environ.get("REMOTE_ADDR", "-"),
            "r": f"{environ['REQUEST_METHOD']} {environ['RAW_URI']} {environ['SERVER_PROTOCOL']}",
            "s": status,
            "m": environ.get("REQUEST_METHOD"),
            "U": environ.get("PATH_INFO"),
            "q": environ.get("QUERY_STRING"),
            "b": str(sent) if sent is not None else "-",
            "B": sent,
            "a": environ.get("HTTP_USER_AGENT", "-"),
            "D": micros,
            "M": micros // 1000,
        }
        for name, value in resp.headers:
            if name.lower() == "x-request-id":
                atoms["{x-request-id}o"] = value
        return atoms

    def setup(self, cfg):
        super().setup(cfg)
        from .config import load_settings

        log_format = load_settings().log_format
        if log_format == "json":
            formatter = JsonFormatter()
            for logger in (self.error_log, self.access_log):
                for handler in logger.handlers:
                    handler.setFormatter(formatter)
        configure(log_format)
