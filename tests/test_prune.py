"""`receiver prune`: event rows go, derived rows and billing stay, check and rebuild still pass,
and the receiver keeps answering 200 while it runs."""

import hashlib
import sqlite3
import time
from contextlib import closing
from datetime import date, datetime, timedelta, timezone

import pytest
from ops_data import add_rejection, seed
from ops_data import run_receiver as receiver

from receiver import db
from testing.processes import Gunicorn
from testing.traffic import Bodies, LoadGenerator, acknowledged, receiver_check, stored_hashes, summarize

EVENT_TABLES = ("callbacks", "status_events", "final_reports", "final_report_messages",
                "rejected_callbacks")
CUTOFF = "2026-02-15"  # seed() spreads workflows over 2026-01-01 .. 2026-04-01


def counts(path):
    with closing(sqlite3.connect(str(path))) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {name: conn.execute(f"SELECT count(*) FROM [{name}]").fetchone()[0] for name in names}


def digest(path, sql):
    with closing(sqlite3.connect(str(path))) as conn:
        return hashlib.sha256(repr(conn.execute(sql).fetchall()).encode()).hexdigest()


def billing(runner, path, by, start="2026-01-01", end="2026-04-30"):
    result = runner.invoke(["export", "billing", "--db", str(path), "--from", start, "--to", end, "--by", by])
    assert result.exit_code == 0, result.output
    return result.stdout, result.stderr.strip().splitlines()[-1]


@pytest.fixture
def store(db_path):
    """A store with three months of simulated traffic, a rejection on each side of the cutoff
    and a derived table the receiver does not know (one added later must be kept too)."""
    seed(db_path, dispatches=400)
    add_rejection(db_path, "2026-01-10T00:00:00.000000Z")
    add_rejection(db_path, "2026-03-10T00:00:00.000000Z")
    with closing(db.connect(str(db_path))) as conn:
        conn.execute("CREATE TABLE campaign_totals (campaign TEXT PRIMARY KEY, total_nano INTEGER)")
        conn.execute("INSERT INTO campaign_totals VALUES ('spring', 120), ('summer', 7)")
    return db_path


def test_prune_removes_old_events_keeps_derived_rows_and_billing(runner, store):
    before = counts(store)
    exports = {by: billing(runner, store, by) for by in ("message", "dispatch", "day")}
    derived = {t: digest(store, f"SELECT * FROM {t} ORDER BY 1")
               for t in ("messages", "dispatches", "workflows", "campaign_totals")}
    with closing(sqlite3.connect(str(store))) as conn:
        expected = {t: conn.execute(f"SELECT count(*) FROM {t} WHERE received_at < ?", (CUTOFF,)).fetchone()[0]
                    for t in ("callbacks", "status_events", "final_reports", "rejected_callbacks")}
        expected["final_report_messages"] = conn.execute(
            "SELECT count(*) FROM final_report_messages WHERE final_report_id IN "
            "(SELECT id FROM final_reports WHERE received_at < ?)", (CUTOFF,)).fetchone()[0]
    assert all(expected.values()), expected

    result = runner.invoke(["prune", "--db", str(store), "--before", CUTOFF, "--batch-size", "100"])
    assert result.exit_code == 0, result.output
    after = counts(store)
    for table in EVENT_TABLES:
        assert after[table] == before[table] - expected[table], table
    with closing(sqlite3.connect(str(store))) as conn:
        for table in ("callbacks", "status_events", "final_reports", "rejected_callbacks"):
            assert conn.execute(f"SELECT count(*) FROM {table} WHERE received_at < ?", (CUTOFF,)).fetchone() == (0,)
        run = conn.execute("SELECT before, finished_at, removed FROM prunes").fetchall()
    assert len(run) == 1 and run[0][0] == CUTOFF and run[0][1]
    assert f'"status_events": {expected["status_events"]}' in run[0][2]
    assert f"removed rows that arrived before {CUTOFF}: " in result.stderr
    assert f"{expected['callbacks']} callbacks" in result.stderr
    assert f"{after['messages']} messages" in result.stderr.splitlines()[-2]  # kept

    # Derived rows untouched, billing the same to the last digit, in every shape.
    for table, value in derived.items():
        assert digest(store, f"SELECT * FROM {table} ORDER BY 1") == value, table
    for by, export in exports.items():
        assert billing(runner, store, by) == export, by

    # check and rebuild know what was pruned.
    assert runner.invoke(["check", "--db", str(store)]).exit_code == 0
    assert runner.invoke(["rebuild", "--db", str(store)]).exit_code == 0
    for table in ("messages", "dispatches", "workflows"):
        assert digest(store, f"SELECT * FROM {table} ORDER BY 1") == derived[table], table
    check = runner.invoke(["check", "--db", str(store)])
    assert check.exit_code == 0, check.output
    assert "messages: matches the event log" in check.output

    # A second run finds nothing more.
    again = runner.invoke(["prune", "--db", str(store), "--before", CUTOFF])
    assert again.exit_code == 0 and counts(store)["status_events"] == after["status_events"]


