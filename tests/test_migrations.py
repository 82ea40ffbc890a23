"""Schema migrations that `receiver init-db` runs in place (receiver/db.py): 3 -> 4."""

import sqlite3
from contextlib import closing

from payloads import dumps, new_uuid, status, v1_status
from receiver import db, rows as plan_rows, store
from receiver.callbacks import parse

# The indexes schema 4 makes partial, as schema 3 created them (every row, NULL or not).
SCHEMA_3_INDEXES = {
    "status_events_workflow": "CREATE INDEX status_events_workflow ON status_events (workflow_id, timestamp)",
    "status_events_dispatch": "CREATE INDEX status_events_dispatch ON status_events (dispatch_uuid, timestamp)",
    "messages_dispatch": "CREATE INDEX messages_dispatch ON messages (dispatch_uuid, workflow_position)",
    "messages_workflow": "CREATE INDEX messages_workflow ON messages (workflow_id, workflow_position)",
}


def schema_3_file(path):
    """A file as schema 3 left it: events of both APIs derived, full indexes, user_version 3."""
    db.init_db(str(path))
    bodies = [status(new_uuid(), new_uuid(), "delivered"), v1_status(new_uuid(), workflow=(new_uuid(), 1, 2))]
    plans = [plan_rows.plan(parse(dumps(b)), store.Delivery(dumps(b), "/webhooks/vonage",
                                                            store.utcnow())) for b in bodies]
    with closing(db.connect(str(path))) as conn:
        with store.transaction(conn):
            store.store_batch(conn, plans)
            store.project(conn)
            for name, sql in SCHEMA_3_INDEXES.items():
                conn.execute(f"DROP INDEX {name}")
                conn.execute(sql)
            conn.execute("PRAGMA user_version = 3")


def index_sql(path):
    with closing(sqlite3.connect(str(path))) as conn:
        return dict(conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' "
                                 "AND sql IS NOT NULL"))


def test_a_schema_3_file_is_refused_until_init_db_makes_its_api_indexes_partial(tmp_path, runner):
    path = tmp_path / "events.db"
    schema_3_file(path)
    before = index_sql(path)

    refused = runner.invoke(["check", "--db", str(path)])
    assert refused.exit_code == 1
    assert "schema version 3, older than this receiver's 4: run `receiver init-db" in refused.output

    migrated = runner.invoke(["init-db", "--db", str(path)])
    assert migrated.exit_code == 0, migrated.output
    after = index_sql(path)
    assert set(after) == set(before)  # the same indexes, none lost, none added
    for name, column in (("status_events_workflow", "workflow_id"),
                         ("status_events_dispatch", "dispatch_uuid"),
                         ("messages_dispatch", "dispatch_uuid"),
                         ("messages_workflow", "workflow_id")):
        assert after[name].endswith(f"WHERE {column} IS NOT NULL"), after[name]
    assert {n: s for n, s in after.items() if n not in SCHEMA_3_INDEXES} == \
        {n: s for n, s in before.items() if n not in SCHEMA_3_INDEXES}

    with closing(db.connect(str(path))) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (4,)
        # What the links and the timeline ask still comes from the (now partial) indexes.
        for sql, index in (
                ("SELECT * FROM status_events WHERE dispatch_uuid = ? ORDER BY timestamp",
                 "status_events_dispatch"),
                ("SELECT * FROM status_events WHERE workflow_id = ? ORDER BY timestamp",
                 "status_events_workflow"),
                ("SELECT * FROM messages WHERE dispatch_uuid = ?", "messages_dispatch"),
                ("SELECT * FROM messages WHERE workflow_id = ? ORDER BY workflow_position",
                 "messages_workflow")):
            plan = " ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", ("x",)))
            assert f"INDEX {index} " in plan, (sql, plan)
        assert store.derived_differences(conn) == {t: 0 for t in store.DERIVED_TABLES}
    assert runner.invoke(["check", "--db", str(path)]).exit_code == 0

    again = runner.invoke(["init-db", "--db", str(path)])  # idempotent
    assert again.exit_code == 0, again.output
    assert index_sql(path) == after
