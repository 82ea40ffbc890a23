"""`receiver archive`: Parquet months that DuckDB reads back with SQLite's exact counts, sums
and bytes; idempotent; under real ingest."""

import hashlib
import os
import sqlite3
import time
from contextlib import closing
from decimal import Decimal

import duckdb
import pytest
from ops_data import add_rejection, seed
from ops_data import run_receiver as receiver

from receiver import archive
from testing.processes import Gunicorn
from testing.traffic import Bodies, LoadGenerator, acknowledged, summarize

# seed() spreads workflows over 2026-01-01 .. 2026-04-01; their last callbacks may arrive in April.
MONTHS = ("2026-01", "2026-02", "2026-03", "2026-04")
NEXT = {"2026-01": "2026-02-01", "2026-02": "2026-03-01", "2026-03": "2026-04-01",
        "2026-04": "2026-05-01"}
EVENTS = ("callbacks", "status_events", "final_reports", "final_report_messages", "rejected_callbacks")
DERIVED = ("messages", "dispatches", "workflows")
# Each event table's arrival time in SQLite.
ARRIVAL = {
    "final_report_messages": ("final_report_messages t JOIN final_reports p ON p.id = t.final_report_id",
                              "p.received_at"),
}


def sqlite_month(conn, table, month):
    """(rows, exact sum of every *_nano column) of ``table``'s rows that arrived in ``month``."""
    source, received = ARRIVAL.get(table, (f"{table} t", "t.received_at"))
    start, end = f"{month}-01", NEXT[month]
    nanos = [r[1] for r in conn.execute(f"PRAGMA table_info({table})") if r[1].endswith("_nano")]
    sums = ", ".join([f"sum(t.{c})" for c in nanos] or ["NULL"])
    return conn.execute(f"SELECT count(*), {sums} FROM {source} WHERE {received} >= ? AND {received} < ?",
                        (start, end)).fetchone()


def duck_month(duck, directory, table, month):
    nanos = [r[0] for r in duck.execute(
        f"DESCRIBE SELECT * FROM read_parquet('{directory}/{table}/*/*.parquet', hive_partitioning=true)"
    ).fetchall() if r[0].endswith("_nano")]
    sums = ", ".join([f"sum({c})" for c in nanos] or ["NULL"])
    return duck.execute(
        f"SELECT count(*), {sums} FROM read_parquet('{directory}/*/*/*.parquet', hive_partitioning=true, "
        f"union_by_name=true, filename=true) WHERE month = ? AND filename LIKE ?",
        (month, f"%/{table}/month=%")).fetchone()


@pytest.fixture
def store(db_path):
    seed(db_path, dispatches=400)
    add_rejection(db_path, "2026-02-10T00:00:00.000000Z", b"\xff\x00 not json \xfe")
    add_rejection(db_path, "2026-03-10T00:00:00.000000Z", '{"caf\u00e9": 1}'.encode())
    return db_path


def test_duckdb_reads_back_exact_counts_sums_and_bytes(runner, store, tmp_path):
    out = tmp_path / "archive"
    for month in MONTHS:
        result = runner.invoke(["archive", "--db", str(store), "--month", month, str(out)])
        assert result.exit_code == 0, result.output
    assert sorted(os.listdir(out)) == sorted(EVENTS + DERIVED)
    assert sorted(os.listdir(out / "callbacks")) == [f"month={m}" for m in MONTHS]
    assert os.listdir(out / "callbacks" / "month=2026-01") == ["part-0.parquet"]
    duck = duckdb.connect()
    with closing(sqlite3.connect(str(store))) as conn:
        for month in MONTHS:
            for table in EVENTS:
                expected = sqlite_month(conn, table, month)
                assert expected[0] > 0 or table == "rejected_callbacks" or month == "2026-04", (table, month)
                assert duck_month(duck, out, table, month) == expected, (table, month)
        # Every derived row in exactly one month; the same rows and exact totals as SQLite.
        for table, key in (("messages", "message_uuid"), ("dispatches", "dispatch_uuid"),
                           ("workflows", "workflow_id")):
            rows = duck.execute(
                f"SELECT count(*), count(DISTINCT {key}) FROM read_parquet('{out}/{table}/*/*.parquet')"
            ).fetchone()
            assert rows == (conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0],) * 2, table
        nano, text = duck.execute(
            f"SELECT sum(price_nano), sum(price_decimal)::VARCHAR FROM read_parquet('{out}/messages/*/*.parquet')"
        ).fetchone()
        assert nano == conn.execute("SELECT sum(price_nano) FROM messages").fetchone()[0]
        assert Decimal(text) == Decimal(nano).scaleb(-9)
        # Billing recomputed from the archive equals SQLite's view, to the billionth.
        assert duck.execute(
            f"SELECT count(*), sum(price_nano) FROM read_parquet('{out}/messages/*/*.parquet') "
            "WHERE coalesce(CASE WHEN channel IN ('sms', 'mms') THEN coalesce(submitted_at, delivered_at, read_at) "
            "ELSE coalesce(delivered_at, read_at) END, '') <> ''"
        ).fetchone() == conn.execute("SELECT count(*), sum(price_nano) FROM billing_lines").fetchone()
        # Bodies byte-exact: the text of callbacks, the raw bytes of rejections.
        bodies = dict(duck.execute(f"SELECT sha256, body FROM read_parquet('{out}/callbacks/*/*.parquet')").fetchall())
        assert len(bodies) == conn.execute("SELECT count(*) FROM callbacks").fetchone()[0]
        assert all(hashlib.sha256(body.encode()).hexdigest() == sha for sha, body in bodies.items())
        rejected = sorted(r[0] for r in duck.execute(
            f"SELECT body FROM read_parquet('{out}/rejected_callbacks/*/*.parquet')").fetchall())
        assert rejected == sorted([b"\xff\x00 not json \xfe", '{"caf\u00e9": 1}'.encode()])
        prices = dict(duck.execute(
            f"SELECT price, price_nano FROM read_parquet('{out}/status_events/*/*.parquet') "
            "WHERE price IS NOT NULL").fetchall())
        assert prices == dict(conn.execute("SELECT price, price_nano FROM status_events WHERE price IS NOT NULL"))


