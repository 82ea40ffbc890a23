"""Clear 4xx answers where Datasette 0.65 would answer what a visitor sends with a 500.

- ``?_sort=`` / ``?_sort_desc=`` naming a column that cannot be sorted (or both at once):
  Datasette raises its error with status 500; here it is a 400 with the same message.
- A POST (or any method but GET/HEAD) to a canned query: every query here is read-only and
  Datasette 0.65 fails inside its router; here it is a 405 naming the allowed methods.
- ``/-/password-tool`` (datasette-auth-passwords): open to anyone, and each POST costs a
  480,000-round PBKDF2 hash of the server's CPU. Hashes are made on the server with
  ``datasette hash-password`` (see the README), so the page answers 403.

And the log: when ``rich`` is importable (the test extras bring it), Datasette 0.65 prints a
300-line traceback with local variables for every handled error, a 404 included. Here only
real server errors print one (Datasette's plain ``traceback.print_exc()``); a 4xx is one
access-log line.
"""

import json

import datasette.handle_exception
from datasette import hookimpl
from datasette.views.base import DatasetteError

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
    parts = path.lstrip("/").split("/")
    if len(parts) != 2 or parts[0] not in datasette.databases:
        return None
    name = parts[1].rsplit(".", 1)[0] if parts[1].endswith((".json", ".csv")) else parts[1]
    if name in await datasette.get_canned_queries(parts[0], None):
        return (405, f"The canned query {name} is read-only: use GET.",
                [(b"allow", b"GET, HEAD")])
    return None


async def _send_json(send, status, message, headers):
    body = json.dumps({"ok": False, "error": message, "status": status, "title": None}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json; charset=utf-8"),
                            (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})
