"""Links between rows of the event store, which has no foreign keys between its derived tables.

In every table, view, row page and query result of the served database:

- a dispatch_uuid cell links to the dispatch's row, and to its messages, its status events and
  its timeline (the dispatch_timeline query);
- a message_uuid cell links to the message's row, its status events and its history (the
  message_history query);
- a workflow_id cell of a Messages failover workflow links to the workflow's row, its legs
  and its status events (of a Dispatch workflow, where api says dispatch, to the dispatch's);
- dispatches.message_count links to the dispatch's messages, dispatches.final_report_count to
  its final reports, and messages.event_count to the message's status events.

Only the HTML pages change: JSON and CSV keep the plain values.
"""

from urllib.parse import urlencode

from datasette import hookimpl
from datasette.utils import tilde_encode
from markupsafe import Markup, escape

DISPATCH = "dispatch_uuid"
MESSAGE = "message_uuid"
WORKFLOW = "workflow_id"


def _link(href, text):
    return Markup('<a href="{}">{}</a>').format(href, text)


def _with_query(path, **args):
    return f"{path}?{urlencode(args)}"


def dispatch_links(datasette, database, uuid):
    """(label, href) of everything a dispatch links to; the first is its own row."""
    urls = datasette.urls
    return [
        (uuid, urls.row(database, "dispatches", tilde_encode(uuid))),
        ("messages", _with_query(urls.table(database, "messages"), dispatch_uuid=uuid)),
        ("events", _with_query(urls.table(database, "status_events"), dispatch_uuid=uuid,
                               _sort="timestamp")),
        ("timeline", _with_query(urls.query(database, "dispatch_timeline"), dispatch_uuid=uuid)),
    ]


def message_links(datasette, database, uuid):
    """(label, href) of everything a message links to; the first is its own row."""
    urls = datasette.urls
    return [
        (uuid, urls.row(database, "messages", tilde_encode(uuid))),
        ("events", _with_query(urls.table(database, "status_events"), message_uuid=uuid,
                               _sort="timestamp")),
        ("history", _with_query(urls.query(database, "message_history"), message_uuid=uuid)),
    ]


def workflow_links(datasette, database, workflow_id):
    """(label, href) of everything a Messages failover workflow links to; the first is its row."""
    urls = datasette.urls
    return [
        (workflow_id, urls.row(database, "workflows", tilde_encode(workflow_id))),
        ("legs", _with_query(urls.table(database, "messages"), workflow_id=workflow_id,
                             _sort="workflow_position")),
        ("events", _with_query(urls.table(database, "status_events"), workflow_id=workflow_id,
                               _sort="timestamp")),
    ]


def _render(links):
    (label, href), *more = links
    extra = Markup(" · ").join(_link(h, text) for text, h in more)
    return Markup('{} <span class="receiver-links">({})</span>').format(
        _link(href, label), extra
    )


def _row_value(row, column):
    try:
        return row[column]
    except (IndexError, KeyError, TypeError):
        return None


# (table, column) -> (column holding the key, function(datasette, database, key) -> href)
COUNT_LINKS = {
    ("dispatches", "message_count"): (
        DISPATCH,
        lambda ds, db, key: _with_query(ds.urls.table(db, "messages"), dispatch_uuid=key),
    ),
    ("dispatches", "final_report_count"): (
        DISPATCH,
        lambda ds, db, key: _with_query(ds.urls.table(db, "final_reports"), dispatch_uuid=key),
    ),
    ("messages", "event_count"): (
        MESSAGE,
        lambda ds, db, key: _with_query(ds.urls.table(db, "status_events"), message_uuid=key,
                                        _sort="timestamp"),
    ),
}


@hookimpl
def render_cell(row, value, column, table, database, datasette):
    if database == "_internal":
        return None
    if column in (DISPATCH, MESSAGE):
        if not isinstance(value, str) or not value:
            return None
        links = dispatch_links if column == DISPATCH else message_links
        return _render(links(datasette, database, value))
    if column == WORKFLOW:
        if not isinstance(value, str) or not value:
            return None
        links = dispatch_links if _row_value(row, "api") == "dispatch" else workflow_links
        return _render(links(datasette, database, value))
    count_link = COUNT_LINKS.get((table, column))
    if count_link is not None and value is not None:
        key_column, href = count_link
        key = _row_value(row, key_column)
        if isinstance(key, str) and key:
            return _link(href(datasette, database, key), escape(value))
    return None
