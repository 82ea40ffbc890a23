"""Apply config/metadata.yml's `events` section to the database actually served.

Datasette keys metadata by database name, which is the file's stem; RECEIVER_DB may name any
file, so this maps the one section onto every database Datasette serves.
"""

from functools import lru_cache
from pathlib import Path

import yaml
from datasette import hookimpl

METADATA = Path(__file__).resolve().parent.parent / "metadata.yml"


@lru_cache(maxsize=1)
def _events_section():
    return (yaml.safe_load(METADATA.read_text()).get("databases") or {}).get("events") or {}


@hookimpl
def get_metadata(datasette, key, database, table):
    names = [name for name in datasette.databases if name not in ("_internal", "events")]
    return {"databases": {name: _events_section() for name in names}}
