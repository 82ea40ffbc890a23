"""How the event store's Datasette pages read, for the finance and support people who use them.

With config/templates (table, row and _table.html) and config/static/receiver.css, both passed
by `receiver datasette`:

- money shows one way everywhere: every money cell of a page (price, *_price, *_total and any
  column with a *_nano twin) is the exact decimal text with at least four decimal places
  ('0.0010' from Vonage and '0.001' summed by the views both read 0.0010); the text as stored
  is the cell's tooltip when it reads differently. Only the HTML changes: JSON and CSV keep the
  stored text, and nothing goes through a float;
- sorting by a money text column sorts by its *_nano twin: `?_sort=price` (or `_sort_desc`) on
  a table or view that has price_nano answers a redirect to `?_sort=price_nano`, for the HTML
  page, .json and .csv alike, since text does not sort as numbers ('10.5' < '9.0');
- every page links receiver.css (data first, one line per row, long values wrapped);
- the dashboard of both APIs was /-/dashboards/dispatch: that address (and its charts' and
  embeds') redirects to /-/dashboards/callbacks, so bookmarks keep working.
"""

import re
from urllib.parse import parse_qsl, urlencode

from datasette import hookimpl
from datasette.utils import tilde_decode, tilde_encode
from datasette.utils.asgi import asgi_send_redirect
from markupsafe import Markup

from receiver.browse import STATIC_MOUNT

STYLESHEET = "receiver.css"

# Vonage sends prices with four decimal places; amounts with more keep all of theirs.
MONEY_MIN_DECIMALS = 4
MONEY_TEXT = re.compile(r"-?[0-9]+(\.[0-9]+)?")
NANO_SUFFIX = "_nano"
SORT_ARGS = ("_sort", "_sort_desc")
# Dashboards renamed: old path prefix -> new one.
RENAMED_DASHBOARDS = {"/-/dashboards/dispatch": "/-/dashboards/callbacks"}


def _columns_of(row):
    try:
        return row.keys()
    except AttributeError:
        return ()


def is_money_column(column, columns=()):
    """True for a column holding an amount as decimal text (not its *_nano twin)."""
    if column.endswith(NANO_SUFFIX):
        return False
    return column.endswith(("price", "total")) or column + NANO_SUFFIX in columns


def display_money(text):
    """'0.001' -> '0.0010', '0.0333' -> '0.0333', '12.5' -> '12.5000', '0.000012345' unchanged:
    the exact amount with at least MONEY_MIN_DECIMALS decimals; None when ``text`` is not a
    plain decimal number."""
    if not isinstance(text, str) or not MONEY_TEXT.fullmatch(text):
        return None
    whole, _, fraction = text.partition(".")
    return f"{whole}.{fraction.rstrip('0').ljust(MONEY_MIN_DECIMALS, '0')}"


@hookimpl
def render_cell(row, value, column, database):
    if database == "_internal" or not is_money_column(column, _columns_of(row)):
        return None
    shown = display_money(value)
    if shown is None:
        return None
    if shown == value:
        return Markup('<span class="receiver-money">{}</span>').format(shown)
    return Markup('<span class="receiver-money" title="stored as {}">{}</span>').format(
        value, shown
    )


@hookimpl
def extra_css_urls(datasette):
    return [datasette.urls.path(f"/{STATIC_MOUNT}/{STYLESHEET}")]


@hookimpl
def prepare_jinja2_environment(env):
    # templates/_table.html links a shortened cell to its row page.
    env.filters.setdefault("tilde_encode", tilde_encode)


def _table_of(datasette, path):
    """(database, table) named by a table page's path (/db/table, /db/table.json), else None."""
    parts = path.strip("/").split("/")
    if len(parts) != 2 or not all(parts):
        return None
    route, table = parts
    if "." in table:
        table = table.rsplit(".", 1)[0]  # the format; a dot in a name is tilde-encoded
    try:
        database = datasette.get_database(route=tilde_decode(route))
    except KeyError:
        return None
    return database, tilde_decode(table)


async def sort_redirect(datasette, scope):
    """Where a table request that sorts by a money text column should sort by its twin."""
    args = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
    sorted_by = [value for key, value in args if key in SORT_ARGS]
    if not any(value and not value.endswith(NANO_SUFFIX) for value in sorted_by):
        return None
    named = _table_of(datasette, scope.get("path", ""))
    if named is None:
        return None
    database, table = named
    columns = set(await database.table_columns(table))
    twins = {
        value: value + NANO_SUFFIX for value in sorted_by
        if value in columns and is_money_column(value, columns)
    }
    if not twins:
        return None
    args = [(key, twins.get(value, value) if key in SORT_ARGS else value) for key, value in args]
    return f"{scope.get('root_path', '')}{scope['path']}?{urlencode(args)}"


# Views whose row count costs as much as their rows (each sums every message of the period
# Vonage's records cover): their pages skip Datasette's count (?_nocount=1), which halves what a
# page costs (bench/README.md, reconciliation at 1,000,000 records). Their CSV needs no count.
UNCOUNTED_VIEWS = {"vonage_reconciliation", "vonage_reconciliation_by_day",
                   "vonage_reconciliation_workflows"}


def without_count(scope):
    """The scope of a page of one of UNCOUNTED_VIEWS, asking Datasette not to count its rows."""
    parts = scope.get("path", "").strip("/").split("/")
    query = scope.get("query_string", b"")
    if len(parts) != 2 or tilde_decode(parts[1].split(".", 1)[0]) not in UNCOUNTED_VIEWS:
        return scope
    if any(key == "_nocount" for key, _ in parse_qsl(query.decode("latin-1"))):
        return scope
    return {**scope, "query_string": query + (b"&" if query else b"") + b"_nocount=1"}


def renamed_dashboard(scope):
    """Where a renamed dashboard's page (or chart, or embed) is now, else None."""
    path = scope.get("path", "")
    for old, new in RENAMED_DASHBOARDS.items():
        if path == old or path.startswith((old + "/", old + ".")):
            query = scope.get("query_string", b"").decode("latin-1")
            return f"{scope.get('root_path', '')}{new}{path[len(old):]}" + (f"?{query}" if query else "")
    return None


@hookimpl
def asgi_wrapper(datasette):
    def wrap(app):
        async def sort_money_by_nano(scope, receive, send):
            if scope["type"] == "http":
                location = renamed_dashboard(scope) or await sort_redirect(datasette, scope)
                if location is not None:
                    await asgi_send_redirect(send, location)
                    return
                scope = without_count(scope)
            await app(scope, receive, send)

        return sort_money_by_nano

    return wrap
