"""The deferred projection: a 200 promises the event rows; the derived rows (messages,
dispatches, workflows) follow from the event log exactly once, resume after a kill -9, are
caught up after a graceful stop, and their lag is in /healthz, /metrics and the CLI."""

import http.client
import json
import os
import signal
import sqlite3
import time
from contextlib import closing

from payloads import dumps, new_uuid, status, v1_status
from receiver import db, rows as plan_rows, store
from receiver.callbacks import parse
from receiver.cli import cli
from receiver.writer import endpoint_paths, lock_holder
from testing.processes import Gunicorn
from testing.traffic import Bodies, post


def plans(*bodies):
    return [plan_rows.plan(parse(dumps(b)), store.Delivery(dumps(b), "/webhooks/vonage",
                                                           store.utcnow())) for b in bodies]


def derived(conn):
    return {t: sorted(map(tuple, conn.execute(f"SELECT * FROM {t}"))) for t in store.DERIVED_TABLES}



def test_store_batch_writes_events_only_and_project_derives_them_exactly_once(db_path):
    d = new_uuid()
    bodies = [status(new_uuid(), d, "delivered", price="0.01") for _ in range(3)]
    with closing(db.connect(str(db_path))) as conn:
        with store.transaction(conn):
            store.store_batch(conn, plans(*bodies))
        assert conn.execute("SELECT count(*) FROM messages").fetchone() == (0,)
        assert store.projection_behind(conn)[0] == 3
        with store.transaction(conn):
            assert store.project(conn) == 3
        first = derived(conn)
        with store.transaction(conn):
            assert store.project(conn) == 0  # nothing twice: event_count would double
        assert derived(conn) == first
        assert conn.execute("SELECT event_count FROM messages").fetchall() == [(1,)] * 3
        assert conn.execute("SELECT messages_price FROM dispatches").fetchall() == [("0.03",)]
        assert store.projection_behind(conn) == (0, 0.0)
        assert store.derived_differences(conn) == {t: 0 for t in store.DERIVED_TABLES}


def test_a_projection_rolled_back_is_derived_again_by_the_next(db_path):
    """A crash between the events' commit and the projection's (kill -9): the position moves
    only with the rows, so the next projection derives everything once."""
    with closing(db.connect(str(db_path))) as conn:
        with store.transaction(conn):
            store.store_batch(conn, plans(status(new_uuid(), new_uuid(), "submitted")))
        conn.execute("BEGIN IMMEDIATE")
        store.project(conn)
        conn.execute("ROLLBACK")  # the process died before COMMIT
    with closing(db.connect(str(db_path))) as conn:
        with store.transaction(conn):
            assert store.project(conn) == 1
        assert conn.execute("SELECT event_count FROM messages").fetchall() == [(1,)]


def test_events_after_a_prune_of_the_newest_are_still_derived(db_path):
    """`receiver prune` may remove the newest events; SQLite then hands their ids out again,
    and the projection must not take the new rows for derived ones."""
    with closing(db.connect(str(db_path))) as conn:
        with store.transaction(conn):
            store.store_batch(conn, plans(*[status(new_uuid(), new_uuid()) for _ in range(3)]))
            store.project(conn)
            conn.execute("DELETE FROM status_events")  # as prune does, in batches
        later = new_uuid()
        with store.transaction(conn):
            store.store_batch(conn, plans(status(later, new_uuid(), "delivered")))
            assert store.project(conn) == 1
        assert conn.execute("SELECT status FROM messages WHERE message_uuid = ?",
                            (later,)).fetchall() == [("delivered",)]


def test_check_and_billing_export_say_when_the_projection_is_behind(db_path):
    from click.testing import CliRunner

    with closing(db.connect(str(db_path))) as conn:
        with store.transaction(conn):
            store.store_batch(conn, plans(status(new_uuid(), new_uuid(), "delivered")))
    runner = CliRunner()
    checked = runner.invoke(cli, ["check", "--db", str(db_path)])
    assert checked.exit_code == 0, checked.output  # pending events derived as the writer would
    assert "derived rows are 1 events behind" in checked.stderr
    exported = runner.invoke(cli, ["export", "billing", "--db", str(db_path), "--from",
                                   "2020-01-01", "--to", "2030-01-01"])
    assert exported.exit_code == 0 and "1 events behind" in exported.stderr
    with closing(db.connect(str(db_path))) as conn:
        with store.transaction(conn):
            store.project(conn)
    assert "behind" not in runner.invoke(cli, ["check", "--db", str(db_path)]).stderr


def _projected(db_path):
    with closing(sqlite3.connect(db_path)) as conn:
        return store.projection_behind(conn)[0], store.derived_differences(conn)


