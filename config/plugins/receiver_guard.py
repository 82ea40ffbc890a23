"""Clear 4xx answers where Datasette 0.65 would answer what a visitor sends with a 500.

- ``?_sort=`` / ``?_sort_desc=`` naming a column that cannot be sorted (or both at once), or a
  ``?_through=`` that names no foreign key: Datasette raises its error with status 500; here it
  is a 400 with the same message.
- SQL that cannot run as sent (``?_where=1=1;drop``: more than one statement, a ``:name`` or
  ``?`` with no value, a value too big): Datasette lets sqlite3's error through as a 500 with a
  traceback; here it is a 400 saying what SQLite said (a number too big for SQLite too). A null
  character anywhere in the query string, a ``_timelimit`` that is not a whole number, a
  ``_through`` or ``_facet*={…}`` that is not the JSON object Datasette reads and a view's
  ``_next`` that is not a row offset are refused before Datasette sees them (it fails on each
  with a 500).
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
  may see the query is told: behind the login wall, anyone else gets the login wall. The
  dashboards' date filters are held to the same rule.
- A date written without its zeros (``from=2026-11-1``) wherever a date is taken (a canned
  query's or a dashboard's date parameter, a table filter on a time column such as
  ``timestamp__gte``, ``day``, ``*_at``): SQLite's date() reads it as NULL and a text
  comparison drops days ('2026-11-1' sorts after '2026-11-09'). Here the request is redirected
  to the same address with the date padded (``2026-11-01``), so every page, form and chart
  shows what it was asked. A table filter comparing a time column (``__gt``, ``__gte``,
  ``__lt``, ``__lte``, ``__date``) with what is not the start of a date is a 400 naming the
  format.

And the log: when ``rich`` is importable (the test extras bring it), Datasette 0.65 prints a
300-line traceback with local variables for every handled error, a 404 included. Here only
real server errors print one (Datasette's plain ``traceback.print_exc()``, which its handler
calls for every exception it did not raise itself, so those answered 400 here are skipped); a
4xx is one access-log line.
"""

import json
import re
import sqlite3
import sys
import traceback
from datetime import date, datetime
from urllib.parse import parse_qsl, urlencode

# datasette.plugins first: it registers datasette.handle_exception as a default plugin, and
# importing that module first would register it half-imported, without its handler.
from datasette.plugins import pm  # isort: skip
import datasette.handle_exception as default_errors  # isort: skip
from datasette import Response, hookimpl
from datasette.utils import await_me_maybe, tilde_decode
from datasette.utils.asgi import BadRequest, Request, asgi_send_redirect
from datasette.views.base import DatasetteError
from markupsafe import Markup, escape

default_errors.rich = None


class _ServerErrorTraceback:
    """Datasette's handler as ``traceback``: it prints every exception it was not given as an
    HTTP error, those answered 400 here included; this prints only the others."""

    @staticmethod
    def print_exc():
        if _client_error(sys.exc_info()[1]) is None:
            traceback.print_exc()


default_errors.traceback = _ServerErrorTraceback

# Messages of DatasetteError that describe a visitor's bad query string, not a server fault.
CLIENT_ERRORS = ("Cannot sort table by ", "Cannot use _sort and _sort_desc at the same time",
                 "Invalid _through")
# What sqlite3 raises for SQL that cannot run as sent (the visitor's sql= or _where=); the
# OperationalError of a syntax error Datasette already answers with a 400 itself.
SQL_ERRORS = (sqlite3.ProgrammingError, sqlite3.DataError, sqlite3.Warning)
SQLITE_MAX_INTEGER = 2**63 - 1
PASSWORD_TOOL = "/-/password-tool"
READ_METHODS = ("GET", "HEAD")


@hookimpl
def handle_exception(datasette, request, exception):
    """A 400 for what the visitor's query string caused; Datasette's own handler renders it."""
    if (isinstance(exception, DatasetteError) and exception.status == 500
            and str(exception.message).startswith(CLIENT_ERRORS)):
        exception.status = 400
    elif request.query_string and _client_error(exception):
        return default_errors.handle_exception(datasette, request,
                                               BadRequest(_client_error(exception)))
    return None


def _client_error(exception):
    """What to tell the visitor whose query string raised ``exception``, else None."""
    if isinstance(exception, SQL_ERRORS):
        return f"This SQL cannot run: {exception}"
    if isinstance(exception, OverflowError) and "SQLite INTEGER" in str(exception):
        return f"A number in the address is too big for SQLite (at most {SQLITE_MAX_INTEGER})."
    return None


@hookimpl
def asgi_wrapper(datasette):
    def wrap(app):
        async def guarded(scope, receive, send):
            if scope["type"] == "http":
                padded = _padded_dates_location(scope)
                if padded is not None:
                    await asgi_send_redirect(send, padded)
                    return
                refusal = await _refusal(datasette, scope)
                if refusal is not None:
                    await _send_json(send, *refusal)
                    return
                problem = (_bad_query_string(scope) or await _bad_view_offset(datasette, scope)
                           or await _bad_parameters(datasette, scope))
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