def test_check_still_finds_real_differences_after_a_prune(runner, store):
    assert runner.invoke(["prune", "--db", str(store), "--before", CUTOFF]).exit_code == 0
    with closing(sqlite3.connect(str(store))) as conn:
        # A message none of whose events were pruned: check must still verify it.
        uuid = conn.execute(
            "SELECT message_uuid FROM messages WHERE message_uuid NOT IN "
            "(SELECT key FROM pruned_keys WHERE table_name = 'messages') LIMIT 1").fetchone()[0]
        conn.execute("UPDATE messages SET event_count = event_count + 1 WHERE message_uuid = ?", (uuid,))
        conn.commit()
    check = runner.invoke(["check", "--db", str(store)])
    assert check.exit_code == 1
    assert "messages: 1 rows differ from the event log" in check.output


def test_dry_run_changes_nothing(runner, store):
    with open(store, "rb") as file:
        before = file.read()
    result = runner.invoke(["prune", "--db", str(store), "--before", CUTOFF, "--dry-run"])
    assert result.exit_code == 0, result.output
    assert f"would remove rows that arrived before {CUTOFF}: " in result.stderr
    with open(store, "rb") as file:
        assert file.read() == before
    assert counts(store)["prunes"] == 0


def test_retention_days_sets_the_cutoff(runner, db_path, monkeypatch):
    now = datetime.now(timezone.utc)
    seed(db_path, dispatches=100, start=now - timedelta(days=40), days=35)
    off = runner.invoke(["prune", "--db", str(db_path), "--retention"])
    assert off.exit_code == 0 and "retention is off" in off.stderr
    assert counts(db_path)["prunes"] == 0
    monkeypatch.setenv("RECEIVER_RETENTION_DAYS", "20")
    cutoff = (now.date() - timedelta(days=20)).isoformat()
    with closing(sqlite3.connect(str(db_path))) as conn:
        older = conn.execute("SELECT count(*) FROM callbacks WHERE received_at < ?", (cutoff,)).fetchone()[0]
    total = counts(db_path)["callbacks"]
    assert 0 < older < total
    result = runner.invoke(["prune", "--db", str(db_path), "--retention"])
    assert result.exit_code == 0, result.output
    assert counts(db_path)["callbacks"] == total - older
    with closing(sqlite3.connect(str(db_path))) as conn:
        assert conn.execute("SELECT before FROM prunes").fetchone() == (cutoff,)


@pytest.mark.parametrize("args, message", [
    (["--before", "2026-13-01"], "'2026-13-01' is not a date like 2026-11-01"),
    ([], "give either --before DAY or --retention"),
    (["--before", "2026-01-01", "--retention"], "give either --before DAY or --retention"),
])
def test_bad_arguments_get_one_clear_line(runner, db_path, args, message):
    result = runner.invoke(["prune", "--db", str(db_path), *args])
    assert result.exit_code == 1
    assert [message in line for line in result.output.strip().splitlines()] == [True]


def test_missing_database_is_not_created(runner, tmp_path):
    missing = tmp_path / "none.db"
    for args in (["--dry-run"], []):
        result = runner.invoke(["prune", "--db", str(missing), "--before", CUTOFF, *args])
        assert result.exit_code == 1
        assert result.output.strip() == (
            f"Error: {missing}: no such database (`receiver init-db --db {missing}` creates one)")
    assert list(tmp_path.iterdir()) == []


def test_bad_retention_setting_is_refused(runner, db_path, monkeypatch):
    monkeypatch.setenv("RECEIVER_RETENTION_DAYS", "-3")
    result = runner.invoke(["prune", "--db", str(db_path), "--retention"])
    assert result.exit_code == 1
    assert result.output.strip() == "Error: RECEIVER_RETENTION_DAYS must be at least 0, not -3"


def test_prune_under_load_every_answer_is_200(db_path, tmp_path, runner):
    seed(db_path, dispatches=1500)
    exports = {by: billing(runner, db_path, by, end="2026-03-01") for by in ("message", "day")}
    server = Gunicorn(db_path, tmp_path / "gunicorn.log", workers=2).start()
    generator = LoadGenerator(server.port, Bodies(seed=14), threads=4)
    try:
        generator.start()
        generator.wait_for(lambda seen: len(acknowledged(seen)) >= 100, 0, 30, "ingest")
        started = time.monotonic()
        code, _, err = receiver("prune", "--before", "2026-03-01", "--batch-size", "200", db_path=db_path)
        finished = time.monotonic()
        generator.wait_for(lambda seen: len(acknowledged(seen)) >= 50, finished, 30, "ingest after")
    finally:
        outcomes = generator.stop()
        problems = server.stop()
    assert code == 0, err
    assert problems == []
    assert summarize(outcomes).keys() == {200}, summarize(outcomes)
    during = [o for o in outcomes if started < o.started < finished]
    assert during, "the prune must run while callbacks arrive"
    stored, _ = stored_hashes(db_path)
    assert {o.sha256 for o in acknowledged(outcomes)} <= stored
    assert receiver_check(db_path)[0] == 0
    for by, export in exports.items():
        assert billing(runner, db_path, by, end="2026-03-01") == export, by
    with closing(sqlite3.connect(str(db_path))) as conn:
        assert conn.execute("SELECT count(*) FROM status_events WHERE received_at < '2026-03-01'").fetchone() == (0,)


def test_help_has_an_example(runner):
    result = runner.invoke(["prune", "--help"])
    assert result.exit_code == 0 and "Example: receiver prune --before" in result.output
    assert date.fromisoformat(CUTOFF)
