"""Every CSV Datasette serves is safe to open in a spreadsheet (receiver/csvsafe.py): each cell
that a spreadsheet would take for a formula gets a leading single quote, as `receiver export`
writes it. JSON and HTML keep the stored values."""

from urllib.parse import parse_qs

from datasette import hookimpl

from receiver.csvsafe import SafeCsvStream


def _is_csv(scope):
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    if "_trace" in query:
        return False  # an HTML page showing the CSV
    return scope["path"].endswith(".csv") or query.get("_format") == ["csv"]


@hookimpl
def asgi_wrapper(datasette):
    def wrap(app):
        async def safe_csv(scope, receive, send):
            if scope["type"] != "http" or not _is_csv(scope):
                await app(scope, receive, send)
                return
            stream = SafeCsvStream()

            async def rewriting(message):
                if message["type"] == "http.response.start":
                    message = {**message, "headers": [
                        (name, value) for name, value in message.get("headers", [])
                        if name.lower() != b"content-length"]}
                elif message["type"] == "http.response.body":
                    more = message.get("more_body", False)
                    message = {**message, "body": stream.feed(message.get("body", b""), final=not more)}
                await send(message)

            await app(scope, receive, rewriting)

        return safe_csv

    return wrap
