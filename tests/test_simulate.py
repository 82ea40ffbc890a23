"""`receiver simulate`: simulated traffic never lands unmarked in the file Vonage posts to,
runs do not collide, and simulated rows can be removed from any database again."""

import json
import urllib.request

from payloads import dumps, failover_workflow
from receiver import db, simulate
from testing.processes import Gunicorn


def counts(rows, path):
    return {table: rows(path, f"SELECT count(*) AS n FROM {table}")[0]["n"]
            for table in ("callbacks", "status_events", "final_reports", "final_report_messages",
                          "messages", "dispatches")}


def test_simulate_writes_to_the_demo_database_not_the_live_one(runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RECEIVER_DB", "var/events.db")  # as `make run` exports it
    result = runner.invoke(["simulate", "--dispatches", "3"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "var" / "demo.db").exists()
    assert not (tmp_path / "var" / "events.db").exists()
    assert "var/demo.db" in result.stderr


def test_two_runs_without_a_seed_do_not_share_dispatches(runner, tmp_path, rows):
    path = tmp_path / "demo.db"
    for _ in range(2):
        assert runner.invoke(["simulate", "--db", str(path), "--dispatches", "40"]).exit_code == 0
    assert rows(path, "SELECT count(*) AS n FROM dispatches")[0]["n"] == 80
    assert rows(path, "SELECT max(final_report_count) AS n FROM dispatches")[0]["n"] == 1


def test_a_seed_still_repeats_a_run(runner, tmp_path, rows):
    uuids = []
    for name in ("a.db", "b.db"):
        path = tmp_path / name
        assert runner.invoke(["simulate", "--db", str(path), "--dispatches", "5", "--seed", "7"]).exit_code == 0
        uuids.append(rows(path, "SELECT dispatch_uuid FROM dispatches ORDER BY 1"))
    assert uuids[0] == uuids[1]


def test_every_simulated_body_is_marked():
    for _, deliveries in simulate.generate(30, seed=3):
        for delivery in deliveries:
            assert json.loads(delivery.body)["simulated"] is True


def test_simulated_rows_in_a_real_database_are_marked_and_removed(runner, db_path, post, rows):
    """Simulated traffic written into a real database (explicit --db) is found by its mark and
    removed with everything derived from it; the real callbacks and their rows stay exact."""
    _, _, _, bodies = failover_workflow()
    for body in bodies:
        assert post(body).status_code == 200
    real = counts(rows, db_path)
    billing = rows(db_path, "SELECT * FROM billing_lines ORDER BY message_uuid")

    result = runner.invoke(["simulate", "--db", str(db_path), "--dispatches", "20"])
    assert result.exit_code == 0, result.output
    marked = rows(db_path, "SELECT count(*) AS n FROM callbacks WHERE json_extract(body, '$.simulated')")
    assert marked[0]["n"] == counts(rows, db_path)["callbacks"] - real["callbacks"] > 0

    result = runner.invoke(["simulate", "--remove", "--db", str(db_path)])
    assert result.exit_code == 0, result.output
    assert f"{marked[0]['n']} simulated callbacks removed" in result.stderr
    assert counts(rows, db_path) == real
    assert rows(db_path, "SELECT * FROM billing_lines ORDER BY message_uuid") == billing
    check = runner.invoke(["check", "--db", str(db_path)])
    assert check.exit_code == 0, check.output


def test_remove_unlinks_a_reprocessed_rejection(runner, db_path, rows):
    """A rejected body stored later by reprocess points at its callbacks row; removing that
    simulated callback keeps the rejection, unlinked, instead of failing on the key."""
    runner.invoke(["simulate", "--db", str(db_path), "--dispatches", "1", "--seed", "1"])
    [first] = rows(db_path, "SELECT id FROM callbacks ORDER BY id LIMIT 1")
    conn = db.connect(str(db_path))
    conn.execute("INSERT INTO rejected_callbacks (received_at, body, body_bytes, http_status, "
                 "reason, error, reprocessed_at, callback_id) VALUES ('t', 'x', 1, 422, "
                 "'schema_error', '{}', 't', ?)", (first["id"],))
    conn.close()
    result = runner.invoke(["simulate", "--remove", "--db", str(db_path)])
    assert result.exit_code == 0, result.output
    assert rows(db_path, "SELECT callback_id FROM rejected_callbacks") == [{"callback_id": None}]
    assert rows(db_path, "SELECT count(*) AS n FROM callbacks") == [{"n": 0}]


def test_remove_needs_an_existing_database(runner, tmp_path):
    result = runner.invoke(["simulate", "--remove", "--db", str(tmp_path / "typo.db")])
    assert result.exit_code == 1
    assert "no such database" in result.output
    assert not (tmp_path / "typo.db").exists()


def test_traffic_posted_to_a_running_receiver_is_marked_and_removable(runner, tmp_path, rows):
    """`simulate --url` posts to the real gunicorn, which stores into its (live) file; those
    rows carry the mark too, and --remove takes them out while the server runs."""
    server = Gunicorn(tmp_path / "events.db", tmp_path / "gunicorn.log", workers=1).start()
    try:
        real = dumps(failover_workflow()[3][0])
        result = runner.invoke(["simulate", "--url", f"{server.url}/webhooks/vonage",
                                "--dispatches", "5", "--concurrency", "2"])
        assert result.exit_code == 0, result.output
        request = urllib.request.Request(f"{server.url}/webhooks/vonage", data=real, method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
        result = runner.invoke(["simulate", "--remove", "--db", str(server.db_path)])
        assert result.exit_code == 0, result.output
        assert rows(server.db_path, "SELECT body FROM callbacks") == [{"body": real.decode()}]
    finally:
        assert server.stop() == []


def test_nothing_simulated_arrives_after_now(runner, tmp_path, rows):
    """Read receipts come up to 3 days after delivery and final reports after the last leg: a
    workflow started an hour ago has not sent them yet. No row arrives, nor is stamped, later
    than the moment simulate ran."""
    from datetime import datetime, timezone

    path = tmp_path / "demo.db"
    result = runner.invoke(["simulate", "--db", str(path), "--api", "mixed", "--days", "1",
                            "--dispatches", "300", "--seed", "5"])
    assert result.exit_code == 0, result.output
    after = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    latest = rows(path, """
        SELECT (SELECT max(received_at) FROM callbacks) AS received_at,
               (SELECT max(timestamp) FROM status_events) AS status_at,
               (SELECT max(timestamp) FROM final_reports) AS report_at,
               (SELECT count(*) FROM status_events WHERE status = 'read') AS reads""")[0]
    assert latest["reads"] > 0
    for what in ("received_at", "status_at", "report_at"):
        assert latest[what] <= after, (what, latest)