def test_a_second_run_replaces_the_month(runner, store, tmp_path):
    out = tmp_path / "archive"
    args = ["archive", "--db", str(store), "--month", "2026-02", str(out)]
    assert runner.invoke(args).exit_code == 0
    first = (out / "callbacks" / "month=2026-02" / "part-0.parquet").stat().st_ino
    result = runner.invoke(args)
    assert result.exit_code == 0
    assert (out / "callbacks" / "month=2026-02" / "part-0.parquet").stat().st_ino != first  # renamed in
    duck = duckdb.connect()
    with closing(sqlite3.connect(str(store))) as conn:
        for table in EVENTS:
            assert duck_month(duck, out, table, "2026-02") == sqlite_month(conn, table, "2026-02"), table
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
    # A second receiver writes its own files beside the first, never over them.
    assert runner.invoke([*args[:-1], "--name", "eu-2", str(out)]).exit_code == 0
    assert sorted(os.listdir(out / "callbacks" / "month=2026-02")) == ["eu-2-0.parquet", "part-0.parquet"]


def test_archive_under_load(db_path, tmp_path):
    seed(db_path, dispatches=600)
    server = Gunicorn(db_path, tmp_path / "gunicorn.log", workers=2).start()
    generator = LoadGenerator(server.port, Bodies(seed=15), threads=4)
    out = tmp_path / "archive"
    try:
        generator.start()
        generator.wait_for(lambda seen: len(acknowledged(seen)) >= 100, 0, 30, "ingest")
        started = time.monotonic()
        code, _, err = receiver("archive", "--month", "2026-02", str(out), db_path=db_path)
        finished = time.monotonic()
    finally:
        outcomes = generator.stop()
        problems = server.stop()
    assert code == 0, err
    assert problems == [] and summarize(outcomes).keys() == {200}, summarize(outcomes)
    assert [o for o in outcomes if started < o.started < finished]
    duck = duckdb.connect()
    with closing(sqlite3.connect(str(db_path))) as conn:
        for table in EVENTS:
            assert duck_month(duck, out, table, "2026-02") == sqlite_month(conn, table, "2026-02"), table


@pytest.mark.parametrize("args, message", [
    (["--month", "2026-13"], "Error: '2026-13' is not a month like 2026-11"),
    (["--month", "2026-01", "--name", "../x"], "Error: '../x' is not a receiver name (letters, digits, '.', '_', '-')"),
])
def test_bad_arguments_get_one_clear_line(runner, db_path, tmp_path, args, message):
    result = runner.invoke(["archive", "--db", str(db_path), *args, str(tmp_path / "out")])
    assert result.exit_code == 1
    assert result.output.strip() == message
    assert not (tmp_path / "out").exists()


def test_missing_database_is_not_created(runner, tmp_path):
    result = runner.invoke(["archive", "--db", str(tmp_path / "none.db"), "--month", "2026-01", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert result.output.strip() == (
        f"Error: {tmp_path / 'none.db'}: no such database (`receiver init-db --db {tmp_path / 'none.db'}` creates one)")
    assert list(tmp_path.iterdir()) == []


def test_help_has_an_example(runner):
    result = runner.invoke(["archive", "--help"])
    assert result.exit_code == 0 and "Example: receiver archive --month" in result.output


@pytest.mark.parametrize("month, expected", [
    ("2026-01", ("2026-01-01", "2026-02-01")),
    ("2026-12", ("2026-12-01", "2027-01-01")),
])
def test_a_month_covers_its_days_and_no_more(month, expected):
    assert archive.month_range(month) == expected
