"""The ``receiver`` command line: init-db, reprocess, config and the help texts."""

import json
import sqlite3
from contextlib import closing

import click
import pytest
from marshmallow import RAISE

from conftest import post_to
from payloads import dumps, status
from receiver import create_app, db, schemas
from receiver.cli import cli

TABLES = {"callbacks", "status_events", "final_reports", "final_report_messages", "messages",
          "dispatches", "rejected_callbacks", "receiver_health"}


def names(path, kind):
    with closing(sqlite3.connect(str(path))) as conn:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = ?", (kind,))}


def dump(path):
    with closing(sqlite3.connect(str(path))) as conn:
        return list(conn.iterdump())


# --- init-db -------------------------------------------------------------------------------


def test_init_db_creates_the_schema(runner, tmp_path):
    path = tmp_path / "new" / "events.db"  # a missing file is created, in an existing directory
    path.parent.mkdir()
    result = runner.invoke(["init-db", "--db", str(path)])
    assert result.exit_code == 0, result.output
    assert f"{path}: schema created" in result.stderr
    assert TABLES <= names(path, "table")
    with closing(sqlite3.connect(str(path))) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == db.SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_init_db_is_idempotent_and_keeps_data(runner, tmp_path):
    path = tmp_path / "events.db"
    assert runner.invoke(["init-db", "--db", str(path)]).exit_code == 0
    client = create_app({"db_path": str(path)}).test_client()
    assert post_to(client, dumps(status("m-1", "d-1"))).status_code == 200
    before = dump(path)
    result = runner.invoke(["init-db", "--db", str(path)])
    assert result.exit_code == 0, result.output
    assert f"schema checked (schema version {db.SCHEMA_VERSION} -> {db.SCHEMA_VERSION})" in result.stderr
    assert dump(path) == before


def test_init_db_reads_receiver_db_from_the_environment(runner, tmp_path, monkeypatch):
    path = tmp_path / "from-env.db"
    monkeypatch.setenv("RECEIVER_DB", str(path))
    assert runner.invoke(["init-db"]).exit_code == 0
    assert TABLES <= names(path, "table")


def test_init_db_adds_columns_an_older_file_lacks(runner, tmp_path):
    path = tmp_path / "old.db"
    with closing(sqlite3.connect(str(path))) as conn:
        conn.execute("CREATE TABLE callbacks (id INTEGER PRIMARY KEY, kind TEXT NOT NULL, sha256 TEXT NOT NULL "
                     "UNIQUE, body TEXT NOT NULL, received_at TEXT NOT NULL, last_received_at TEXT NOT NULL)")
        conn.execute("INSERT INTO callbacks VALUES (1, 'message_status', 'abc', '{}', 't', 't')")
        conn.commit()
    result = runner.invoke(["init-db", "--db", str(path)])
    assert result.exit_code == 0, result.output
    with closing(sqlite3.connect(str(path))) as conn:
        columns = {r[1] for r in conn.execute("PRAGMA table_info(callbacks)")}
        assert {"endpoint", "delivery_count", "user_agent", "signature_status"} <= columns
        assert conn.execute("SELECT id, kind, body FROM callbacks").fetchall() == [(1, "message_status", "{}")]


def test_init_db_refuses_a_file_from_a_newer_receiver(runner, db_path):
    with closing(sqlite3.connect(str(db_path))) as conn:
        conn.execute(f"PRAGMA user_version = {db.SCHEMA_VERSION + 1}")
    result = runner.invoke(["init-db", "--db", str(db_path)])
    assert result.exit_code == 1
    assert "newer than this receiver" in result.output


# --- help, version, config -----------------------------------------------------------------


def leaf_commands(group=cli, prefix=()):
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from leaf_commands(command, prefix + (name,))
        else:
            yield prefix + (name,)


@pytest.mark.parametrize("command", [" ".join(c) for c in leaf_commands()])
def test_each_commands_help_shows_an_example(runner, command):
    result = runner.invoke([*command.split(), "--help"])
    assert result.exit_code == 0
    assert "Example:" in result.output
    assert f"receiver {command}" in result.output.split("Example:", 1)[1]


def test_reprocess_help_explains_itself(runner):
    result = runner.invoke(["reprocess", "--help"])
    assert result.exit_code == 0
    assert "Example: receiver reprocess --reason schema_error --dry-run" in result.output
    for option in ("--db", "--id", "--reason", "--dry-run"):
        assert option in result.output


