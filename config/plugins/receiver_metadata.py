"""Apply config/metadata.yml's `events` section to the database actually served.

Datasette keys metadata by database name, which is the file's stem; RECEIVER_DB may name any
file, so this maps the one section onto every database Datasette serves. It also:

- points every dashboard chart and filter query (datasette-dashboards) at the served database,
  since metadata.yml cannot know its name;
- puts every page behind a login when DATASETTE_PASSWORD_HASH is set: a top-level `allow`
  block that only the actor datasette-auth-passwords logs in (`root`) matches. /-/login,
  /robots.txt and static files are not covered by `allow`, so the login page stays reachable.
  Without the variable Datasette is open, and `receiver datasette` keeps it on 127.0.0.1.
  An anonymous visitor of an HTML page is sent to the login page; JSON and CSV get the 403;
- answers /-/receiver/<table or view> with a redirect to it in the served database, so that
  the dashboard (whose text cannot know the database's name) links to the views.
"""

from functools import lru_cache
from pathlib import Path

import yaml
from datasette import hookimpl
from datasette.utils.asgi import Forbidden, NotFound, Response

from receiver.config import load_settings

METADATA = Path(__file__).resolve().parent.parent / "metadata.yml"

# The account datasette-auth-passwords gets from `root_password_hash` in metadata.yml.
LOGIN_ACTOR_ID = "root"


@lru_cache(maxsize=1)
def _metadata_file():
    return yaml.safe_load(METADATA.read_text()) or {}


def _events_section():
    return (_metadata_file().get("databases") or {}).get("events") or {}


def _dashboards_databases(name):
    """Fresh dicts giving each dashboard chart and query filter its `db` (datasette-dashboards
    edits the dashboard it renders, so nothing shared may be handed out)."""
    dashboards = (_metadata_file().get("plugins") or {}).get("datasette-dashboards") or {}
    result = {}
    for slug, dashboard in dashboards.items():
        charts = {
            chart: {"db": name}
            for chart, spec in (dashboard.get("charts") or {}).items()
            if "query" in spec
        }
        filters = {
            key: {"db": name}
            for key, spec in (dashboard.get("filters") or {}).items()
            if "query" in spec
        }
        result[slug] = {"charts": charts, "filters": filters}
    return result


def password_required():
    """True when DATASETTE_PASSWORD_HASH is set: every page then needs a login."""
    return bool(load_settings().datasette_password_hash)


@hookimpl
def get_metadata(datasette, key, database, table):
    served = [name for name in datasette.databases if name != "_internal"]
    metadata = {
        "databases": {name: _events_section() for name in served if name != "events"},
    }
    if served:
        metadata["plugins"] = {"datasette-dashboards": _dashboards_databases(served[0])}
    if password_required():
        metadata["allow"] = {"id": LOGIN_ACTOR_ID}
    return metadata


@hookimpl
def forbidden(datasette, request, message):
    """Behind the login wall, send an anonymous visitor of an HTML page to /-/login."""
    if request.actor or not password_required():
        return None
    if (request.url_vars or {}).get("format"):
        return None  # .json, .csv, ...: API clients get the plain 403
    return Response.redirect(datasette.urls.path("/-/login"))


async def _to_served(datasette, request):
    """/-/receiver/<name> -> the table or view <name> of the served database."""
    if not await datasette.permission_allowed(request.actor, "view-instance", default=True):
        raise Forbidden("Log in to see this page.")  # behind the login, like every page
    name = request.url_vars["name"]
    served = [db for db in datasette.databases.values() if db.name != "_internal"]
    if not served or not (await served[0].table_exists(name) or name in await served[0].view_names()):
        raise NotFound(f"No table or view named {name!r}")
    return Response.redirect(datasette.urls.table(served[0].name, name))


@hookimpl
def register_routes():
    return [(r"^/-/receiver/(?P<name>[A-Za-z0-9_]+)$", _to_served)]
