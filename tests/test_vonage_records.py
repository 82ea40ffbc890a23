"""receiver vonage-records import / fetch: Vonage's own records into vonage_records, exactly,
once per message, one transaction per file, against files in Vonage's format and a real HTTP
server answering as the Reports API does."""

import sqlite3
import subprocess
import zipfile
from contextlib import closing
from datetime import datetime, timedelta, timezone

import pytest

from receiver import db, vonage_records
from testing.processes import VENV_BIN, receiver_environment
from testing.vonage_reports import (API_SECRET, ReportsAPI, record, records_answer, report_name,
                                    write_csv, write_zip)

DAY = datetime(2026, 11, 1, tzinfo=timezone.utc)


def uuid(n):
    return f"aaaaaaaa-0000-4000-8000-{n:012d}"


def day_records(ids, *, price="0.0085", start=DAY, step=timedelta(minutes=7), **fields):
    return [record(uuid(n), start + n * step, price=price, **fields) for n in ids]


def write_report(path, records, product="MESSAGES", **kwargs):
    with open(path, "w", encoding="utf-8", newline="") as handle:
        write_csv(handle, records, product, **kwargs)
    return path


def imported(rows, db_path):
    return (rows(db_path, "SELECT * FROM vonage_records ORDER BY message_id"),
            rows(db_path, "SELECT * FROM vonage_record_imports ORDER BY id"))


def test_imports_a_report_zip_exactly(runner, db_path, rows, tmp_path):
    records = day_records(range(3))
    records[0].update(total_price="0.123456789", currency="EUR")
    records[1].update(provider="viber", total_price="", status="rejected", error_code="1300")
    records[2].update(total_price="0.1", currency="USD", date_received="2026-11-01T02:00:00+0100")
    path = write_zip(tmp_path / "MESSAGES_x.zip", records)

    result = runner.invoke(["vonage-records", "import", "--db", str(db_path), str(path)])

    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines()[-1] == (
        f"{path}: import 1: 3 MESSAGES records, 2026-11-01T00:00:00.000000Z .. 2026-11-02T00:00:00.000000Z")
    got, imports = imported(rows, db_path)
    assert [(r["message_id"], r["price"], r["price_nano"], r["currency"], r["channel"]) for r in got] == [
        (uuid(0), "0.123456789", 123456789, "EUR", "whatsapp"),
        (uuid(1), None, None, "EUR", "viber_service_msg"),  # no price: kept, not dropped
        (uuid(2), "0.1", 100000000, "USD", "whatsapp"),
    ]
    assert got[2]["date_received"] == "2026-11-01T01:00:00.000000Z"  # +0100 normalised to UTC
    assert got[1]["error_code"] == "1300" and got[1]["status"] == "rejected"
    assert got[0]["from_id"] == "447700900000" and got[0]["latency"] == 1200
    assert {r["import_id"] for r in got} == {1}
    [row] = imports
    assert row["file_name"] == "MESSAGES_x.zip" and row["source"] == "zip"
    assert (row["product"], row["account_id"], row["row_count"]) == ("MESSAGES", "abcd1234", 3)
    assert len(row["sha256"]) == 64


def test_sms_csv_and_explicit_range(runner, db_path, rows, tmp_path):
    records = [record(uuid(n), DAY + timedelta(hours=n), product="SMS", price="0.0333") for n in range(3)]
    path = write_report(tmp_path / report_name("SMS"), records, "SMS")
    result = runner.invoke(["vonage-records", "import", "--db", str(db_path),
                            "--from", "2026-10-31", "--to", "2026-11-01", str(path)])
    assert result.exit_code == 0, result.output
    got, [row] = imported(rows, db_path)
    assert {r["channel"] for r in got} == {"sms"} and {r["network"] for r in got} == {"23415"}
    assert (row["source"], row["product"], row["date_start"], row["date_end"]) == (
        "csv", "SMS", "2026-10-31T00:00:00.000000Z", "2026-11-02T00:00:00.000000Z")


