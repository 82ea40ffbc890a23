"""What a user sees when a `receiver` command cannot do its job: one line saying what is wrong
and exit status 1, never a Python traceback; and read-only commands never create a file.

Each case runs the installed `receiver` script as a user would, in its own directory.
"""

import sqlite3
import subprocess
from contextlib import closing

import pytest

from receiver import db
from testing.processes import VENV_BIN, receiver_environment

PERIOD = ["--from", "2026-11-01", "--to", "2026-11-30"]


def receiver(cwd, *args, **env):
    return subprocess.run([str(VENV_BIN / "receiver"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=60,
                          env=receiver_environment(cwd / "var" / "events.db", **env))


def assert_one_line_error(result, *fragments):
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output, output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), output
    for fragment in fragments:
        assert fragment in lines[0], output


def files_under(directory):
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


@pytest.mark.parametrize("args", [
    ["check", "--db", "typo.db"],
    ["export", "billing", "--db", "typo.db", *PERIOD, "-o", "billing.csv"],
    ["export", "events", "--db", "typo.db", *PERIOD],
    ["rebuild", "--db", "typo.db"],
    ["reprocess", "--db", "typo.db", "--dry-run"],
], ids=lambda args: " ".join(args[:2]))
def test_a_wrong_db_is_no_such_database_and_creates_nothing(tmp_path, args):
    result = receiver(tmp_path, *args)
    assert_one_line_error(result, "typo.db: no such database")
    assert files_under(tmp_path) == []


def test_the_default_database_missing_is_named(tmp_path):
    result = receiver(tmp_path, "check")
    assert_one_line_error(result, "events.db: no such database")
    assert files_under(tmp_path) == []


def test_config_creates_no_file(tmp_path):
    result = receiver(tmp_path, "config")
    assert result.returncode == 0, result.stderr
    assert files_under(tmp_path) == []


@pytest.mark.parametrize("args", [["config"], ["check"], ["init-db"], ["simulate", "--dispatches", "1"]],
                         ids=lambda args: args[0])
def test_a_bad_setting_is_one_line(tmp_path, args):
    result = receiver(tmp_path, *args, RECEIVER_SYNCHRONOUS="bogus")
    assert_one_line_error(result, "RECEIVER_SYNCHRONOUS must be one of FULL, NORMAL, EXTRA")
    assert files_under(tmp_path) == []


def test_a_setting_that_is_not_a_number_is_one_line(tmp_path):
    result = receiver(tmp_path, "config", RECEIVER_BUSY_TIMEOUT_MS="ten seconds")
    assert_one_line_error(result, "RECEIVER_BUSY_TIMEOUT_MS='ten seconds' is not a valid value")


@pytest.mark.parametrize("command", [["check"], ["init-db"], ["export", "billing", *PERIOD]],
                         ids=lambda args: args[0])
def test_a_file_that_is_not_a_database_is_one_line(tmp_path, command):
    (tmp_path / "notes.db").write_text("not a database, a text file\n" * 10)
    result = receiver(tmp_path, *command[:1], *command[1:2], "--db", "notes.db", *command[2:])
    assert_one_line_error(result, "notes.db", "SQLite database")


@pytest.mark.parametrize("command", [["check"], ["init-db"], ["export", "events", *PERIOD],
                                     ["rebuild"]], ids=lambda args: args[0])
def test_a_database_of_a_newer_receiver_is_one_line(tmp_path, command):
    path = tmp_path / "newer.db"
    db.init_db(str(path))
    with closing(sqlite3.connect(path)) as conn:
        conn.execute(f"PRAGMA user_version = {db.SCHEMA_VERSION + 1}")
    result = receiver(tmp_path, *command[:1], *command[1:2], "--db", "newer.db", *command[2:])
    assert_one_line_error(result, "newer than this receiver")


def test_a_sqlite_file_of_something_else_is_not_taken_for_a_database(tmp_path):
    with closing(sqlite3.connect(tmp_path / "other.db")) as conn:
        conn.execute("CREATE TABLE notes (text TEXT)")
    result = receiver(tmp_path, "check", "--db", "other.db")
    assert_one_line_error(result, "other.db: not a receiver database")


def test_an_output_file_that_cannot_be_written_is_one_line(tmp_path, db_path):
    result = receiver(tmp_path, "export", "billing", "--db", str(db_path), *PERIOD,
                      "-o", str(tmp_path / "no-such-directory" / "billing.csv"))
    assert_one_line_error(result, "billing.csv")


def test_check_of_a_good_database_still_works(tmp_path, db_path):
    result = receiver(tmp_path, "check", "--db", str(db_path))
    assert result.returncode == 0, result.stderr
    assert "integrity_check: ok" in result.stdout



@pytest.mark.parametrize("args, fragment", [
    (["export", "billing", "--from", "2026-12-01", "--to", "2026-11-01"], "--from 2026-12-01 is after --to 2026-11-01"),
    (["export", "events", "--from", "2026-12-01", "--to", "2026-11-01"], "--from 2026-12-01 is after --to 2026-11-01"),
    (["export", "billing", "--from", "2026-11-01"], "Missing option '--to'"),
    (["reprocess", "--batch-size", "0"], "'--batch-size': 0 is not in the range x>=1"),
    (["simulate", "--dispatches", "-5"], "'--dispatches': -5 is not in the range x>=1"),
    (["simulate", "--dispatches", "0"], "'--dispatches': 0 is not in the range x>=1"),
    (["simulate", "--days", "0"], "'--days': 0 is not in the range 1<=x<=36500"),
    (["simulate", "--days", "1000000"], "'--days': 1000000 is not in the range 1<=x<=36500"),
    (["simulate", "--remove", "--url", "http://127.0.0.1:9/"], "--remove deletes from a database (--db), not from --url"),
    (["simulate", "--concurrency", "0", "--url", "http://127.0.0.1:9/"], "'--concurrency': 0"),
    (["simulate", "--url", "127.0.0.1:8000/webhooks/vonage"], "'--url': '127.0.0.1:8000/webhooks/vonage' is not an http"),
    (["prune", "--before", "2999-01-01"], "'--before': 2999-01-01 is in the future"),
    (["prune", "--batch-size", "0", "--before", "2026-01-01"], "'--batch-size': 0"),
], ids=lambda value: " ".join(value[:3]) if isinstance(value, list) else None)
def test_a_bad_argument_is_one_line_naming_it_and_does_nothing(tmp_path, db_path, args, fragment):
    """Each used to run (exit 0 with nothing done, or a summary that did not add up) or print
    click's usage block; now one line naming the option, exit 1, and the database untouched."""
    before = db_path.read_bytes()
    result = receiver(tmp_path, *args, "--db", str(db_path))
    assert_one_line_error(result, fragment)
    assert db_path.read_bytes() == before
    assert files_under(tmp_path) == ["events.db"]


@pytest.mark.parametrize("args", [["init-db"], ["simulate", "--dispatches", "1"], ["check"],
                                  ["backup", "backups"], ["config"]], ids=lambda args: args[0])
def test_a_database_in_a_missing_directory_is_one_line_and_creates_nothing(tmp_path, args):
    """A typo in RECEIVER_DB or --db used to create the directory and an empty, healthy-looking
    database in it; only the default var/ is created."""
    if args[0] == "simulate":  # simulate writes to --db, never $RECEIVER_DB
        result = receiver(tmp_path, *args, "--db", str(tmp_path / "typo" / "demo.db"))
    else:
        result = receiver(tmp_path, *args, RECEIVER_DB=tmp_path / "typo" / "events.db")
    assert_one_line_error(result, f"directory {tmp_path / 'typo'} does not exist; create it first")
    assert files_under(tmp_path) == []


@pytest.mark.parametrize("database", ["var/events.db", "VAR_ABSOLUTE"])
def test_the_default_var_directory_is_still_created(tmp_path, database):
    database = str(tmp_path / "var" / "events.db") if database == "VAR_ABSOLUTE" else database
    result = receiver(tmp_path, "init-db", RECEIVER_DB=database)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "var" / "events.db").exists()


def test_a_group_without_its_command_still_shows_its_help(tmp_path):
    result = receiver(tmp_path, "export")
    assert result.stderr.startswith("Usage: receiver export"), result.stderr
    assert "Error" not in result.stderr and "billing" in result.stderr