def fetch(port, path):
    with closing(http.client.HTTPConnection("127.0.0.1", port, timeout=10)) as conn:
        conn.request("GET", path)
        return conn.getresponse().read().decode()


def test_under_gunicorn_the_projection_follows_resumes_after_kill_9_and_is_caught_up_at_stop(
        tmp_path):
    server = Gunicorn(tmp_path / "events.db", tmp_path / "gunicorn.log", workers=2)
    server.start()
    bodies, statuses, lags = Bodies(seed=41), [], []
    try:
        conn, killed_at, deadline = None, None, time.monotonic() + 60
        # 150 callbacks, then the writer dies between commits and projections, then 150 more
        # stored by its replacement (the answers meanwhile are fast 503s, however many).
        while statuses.count(200) < 300 and time.monotonic() < deadline:
            conn = conn or http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            outcome, conn = post(conn, bodies.next())
            statuses.append(outcome.status)
            if killed_at is None and len(statuses) == 150:
                killed_at = len(statuses)
                os.kill(lock_holder(endpoint_paths(str(server.db_path))[1]), signal.SIGKILL)
        if conn is not None:
            conn.close()
        time.sleep(0.5)
        answer, scraped = fetch(server.port, "/healthz"), fetch(server.port, "/metrics")
        answer = json.loads(answer)
    finally:
        server.stop()  # a graceful stop: the writer derives what is left before it exits
    assert statuses[:150] == [200] * 150 and statuses.count(200) == 300, statuses
    assert set(statuses) <= {200, 503}, statuses  # refused while no writer, never an error
    assert answer["status"] == "ok" and answer["projection_behind"] == 0, answer
    assert answer["projection_lag_ms"] == 0, answer
    assert "receiver_projection_lag_seconds 0.0" in scraped
    behind, differences = _projected(tmp_path / "events.db")
    assert behind == 0
    assert differences == {t: 0 for t in store.DERIVED_TABLES}


def test_a_schema_2_file_migrates_with_its_events_counted_as_derived(db_path):
    """Before schema 3 every event was derived in its own commit: the migration starts the
    projection after the last event, and drops the index no reader used."""
    with closing(db.connect(str(db_path))) as conn:
        with store.transaction(conn):
            store.store_batch(conn, plans(*[status(new_uuid(), new_uuid(), "delivered")
                                            for _ in range(3)]))
            store.project(conn)
            conn.execute("DROP TABLE projection")  # as a schema 2 file has it
            conn.execute("CREATE INDEX final_report_messages_dispatch "
                         "ON final_report_messages (dispatch_uuid)")
            conn.execute("PRAGMA user_version = 2")
    assert db.init_db(str(db_path)) == 2
    with closing(db.connect(str(db_path))) as conn:
        assert store.projection_behind(conn) == (0, 0.0)
        assert conn.execute("SELECT * FROM projection").fetchall() == [(1, 3, 0)]
        assert conn.execute("SELECT name FROM sqlite_master WHERE name = "
                            "'final_report_messages_dispatch'").fetchall() == []
        assert store.derived_differences(conn) == {t: 0 for t in store.DERIVED_TABLES}


def test_a_refresh_writes_only_the_rows_that_change_in_place(db_path):
    """SQLite rewrites a row and the index entries of every column an UPDATE sets, equal or not
    (and INSERT OR REPLACE deletes and re-inserts it): a refresh that finds the derived row as it
    should be writes nothing, and a changed row is updated in place."""
    d, workflow_id = new_uuid(), new_uuid()
    first = status(new_uuid(), d, "submitted", timestamp="2026-11-01T10:00:00.000Z")
    leg = v1_status(new_uuid(), workflow=(workflow_id, 1, 2))
    rowids = "SELECT rowid, last_seen_at FROM dispatches UNION ALL SELECT rowid, last_seen_at FROM workflows"
    with closing(db.connect(str(db_path))) as conn:
        with store.transaction(conn):
            store.store_batch(conn, plans(first, leg))
            store.project(conn)
            before, stored = derived(conn), conn.execute(rowids).fetchall()
            changes = conn.total_changes
            store.refresh_dispatch(conn, d)
            store.refresh_messages_workflow(conn, workflow_id)
            assert conn.total_changes == changes
            assert derived(conn) == before
            # A later status of the same message: its dispatch and workflow rows change.
            store.store_batch(conn, plans(status(first["message_uuid"], d, "delivered",
                                                 timestamp="2026-11-01T10:00:05.000Z")))
            store.project(conn)
        after = conn.execute(rowids).fetchall()
        assert [rowid for rowid, _ in after] == [rowid for rowid, _ in stored]  # in place
        assert after != stored
        assert store.derived_differences(conn) == {t: 0 for t in store.DERIVED_TABLES}