def test_dates_are_checked_and_normalised_and_the_account_read_from_the_rows(runner, db_path, rows, tmp_path):
    records = day_records(range(3))
    records[0]["date_received"] = "2026-11-01T10:00:00Z"
    records[1]["date_received"] = "2026-11-01T12:30:00.250+02:00"
    good = write_report(tmp_path / "plain-name.csv", records)
    result = runner.invoke(["vonage-records", "import", "--db", str(db_path), str(good)])
    assert result.exit_code == 0, result.output
    got, [row] = imported(rows, db_path)
    assert [r["date_received"] for r in got] == [
        "2026-11-01T10:00:00.000000Z", "2026-11-01T10:30:00.250000Z", "2026-11-01T00:14:00.000000Z"]
    assert row["account_id"] == "abcd1234"  # not in the file's name: the records say it
    records[2]["date_received"] = "2026-02-30T10:00:00+0000"  # the right shape, not a day
    bad = write_report(tmp_path / "bad-date.csv", records)
    result = runner.invoke(["vonage-records", "import", "--db", str(db_path), str(bad)])
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1] == (
        "Error: bad-date.csv: line 4: date_received '2026-02-30T10:00:00+0000' is not an ISO 8601 date-time")


def test_json_prices_are_exact_and_its_self_link_gives_the_range(runner, db_path, rows, tmp_path):
    records = day_records(range(2))
    records[0]["total_price"] = "0.012345678"
    records[1]["total_price"] = "12345.987654321"  # more digits than a float holds
    answer = records_answer(records, date_start="2026-11-01T00:00:00Z", date_end="2026-11-01T12:00:00Z")
    assert '"total_price": 12345.987654321' in answer  # a JSON number, as the spec types it
    path = tmp_path / "records.json"
    path.write_text(answer)
    result = runner.invoke(["vonage-records", "import", "--db", str(db_path), str(path)])
    assert result.exit_code == 0, result.output
    got, [row] = imported(rows, db_path)
    assert [(r["price"], r["price_nano"]) for r in got] == [
        ("0.012345678", 12345678), ("12345.987654321", 12345987654321)]
    assert (row["source"], row["date_start"], row["date_end"]) == (
        "json", "2026-11-01T00:00:00.000000Z", "2026-11-01T12:00:00.000000Z")


def test_reimport_changes_nothing_and_overlaps_merge(runner, db_path, rows, tmp_path):
    first = write_zip(tmp_path / "first.zip", day_records(range(0, 6), price="0.01"))
    second = write_report(tmp_path / "second.csv", day_records(range(3, 9), price="0.02"))

    def run(path):
        result = runner.invoke(["vonage-records", "import", "--db", str(db_path), str(path)])
        assert result.exit_code == 0, result.output
        return result.stderr.splitlines()[-1]

    run(first)
    run(second)
    state = imported(rows, db_path)
    got, imports = state
    assert len(got) == 9 and len(imports) == 2
    # The latest import of a message wins and says which import it was.
    assert [(r["message_id"][-1], r["price"], r["import_id"]) for r in got] == (
        [(str(n), "0.01", 1) for n in range(3)] + [(str(n), "0.02", 2) for n in range(3, 9)])
    assert run(first) == f"{first}: already imported as import 1 (6 records); nothing changed"
    assert run(second).endswith("already imported as import 2 (6 records); nothing changed")
    assert imported(rows, db_path) == state


