"""Clear 4xx answers where Datasette 0.65 would answer what a visitor sends with a 500.

- ``?_sort=`` / ``?_sort_desc=`` naming a column that cannot be sorted (or both at once):
  Datasette raises its error with status 500; here it is a 400 with the same message.
- A POST (or any method but GET/HEAD) to a canned query: every query here is read-only and
  Datasette 0.65 fails inside its router; here it is a 405 naming the allowed methods.
- ``/-/password-tool`` (datasette-auth-passwords): open to anyone, and each POST costs a
  480,000-round PBKDF2 hash of the server's CPU. Hashes are made on the server with
  ``datasette hash-password`` (see the README), so the page answers 403.
- A canned query's date parameter in another format (``01/11/2026``, ``2026-11``) or a
  ``from`` after its ``to``: SQLite's ``date()`` turns what it cannot read into NULL and the
  query silently answers no rows. Here the request is refused before the query runs: a 400
  saying which parameter and the format expected (YYYY-MM-DD), as an HTML page, in JSON for
  ``.json`` and as text for ``.csv``. Parameters are known by name, for every canned query:
  ``from``/``to`` and ``*_date`` are dates, ``as_of`` and ``*_at`` a date or a UTC time,
  ``hours`` a number; empty means "not given", as the queries read it. Only a visitor who
  may see the query is told: behind the login wall, anyone else gets the login wall.

And the log: when ``rich`` is importable (the test extras bring it), Datasette 0.65 prints a
300-line traceback with local variables for every handled error, a 404 included. Here only
real server errors print one (Datasette's plain ``traceback.print_exc()``); a 4xx is one
access-log line.
"""

import json
import re
from datetime import date, datetime
from urllib.parse import parse_qsl

# datasette.plugins first: it registers datasette.handle_exception as a default plugin, and
# importing that module first would register it half-imported, without its handler.
from datasette.plugins import pm  # isort: skip
import datasette.handle_exception  # isort: skip
from datasette import Response, hookimpl
from datasette.utils import await_me_maybe
from datasette.utils.asgi import Request
from datasette.views.base import DatasetteError
from markupsafe import Markup, escape

datasette.handle_exception.rich = None

# Messages of DatasetteError that describe a visitor's bad query string, not a server fault.
CLIENT_ERRORS = ("Cannot sort table by ", "Cannot use _sort and _sort_desc at the same time")
PASSWORD_TOOL = "/-/password-tool"
READ_METHODS = ("GET", "HEAD")


@hookimpl
def handle_exception(datasette, request, exception):
    """Turn a bad-sort DatasetteError into a 400; Datasette's own handler renders it."""
    if (isinstance(exception, DatasetteError) and exception.status == 500
            and str(exception.message).startswith(CLIENT_ERRORS)):
        exception.status = 400
    return None


@hookimpl
def asgi_wrapper(datasette):
    def wrap(app):
        async def guarded(scope, receive, send):
            if scope["type"] == "http":
                refusal = await _refusal(datasette, scope)
                if refusal is not None:
                    await _send_json(send, *refusal)
                    return
                problem = await _bad_parameters(datasette, scope)
                if problem is not None:
                    await _send_bad_request(datasette, scope, send, problem)
                    return
            await app(scope, receive, send)

        return guarded

    return wrap


async def _refusal(datasette, scope):
    """(status, message, extra headers) when the request is refused here, else None."""
    path = scope["path"].rstrip("/")
    if path == PASSWORD_TOOL:
        return (403, "The password tool is turned off here: make a hash on the server with "
                     "`datasette hash-password` (see the README).", [])
    if scope["method"] in READ_METHODS:
        return None
    found = await _canned_query(datasette, path)
    if found is not None:
        return (405, f"The canned query {found[1]} is read-only: use GET.",
                [(b"allow", b"GET, HEAD")])
    return None