def test_receiver_help_lists_the_commands(runner):
    result = runner.invoke(["--help"])
    assert result.exit_code == 0
    for command in ("init-db", "reprocess", "config"):
        assert command in result.output


def test_receiver_help_shows_an_example(runner):
    assert "Example:" in runner.invoke(["--help"]).output


def test_version(runner):
    result = runner.invoke(["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == "receiver, version 0.1.0"


def test_config_prints_the_settings_from_the_environment(runner, monkeypatch, tmp_path):
    monkeypatch.setenv("RECEIVER_DB", f"{tmp_path}/events.db")
    monkeypatch.setenv("RECEIVER_MAX_BODY_BYTES", "2048")
    monkeypatch.setenv("VONAGE_SIGNATURE_SECRET", "do-not-print-me")
    result = runner.invoke(["config"])
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert f"RECEIVER_DB={tmp_path}/events.db" in lines
    assert "RECEIVER_MAX_BODY_BYTES=2048" in lines
    assert "RECEIVER_SYNCHRONOUS=FULL" in lines
    assert "VONAGE_SIGNATURE_SECRET=(set, hidden)" in lines
    assert "do-not-print-me" not in result.output


def test_config_names_an_invalid_variable(runner, monkeypatch):
    monkeypatch.setenv("RECEIVER_MAX_BODY_BYTES", "one megabyte")
    result = runner.invoke(["config"])
    assert result.exit_code == 1
    assert "RECEIVER_MAX_BODY_BYTES='one megabyte' is not a valid value" in result.output


# --- reprocess -----------------------------------------------------------------------------
#
# A rejection that today's validation takes happens when the schema was stricter when the
# callback arrived. The scenario: an older receiver rejected unknown top-level fields, and
# Vonage started sending a new one (FIELD-NOTES: "Vonage adds fields over time").

NEW_FIELD = status("m-new-field", "d-1", "delivered", price="0.0333", brand="Acme")
STILL_BAD = status("m-bogus", "d-1", "bogus")
NOT_JSON = b"<xml>not json</xml>"


@pytest.fixture
def upgrade(monkeypatch):
    """Validate with the older, stricter Message Status schema (unknown fields rejected) until
    ``upgrade()`` brings back today's; returns ``upgrade``."""
    today = schemas.SCHEMAS[schemas.MESSAGE_STATUS]
    monkeypatch.setitem(schemas.SCHEMAS, schemas.MESSAGE_STATUS, schemas.MessageStatus(unknown=RAISE))

    def _upgrade():
        schemas.SCHEMAS[schemas.MESSAGE_STATUS] = today

    return _upgrade


@pytest.fixture
def rejected(db_path, client, rows, upgrade):
    """Three bodies rejected by the older receiver; returns {name: rejected row id}."""
    ids = {}
    for name, body, expected in [("new_field", dumps(NEW_FIELD), 422), ("still_bad", dumps(STILL_BAD), 422),
                                 ("not_json", NOT_JSON, 400)]:
        response = post_to(client, body, "/webhooks/message-status")
        assert response.status_code == expected
        ids[name] = response.get_json()["rejected_id"]
    errors = json.loads(rows(db_path, "SELECT error FROM rejected_callbacks WHERE id = ?", ids["new_field"])[0]["error"])
    assert errors["errors"]["json"] == {"brand": ["Unknown field."]}
    return ids


def test_reprocess_stores_what_now_passes_with_its_original_arrival(runner, db_path, rows, rejected, upgrade):
    upgrade()
    [before] = rows(db_path, "SELECT * FROM rejected_callbacks WHERE id = ?", rejected["new_field"])

    result = runner.invoke(["reprocess", "--db", str(db_path)])
    assert result.exit_code == 0, result.output
    assert "3 pending: 1 were stored, 0 were already stored, 2 still rejected." in result.stderr

    [after] = rows(db_path, "SELECT * FROM rejected_callbacks WHERE id = ?", rejected["new_field"])
    [callback] = rows(db_path, "SELECT *, CAST(body AS BLOB) AS raw FROM callbacks")
    assert after["reprocessed_at"] is not None
    assert after["reprocess_result"] == "stored"
    assert after["callback_id"] == callback["id"]
    # Stored as if it had been accepted when it arrived.
    assert callback["raw"] == dumps(NEW_FIELD)
    assert callback["received_at"] == callback["last_received_at"] == before["received_at"]
    assert (callback["endpoint"], callback["user_agent"], callback["kind"]) == (
        "/webhooks/message-status", before["user_agent"], "message_status")
    assert rows(db_path, "SELECT message_uuid, received_at, price FROM status_events") == [
        {"message_uuid": "m-new-field", "received_at": before["received_at"], "price": "0.0333"}]
    assert rows(db_path, "SELECT status, event_count FROM messages") == [{"status": "delivered", "event_count": 1}]
    assert rows(db_path, "SELECT messages_price FROM dispatches") == [{"messages_price": "0.0333"}]

    # Those still rejected stay pending, with today's error.
    for name, reason in (("still_bad", "schema_error"), ("not_json", "invalid_json")):
        [row] = rows(db_path, "SELECT * FROM rejected_callbacks WHERE id = ?", rejected[name])
        assert (row["reprocessed_at"], row["callback_id"]) == (None, None)
        result_json = json.loads(row["reprocess_result"])
        assert result_json["reason"] == reason
        assert result_json["at"]


def test_reprocess_again_changes_nothing_stored(runner, db_path, rows, rejected, upgrade):
    upgrade()
    assert runner.invoke(["reprocess", "--db", str(db_path)]).exit_code == 0
    stored_before = rows(db_path, "SELECT * FROM callbacks")
    result = runner.invoke(["reprocess", "--db", str(db_path)])
    assert result.exit_code == 0
    assert "2 pending: 0 were stored, 0 were already stored, 2 still rejected." in result.stderr
    assert rows(db_path, "SELECT * FROM callbacks") == stored_before
    assert rows(db_path, "SELECT count(*) AS n FROM status_events") == [{"n": 1}]


def test_reprocess_dry_run_changes_nothing(runner, db_path, rejected, upgrade):
    upgrade()
    before = dump(db_path)
    result = runner.invoke(["reprocess", "--db", str(db_path), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "3 pending: 1 would be stored, 0 would be already stored, 2 still rejected." in result.stderr
    assert dump(db_path) == before


def test_reprocess_with_the_old_schema_stores_nothing(runner, db_path, rows, rejected):
    result = runner.invoke(["reprocess", "--db", str(db_path)])
    assert result.exit_code == 0
    assert "3 pending: 0 were stored, 0 were already stored, 3 still rejected." in result.stderr
    assert rows(db_path, "SELECT count(*) AS n FROM callbacks") == [{"n": 0}]
    assert rows(db_path, "SELECT count(*) AS n FROM rejected_callbacks WHERE reprocessed_at IS NULL") == [{"n": 3}]


@pytest.mark.parametrize(
    "options, processed",
    [
        (["--id", "{new_field}"], {"new_field"}),
        (["--id", "{new_field}", "--id", "{not_json}"], {"new_field", "not_json"}),
        (["--reason", "invalid_json"], {"not_json"}),
        (["--reason", "schema_error"], {"new_field", "still_bad"}),
        (["--reason", "schema_error", "--id", "{still_bad}"], {"still_bad"}),
    ],
)
def test_reprocess_only_the_rows_asked_for(runner, db_path, rows, rejected, upgrade, options, processed):
    upgrade()
    args = [o.format(**rejected) for o in options]
    result = runner.invoke(["reprocess", "--db", str(db_path), *args])
    assert result.exit_code == 0, result.output
    touched = {name for name, row_id in rejected.items()
               if rows(db_path, "SELECT reprocess_result FROM rejected_callbacks WHERE id = ?", row_id)[0]["reprocess_result"]}
    assert touched == processed
    expected_callbacks = 1 if "new_field" in processed else 0
    assert rows(db_path, "SELECT count(*) AS n FROM callbacks") == [{"n": expected_callbacks}]


def test_reprocess_of_a_body_stored_since_counts_a_delivery(runner, db_path, rows, client, rejected, upgrade):
    upgrade()
    # Vonage sent the same body again after the receiver was upgraded: stored then.
    response = post_to(client, dumps(NEW_FIELD))
    assert response.get_json()["status"] == "stored"
    result = runner.invoke(["reprocess", "--db", str(db_path), "--id", str(rejected["new_field"])])
    assert result.exit_code == 0
    assert "1 pending: 0 were stored, 1 were already stored, 0 still rejected." in result.stderr
    [row] = rows(db_path, "SELECT * FROM rejected_callbacks WHERE id = ?", rejected["new_field"])
    assert (row["reprocess_result"], row["callback_id"]) == ("duplicate", response.get_json()["callback_id"])
    assert rows(db_path, "SELECT delivery_count FROM callbacks") == [{"delivery_count": 2}]
    assert rows(db_path, "SELECT count(*) AS n FROM status_events") == [{"n": 1}]


def test_reprocess_keeps_a_binary_body_pending(runner, db_path, rows, client):
    body = b'{"message_uuid": "\xff"}'
    rejected_id = post_to(client, body).get_json()["rejected_id"]
    result = runner.invoke(["reprocess", "--db", str(db_path)])
    assert result.exit_code == 0
    [row] = rows(db_path, "SELECT CAST(body AS BLOB) AS raw, reprocessed_at, reprocess_result "
                          "FROM rejected_callbacks WHERE id = ?", rejected_id)
    assert row["raw"] == body
    assert row["reprocessed_at"] is None
    assert json.loads(row["reprocess_result"])["reason"] == "invalid_utf8"


def test_reprocess_never_stores_a_truncated_body(runner, db_path, rows):
    body = dumps(status("m-padded", "d-1")) + b" " * 500  # JSON followed by whitespace
    client = create_app({"db_path": str(db_path), "max_body_bytes": len(body) - 100}).test_client()
    assert post_to(client, body).status_code == 413
    result = runner.invoke(["reprocess", "--db", str(db_path)])
    assert result.exit_code == 0
    assert rows(db_path, "SELECT count(*) AS n FROM callbacks") == [{"n": 0}]
    assert rows(db_path, "SELECT reprocessed_at FROM rejected_callbacks") == [{"reprocessed_at": None}]


def test_one_body_that_cannot_be_stored_does_not_stop_reprocess(runner, db_path, rows, client, upgrade, monkeypatch):
    """A row whose storing raises (a bug, simulated by making store_callback fail for one
    message) is rolled back alone and stays pending; the other rows are reprocessed."""
    from receiver import store

    unstorable = dumps(status("m-unstorable", "d-1", brand="x"))
    assert post_to(client, unstorable).status_code == 422
    assert post_to(client, dumps(NEW_FIELD)).status_code == 422
    upgrade()
    real_store = store.store_callback

    def failing_store(conn, callback, delivery, *args):
        if callback.data["message_uuid"] == "m-unstorable":
            real_store(conn, callback, delivery, *args)  # partial work that must be undone
            raise RuntimeError("simulated bug")
        return real_store(conn, callback, delivery, *args)

    monkeypatch.setattr(store, "store_callback", failing_store)
    result = runner.invoke(["reprocess", "--db", str(db_path)])
    assert result.exit_code == 0, result.output
    assert "1 failed to store" in result.stderr
    assert rows(db_path, "SELECT message_uuid FROM status_events") == [{"message_uuid": "m-new-field"}]
    pending = rows(db_path, "SELECT reprocess_result FROM rejected_callbacks WHERE reprocessed_at IS NULL")
    assert len(pending) == 1 and "simulated bug" in pending[0]["reprocess_result"]

# --- check ---------------------------------------------------------------------------------


def test_check_names_the_rows_that_differ(runner, db_path):
    """`check` says which derived rows differ from the event log, changed or missing: the first
    20 keys of each table and how many more, so they can be looked at."""
    from receiver import simulate

    with closing(db.connect(str(db_path))) as conn:
        simulate.store_all(simulate.generate(60, seed=2, api="mixed"), conn)
        changed = [uuid for (uuid,) in conn.execute(
            "SELECT message_uuid FROM messages ORDER BY message_uuid LIMIT 25")]
        conn.execute("UPDATE messages SET event_count = event_count + 1 WHERE message_uuid IN "
                     "(SELECT message_uuid FROM messages ORDER BY message_uuid LIMIT 25)")
        (missing,) = conn.execute("SELECT dispatch_uuid FROM dispatches LIMIT 1").fetchone()
        conn.execute("DELETE FROM dispatches WHERE dispatch_uuid = ?", (missing,))

    result = runner.invoke(["check", "--db", str(db_path)])
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert f"messages: 25 rows differ from the event log (message_uuid {', '.join(changed[:20])} and 5 more)" in lines
    assert f"dispatches: 1 rows differ from the event log (dispatch_uuid {missing})" in lines
    assert "workflows: matches the event log" in lines