def test_several_files_in_one_command_and_the_installed_command(db_path, rows, tmp_path):
    zipped = write_zip(tmp_path / "a.zip", day_records(range(4)))
    plain = write_report(tmp_path / "b.csv", day_records(range(10, 12), start=DAY + timedelta(days=1)))
    result = subprocess.run([str(VENV_BIN / "receiver"), "vonage-records", "import", str(zipped), str(plain)],
                            env=receiver_environment(db_path), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert [line for line in result.stderr.splitlines() if ": import " in line] == [
        f"{zipped}: import 1: 4 MESSAGES records, 2026-11-01T00:00:00.000000Z .. 2026-11-02T00:00:00.000000Z",
        f"{plain}: import 2: 2 MESSAGES records, 2026-11-02T00:00:00.000000Z .. 2026-11-03T00:00:00.000000Z",
    ]
    assert len(rows(db_path, "SELECT * FROM vonage_records")) == 6


def test_a_bad_file_installed_command_one_line(db_path, rows, tmp_path):
    path = write_report(tmp_path / "bad.csv", day_records(range(3)))
    path.write_text(path.read_text().replace("0.0085", "abc", 1))
    result = subprocess.run([str(VENV_BIN / "receiver"), "vonage-records", "import", str(path)],
                            env=receiver_environment(db_path), capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        "Error: bad.csv: line 2: total_price 'abc' is not a decimal number such as 0.042 "
        "(at most 9 decimal places)")
    assert "Traceback" not in result.stderr


# --- bad input: one line naming the file, the line and the problem; exit 1; nothing imported ----


def _no_csv(tmp_path):
    path = tmp_path / "report.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "no report here")
    return path, "Error: report.zip: the zip holds no CSV report"


def _voice(tmp_path):
    path = write_zip(tmp_path / "voice.zip", day_records(range(2)),
                     member=report_name("VOICE-CALL"))
    return path, ("Error: voice.zip: a VOICE-CALL report; only MESSAGES and SMS (outbound) records "
                  "are imported")


def _missing_columns(tmp_path):
    path = write_report(tmp_path / "cut.csv", day_records(range(2)))
    lines = path.read_text().splitlines()
    keep = [i for i, c in enumerate(lines[0].split(",")) if c not in ("total_price", "currency")]
    path.write_text("\n".join(",".join(line.split(",")[i] for i in keep) for line in lines) + "\n")
    return path, "Error: cut.csv: line 1: missing columns total_price, currency of a MESSAGES report"


def _delimiter(tmp_path):
    path = write_report(tmp_path / "semi.csv", day_records(range(2)), delimiter=";")
    return path, "Error: semi.csv: line 1: fields are separated by ';'; Vonage's reports use ',' (comma)"


def _not_utf8(tmp_path):
    path = write_report(tmp_path / "latin1.csv", day_records(range(5), client_ref="café"))
    data = path.read_bytes().splitlines(keepends=True)
    data[3] = data[3].decode().encode("latin-1")
    path.write_bytes(b"".join(data))
    return path, "Error: latin1.csv: line 4: not UTF-8 text"


def _price(tmp_path):
    records = day_records(range(3))
    records[1]["total_price"] = "0,05"
    path = write_zip(tmp_path / "price.zip", records)
    return path, (f"Error: price.zip:{report_name()}: line 3: total_price '0,05' is not a decimal "
                  f"number such as 0.042 (at most 9 decimal places)")


def _currency(tmp_path):
    # Amounts are only ever added up per currency: "eur" beside "EUR" would split a total.
    records = day_records(range(3))
    records[2]["currency"] = "eur"
    path = write_report(tmp_path / "currency.csv", records)
    return path, "Error: currency.csv: line 4: currency 'eur' is not a three-letter code such as EUR"


def _empty(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_bytes(b"")
    return path, "Error: empty.csv: empty file"


def _header_only(tmp_path):
    path = write_report(tmp_path / "header.csv", [])
    return path, "Error: header.csv: no records, and no --from/--to to say which range it covers"


def _range(tmp_path):
    path = write_report(tmp_path / "range.csv", day_records(range(3)))
    return path, ("Error: range.csv: line 2: date_received 2026-11-01T00:00:00+0000 is outside "
                  "2026-12-01T00:00:00.000000Z .. 2026-12-02T00:00:00.000000Z, the range this import "
                  "covers"), ["--from", "2026-12-01", "--to", "2026-12-01"]


def _late_error(tmp_path):
    # Past the first chunks written: still nothing imported (one transaction per file).
    records = day_records(range(vonage_records.CHUNK * 2 + 5), step=timedelta(seconds=1))
    records[-1]["total_price"] = "free"
    path = write_zip(tmp_path / "late.zip", records)
    return path, (f"Error: late.zip:{report_name()}: line {len(records) + 1}: total_price 'free' is "
                  f"not a decimal number such as 0.042 (at most 9 decimal places)")


BAD = [_no_csv, _voice, _missing_columns, _delimiter, _not_utf8, _price, _currency, _empty, _header_only, _range,
       _late_error]


@pytest.mark.parametrize("case", BAD, ids=[case.__name__.strip("_") for case in BAD])
def test_bad_input_is_one_line_and_imports_nothing(runner, db_path, rows, tmp_path, case):
    good = write_report(tmp_path / "good.csv", day_records(range(100, 102), start=DAY - timedelta(days=3)))
    path, message, *options = case(tmp_path)
    options = options[0] if options else []
    files = [str(path)] if options else [str(good), str(path)]
    result = runner.invoke(["vonage-records", "import", "--db", str(db_path), *options, *files])
    assert result.exit_code == 1, result.output
    assert result.stderr.splitlines()[-1] == message
    assert "Traceback" not in result.output
    # The good file before it is imported; nothing of the bad one is.
    assert [r["file_name"] for r in rows(db_path, "SELECT file_name FROM vonage_record_imports")] == (
        ["good.csv"] if not options else [])
    assert {r["import_id"] for r in rows(db_path, "SELECT import_id FROM vonage_records")} <= {1}
    assert len(rows(db_path, "SELECT * FROM vonage_records")) == (2 if not options else 0)


# --- fetch: a real HTTP server answering as GET /v2/reports/records does ---------------------


@pytest.fixture
def vonage_env(monkeypatch):
    def point_at(api, secret=API_SECRET):
        monkeypatch.setenv("VONAGE_API_KEY", "abcd1234")
        monkeypatch.setenv("VONAGE_API_SECRET", secret)
        monkeypatch.setenv("VONAGE_REPORTS_URL", api.url)
    return point_at


def test_fetch_pages_windows_retries_and_imports_as_import_does(runner, db_path, rows, vonage_env):
    # 2.5 days of records, 100 a day; pages of 40; one 429 and one 500 on the way.
    records = day_records(range(250), step=timedelta(minutes=14, seconds=24))
    records[7]["total_price"] = "0.012345678"
    with ReportsAPI(records, page_size=40, failures=[429, 500]) as api:
        vonage_env(api)
        result = runner.invoke(["vonage-records", "fetch", "--db", str(db_path),
                                "--from", "2026-11-01", "--to", "2026-11-03T12:00:00Z"])
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines()[-1] == (
        "fetch MESSAGES: import 1: 250 MESSAGES records, "
        "2026-11-01T00:00:00.000000Z .. 2026-11-03T12:00:00.000000Z")
    statuses = [status for _, _, status in api.requests]
    assert statuses[:2] == [429, 500] and set(statuses[2:]) == {200}
    # Windows of at most 24 h (3 of them), each paged by _links.next: 3 + 3 + 2 pages.
    assert len(statuses) == 2 + 8
    times = [t for t, _, _ in api.requests]
    # At most 5 requests in any second (the server logs when it answers: a few ms of jitter).
    assert min(b - a for a, b in zip(times, times[5:])) >= 0.95
    assert times[1] - times[0] >= 0.99  # Retry-After: 1 honoured
    got, [row] = imported(rows, db_path)
    assert len(got) == 250 and {r["import_id"] for r in got} == {1}
    assert (row["source"], row["file_name"]) == (
        "fetch", "fetch 2026-11-01T00:00:00.000000Z..2026-11-03T12:00:00.000000Z")
    assert [r["price_nano"] for r in got if r["message_id"] == uuid(7)] == [12345678]


def test_fetch_with_bad_credentials_is_one_line_and_imports_nothing(runner, db_path, rows, vonage_env):
    with ReportsAPI(day_records(range(5))) as api:
        vonage_env(api, secret="wrong")
        result = runner.invoke(["vonage-records", "fetch", "--db", str(db_path),
                                "--from", "2026-11-01", "--to", "2026-11-01"])
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1] == (
        "Error: Vonage answered HTTP 401 (Unauthorized: You did not provide correct credentials.); "
        "check VONAGE_API_KEY, VONAGE_API_SECRET and VONAGE_ACCOUNT_ID; nothing imported")
    assert imported(rows, db_path) == ([], [])


def test_fetch_gives_up_on_a_server_that_keeps_failing(runner, db_path, rows, vonage_env, monkeypatch):
    monkeypatch.setattr(vonage_records, "BACKOFF_S", 0.01)
    with ReportsAPI(day_records(range(5)), failures=[503] * 10) as api:
        vonage_env(api)
        result = runner.invoke(["vonage-records", "fetch", "--db", str(db_path),
                                "--from", "2026-11-01", "--to", "2026-11-01"])
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1].startswith("Error: Vonage answered HTTP 503 6 times to http://127.0.0.1:")
    assert len(api.requests) == vonage_records.ATTEMPTS
    assert imported(rows, db_path) == ([], [])


