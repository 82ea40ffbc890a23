"""Fixtures in the Flask tutorial's style: a temporary database file, the app, its clients."""

import json
import os
import sqlite3
from contextlib import closing

import pytest
from click.testing import CliRunner

from receiver import create_app
from receiver.cli import cli
from receiver.db import init_db


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    """Settings come from the test, never from the shell (`make test` exports RECEIVER_DB)."""
    for name in list(os.environ):
        if name.startswith(("RECEIVER_", "VONAGE_")):
            monkeypatch.delenv(name)


@pytest.fixture
def db_path(tmp_path):
    """A fresh event store, schema created as `receiver init-db` does before serving."""
    path = tmp_path / "events.db"
    init_db(str(path))
    return path


@pytest.fixture
def app(db_path):
    return create_app({"db_path": str(db_path)})


@pytest.fixture
def client(app):
    return app.test_client()


class ReceiverCliRunner(CliRunner):
    """CliRunner bound to the ``receiver`` command group, like Flask's test_cli_runner."""

    def invoke(self, args=None, **kwargs):
        kwargs.setdefault("prog_name", "receiver")
        return super().invoke(cli, args, **kwargs)


@pytest.fixture
def runner():
    return ReceiverCliRunner()


def query_rows(db_path, sql, *params):
    """Run ``sql`` on its own connection and return the rows as dicts."""
    with closing(sqlite3.connect(str(db_path))) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(row) for row in conn.execute(sql, params)]


@pytest.fixture
def rows():
    """``rows(db_path, sql, *params)`` -> list of dicts, read through sqlite3."""
    return query_rows


def post_to(client, body, path="/webhooks/vonage", **kwargs):
    """POST ``body`` (bytes as they are; anything else JSON-encoded) as Vonage would."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode("utf-8")
    kwargs.setdefault("content_type", "application/json")
    kwargs.setdefault("headers", {"User-Agent": "Vonage-Callback-Test/1.0"})
    return client.post(path, data=data, **kwargs)


@pytest.fixture
def post(client):
    """``post(body, path="/webhooks/vonage")`` through the app's test client."""

    def _post(body, path="/webhooks/vonage", **kwargs):
        return post_to(client, body, path, **kwargs)

    return _post