async def _send_json(send, status, message, headers):
    body = json.dumps({"ok": False, "error": message, "status": status, "title": None}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json; charset=utf-8"),
                            (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


# --- canned query parameters -----------------------------------------------------------------

DATE_FORMAT = "YYYY-MM-DD, e.g. 2026-11-01"
MOMENT_FORMAT = "YYYY-MM-DD or a UTC time like 2026-11-01T12:00:00Z"
DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
MOMENT = re.compile(r"\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]00:?00)?)?")
NUMBER = re.compile(r"\d+(\.\d+)?")


def _kind(name):
    """What a canned query's parameter holds, by its name (None: anything)."""
    if name in ("from", "to") or name.endswith("_date"):
        return "date"
    if name == "as_of" or name.endswith("_at"):
        return "moment"
    if name == "hours":
        return "number"
    return None


def _is_date(text):
    try:
        return bool(DAY.fullmatch(text)) and date.fromisoformat(text) is not None
    except ValueError:
        return False


def _is_moment(text):
    if not MOMENT.fullmatch(text):
        return False
    try:
        datetime.fromisoformat(text.replace(" ", "T"))
    except ValueError:
        return False
    return True


def check_parameters(values):
    """The problem with a canned query's parameter values ({name: text}), or None."""
    for name, value in values.items():
        value = value.strip()
        if not value:
            continue
        kind = _kind(name)
        if kind == "date" and not _is_date(value):
            return f"{name}: {value!r} is not a date. Expected {DATE_FORMAT}."
        if kind == "moment" and not _is_moment(value):
            return f"{name}: {value!r} is not a date or time. Expected {MOMENT_FORMAT}."
        if kind == "number" and not NUMBER.fullmatch(value):
            return f"{name}: {value!r} is not a number of hours. Expected e.g. 24 or 1.5."
    start, end = values.get("from", "").strip(), values.get("to", "").strip()
    if start and end and start > end:
        return (f"from ({start}) is after to ({end}): no row can match. Both are inclusive "
                f"dates ({DATE_FORMAT}).")
    return None


async def _canned_query(datasette, path):
    """(database, query name, query) when ``path`` is a canned query's page, JSON or CSV."""
    parts = path.strip("/").split("/")
    if len(parts) != 2 or parts[0] not in datasette.databases:
        return None
    name = parts[1].rsplit(".", 1)[0] if parts[1].endswith((".json", ".csv")) else parts[1]
    query = (await datasette.get_canned_queries(parts[0], None)).get(name)
    return (parts[0], name, query) if query else None


async def _bad_parameters(datasette, scope):
    """The message refusing a GET of a canned query whose parameters cannot be right."""
    if scope["method"] not in READ_METHODS or not scope.get("query_string"):
        return None
    found = await _canned_query(datasette, scope["path"])
    if found is None:
        return None
    database, name, query = found
    # A visitor who may not see the query gets Datasette's own answer (the login wall), not
    # a message about its parameters.
    visible, _ = await datasette.check_visibility(
        await _actor(datasette, scope),
        permissions=[("view-query", (database, name)), ("view-database", database), "view-instance"])
    if not visible:
        return None
    declared = set(query.get("params") or ()) | set(re.findall(r":(\w+)", query.get("sql", "")))
    arguments = dict(parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True))
    return check_parameters({k: v for k, v in arguments.items() if k in declared})


async def _actor(datasette, scope):
    """The visitor, as Datasette's router will know them (ds_actor cookie, auth plugins)."""
    request = Request(scope, None)
    for actor in pm.hook.actor_from_request(datasette=datasette, request=request):
        actor = await await_me_maybe(actor)
        if actor:
            return actor
    return None


async def _send_bad_request(datasette, scope, send, message):
    """A 400 with ``message``: Datasette's error page, JSON for .json, text for .csv."""
    path = scope["path"]
    if path.endswith(".json"):
        response = Response.json({"ok": False, "error": message, "status": 400,
                                  "title": "Invalid parameter"}, status=400)
    elif path.endswith(".csv"):
        response = Response.text(message + "\n", status=400)
    else:
        form = escape(datasette.urls.path(path))
        html = await datasette.render_template(
            ["400.html", "error.html"],
            {"ok": False, "status": 400, "title": "Invalid parameter",
             "error": Markup(f'{escape(message)} <a href="{form}">Back to the form</a>')})
        response = Response.html(html, status=400)
    await response.asgi_send(send)