def test_fetch_by_id_lists_the_ids_not_found_and_covers_no_range(runner, db_path, rows, vonage_env):
    with ReportsAPI(day_records(range(5))) as api:
        vonage_env(api)
        result = runner.invoke(["vonage-records", "fetch", "--db", str(db_path),
                                "--id", f"{uuid(1)},{uuid(3)}", "--id", uuid(99)])
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines()[-1] == f"1 of the ids have no record at Vonage: {uuid(99)}"
    [(_, path, status)] = api.requests
    assert status == 200 and f"id={uuid(1)}%2C{uuid(3)}%2C{uuid(99)}" in path
    got, [row] = imported(rows, db_path)
    assert [r["message_id"] for r in got] == [uuid(1), uuid(3)]
    # Looked up by id, the import vouches for no time range: start = end.
    assert row["date_start"] == row["date_end"] == got[0]["date_received"]
    assert row["file_name"] == "fetch 3 ids" and row["row_count"] == 2


def test_config_hides_the_api_secret(runner, monkeypatch):
    monkeypatch.setenv("VONAGE_API_KEY", "abcd1234")
    monkeypatch.setenv("VONAGE_API_SECRET", "hunter2")
    result = runner.invoke(["config"])
    assert "VONAGE_API_KEY=abcd1234" in result.output
    assert "VONAGE_API_SECRET=(set, hidden)" in result.output and "hunter2" not in result.output
    assert "VONAGE_REPORTS_URL=https://api.nexmo.com" in result.output


def test_the_database_takes_writes_while_a_file_is_read(db_path, rows, tmp_path):
    """The rows are checked and staged before the write lock is taken: while a file is read,
    another connection (the receiver's writer) can still commit at once."""
    path = write_zip(tmp_path / "MESSAGES_x.zip", day_records(range(30_000)))
    committed = []
    with closing(sqlite3.connect(str(db_path), timeout=0, isolation_level=None)) as writer, \
            closing(db.connect(str(db_path))) as conn:
        def progress(_read):
            writer.execute("BEGIN IMMEDIATE")  # timeout=0: raises "database is locked" if held
            writer.execute("INSERT INTO receiver_health (id, checked_at) VALUES (1, 'x') "
                           "ON CONFLICT DO UPDATE SET checked_at = excluded.checked_at")
            writer.execute("COMMIT")
            committed.append(_read)

        result = vonage_records.import_file(conn, str(path), progress=progress)
    assert len(committed) > 1 and result.rows == 30_000
    assert rows(db_path, "SELECT count(*) AS n FROM vonage_records") == [{"n": 30_000}]