def _bad_query_string(scope):
    """The problem with a query string Datasette would fail on with a 500, or None."""
    query = scope.get("query_string", b"").decode("latin-1")
    if scope["method"] not in READ_METHODS or not query:
        return None
    arguments = parse_qsl(query, keep_blank_values=True)
    if any("\0" in key or "\0" in value for key, value in arguments):
        return "The address holds a null character (%00): no value here can contain one."
    for key, value in arguments:
        if key == "_timelimit" and not re.fullmatch(r"\d{1,9}", value.strip()):
            return f"_timelimit: {value[:100]!r} is not a whole number of milliseconds."
        if key == "_through" and not _is_json_object(value, ("table", "column"), "value"):
            return (f"_through: {value[:100]!r} is not a JSON object like "
                    '{"table": "…", "column": "…", "value": "…"}.')
        problem = _bad_time_filter(key, value)
        if problem:
            return problem
        if key.startswith("_facet") and value.startswith("{") and not (
                _is_json_object(value, ("simple",)) or _is_json_object(value, ("column",))):
            return (f"{key}: {value[:100]!r} is not a column name or a JSON object like "
                    '{"column": "…"}.')
    return None


def _is_json_object(text, strings, *others):
    """True when ``text`` is a JSON object whose ``strings`` keys hold text and has ``others``."""
    try:
        found = json.loads(text)
    except ValueError:
        return False
    return (isinstance(found, dict) and all(isinstance(found.get(key), str) for key in strings)
            and all(key in found for key in others))


async def _bad_view_offset(datasette, scope):
    """A view pages by row offset: its ``_next`` must be one (Datasette fails with a 500)."""
    arguments = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
    offset = arguments.get("_next", "").strip()
    if scope["method"] not in READ_METHODS or not offset or offset.isdigit():
        return None
    parts = scope["path"].strip("/").split("/")
    if len(parts) != 2 or parts[0] not in datasette.databases:
        return None
    view = tilde_decode(parts[1].rsplit(".", 1)[0] if parts[1].endswith((".json", ".csv"))
                        else parts[1])
    if view not in await datasette.databases[parts[0]].view_names():
        return None
    return (f"_next: {offset[:100]!r} is not a row offset (a whole number, as the page's next "
            "link gives).")


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


def check_parameters(values, kind_of=_kind):
    """The problem with a canned query's parameter values ({name: text}), or None."""
    for name, value in values.items():
        value = value.strip()
        if not value:
            continue
        kind = kind_of(name)
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
    """The message refusing a GET of a canned query or dashboard whose parameters cannot be
    right."""
    if scope["method"] not in READ_METHODS or not scope.get("query_string"):
        return None
    arguments = dict(parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True))
    dashboard = _dashboard(datasette, scope["path"])
    if dashboard is not None:
        visible, _ = await datasette.check_visibility(
            await _actor(datasette, scope), permissions=["view-instance"])
        dates = {name for name, spec in (dashboard.get("filters") or {}).items()
                 if spec.get("type") == "date"}
        return visible and check_parameters(
            {k: v for k, v in arguments.items() if k in dates}, kind_of=lambda name: "date") or None
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
    return check_parameters({k: v for k, v in arguments.items() if k in declared})


def _dashboard(datasette, path):
    """The dashboard's configuration when ``path`` is a dashboard page or one of its charts."""
    parts = path.strip("/").split("/")
    if len(parts) < 3 or parts[:2] != ["-", "dashboards"]:
        return None
    dashboards = datasette.plugin_config("datasette-dashboards") or {}
    return dashboards.get(parts[2].removesuffix(".json"))


# --- dates ----------------------------------------------------------------------------------

UNPADDED_DATE = re.compile(r"(\d{4})-(\d{1,2})-(\d{1,2})((?:[T ].*)?)", re.S)
# The start of a UTC time as stored ('2026', '2026-11', '2026-11-01', '2026-11-01T12:00', ...).
TIME_PREFIX = re.compile(r"\d{4}(-\d{2}(-\d{2}([T ]\d{2}(:\d{2}(:\d{2}(\.\d{1,9})?)?)?Z?)?)?)?")
TIME_COLUMN = re.compile(r"timestamp|day|date|\w+_(at|date|timestamp)")
COMPARISONS = ("gt", "gte", "lt", "lte")


def _takes_a_date(key):
    """True for a query argument that holds a date: a canned query's or dashboard's date
    parameter by its name, or a table filter (``column`` or ``column__op``) on a time column."""
    column, _, op = key.partition("__")
    if op:
        return bool(TIME_COLUMN.fullmatch(column))
    return _kind(key) in ("date", "moment") or bool(TIME_COLUMN.fullmatch(key))


def padded_date(text):
    """'2026-11-1' -> '2026-11-01' (a time after it kept); None when nothing needs padding."""
    match = UNPADDED_DATE.fullmatch(text)
    if match is None:
        return None
    year, month, day, rest = match.groups()
    padded = f"{year}-{int(month):02d}-{int(day):02d}{rest}"
    return padded if padded != text else None


def _padded_dates_location(scope):
    """The same address with its unpadded dates padded, when it has any; else None."""
    query = scope.get("query_string", b"").decode("latin-1")
    if scope["method"] not in READ_METHODS or "-" not in query:
        return None
    arguments = parse_qsl(query, keep_blank_values=True)
    padded = [(key, (_takes_a_date(key) and padded_date(value)) or value)
              for key, value in arguments]
    if padded == arguments:
        return None
    return f"{scope.get('root_path', '')}{scope['path']}?{urlencode(padded)}"


def _bad_time_filter(key, value):
    """The problem with a table filter comparing a time column with what is not a date."""
    column, _, op = key.partition("__")
    if not (TIME_COLUMN.fullmatch(column) and op in (*COMPARISONS, "date")) or not value.strip():
        return None
    if op == "date" and not _is_date(value.strip()):
        return f"{key}: {value[:100]!r} is not a date. Expected {DATE_FORMAT}."
    if op != "date" and not TIME_PREFIX.fullmatch(value.strip()):
        return (f"{key}: {value[:100]!r} is not a date or time. Expected {MOMENT_FORMAT} "
                "(or its start: 2026-11).")
    return None


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
