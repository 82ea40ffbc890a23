"""`receiver export billing|events`: CSV for finance, raw callbacks for audits."""

import csv
import io
import json
from decimal import Decimal

from payloads import dumps, failover_workflow, final_report, new_uuid, status
from receiver import simulate


def post_all(client, bodies):
    for body in bodies:
        raw = body if isinstance(body, bytes) else dumps(body)
        assert client.post("/webhooks/vonage", data=raw, content_type="application/json").status_code == 200


def export(runner, db_path, *args):
    result = runner.invoke(["export", *args, "--db", str(db_path)])
    assert result.exit_code == 0, result.output
    return result


def read_csv(text):
    return list(csv.reader(io.StringIO(text, newline="")))


def test_billing_by_message_is_rfc4180_with_exact_totals(client, runner, db_path):
    d = new_uuid()
    post_all(client, [status(new_uuid(), d, "submitted", channel="sms", price="0.1",
                             timestamp="2026-11-03T09:00:00Z"),
                      status(new_uuid(), d, "submitted", channel="sms", price="0.2",
                             timestamp="2026-11-03T10:00:00Z"),
                      status(new_uuid(), d, "delivered", channel="whatsapp", price="0.0147",
                             timestamp="2026-11-04T10:00:00Z"),
                      # outside the period: not exported
                      status(new_uuid(), d, "submitted", channel="sms", price="9",
                             timestamp="2026-12-01T00:00:00Z"),
                      # WhatsApp is not charged at submitted
                      status(new_uuid(), d, "submitted", channel="whatsapp", price="5",
                             timestamp="2026-11-05T00:00:00Z")])
    result = export(runner, db_path, "billing", "--from", "2026-11-01", "--to", "2026-11-30")
    assert result.stdout_bytes.endswith(b"\r\n")  # RFC 4180 line ends
    assert result.stdout_bytes.count(b"\r\n") == 4 and b"\n" not in result.stdout_bytes.replace(b"\r\n", b"")
    rows = read_csv(result.stdout)
    assert rows[0] == ["charged_at", "dispatch_uuid", "message_uuid", "channel", "charged_status",
                       "price", "currency", "price_source"]
    assert [(r[3], r[4], r[5]) for r in rows[1:]] == [
        ("sms", "submitted", "0.1"), ("sms", "submitted", "0.2"), ("whatsapp", "delivered", "0.0147")]
    assert "total 0.3147 EUR" in result.stderr  # 0.1 + 0.2 is 0.3, exactly


def test_billing_totals_match_an_independent_decimal_sum(client, runner, db_path):
    """Realistic traffic: the CSV's per-day totals add up, in Decimal, to the prices of the
    charged status callbacks computed here from the bodies posted."""
    expected = Decimal(0)
    for _, deliveries in simulate.generate(150, seed=11, days=10):
        bodies = [d.body for d in deliveries]
        post_all(client, bodies)
    # Independent: charged status bodies (SMS at submitted, others at delivered), once each.
    seen = set()
    for _, deliveries in simulate.generate(150, seed=11, days=10):
        for delivery in deliveries:
            body = json.loads(delivery.body)
            if "message_uuid" not in body or "usage" not in body or delivery.body in seen:
                continue
            seen.add(delivery.body)
            expected += Decimal(body["usage"]["price"])
    result = export(runner, db_path, "billing", "--from", "2000-01-01", "--to", "2100-12-31",
                    "--by", "day")
    rows = read_csv(result.stdout)
    assert rows[0] == ["day", "channel", "currency", "messages", "total"]
    assert sum(Decimal(r[4]) for r in rows[1:]) == expected
    assert f"total {expected.normalize():f} EUR" in result.stderr


def test_billing_by_dispatch_shows_the_final_report_difference(client, runner, db_path):
    d, wa, sms, bodies = failover_workflow()
    report = next(b for b in bodies if "template" in b)
    report["usage"]["price"] = "0.0333"  # missed the late WhatsApp leg
    post_all(client, bodies)
    result = export(runner, db_path, "billing", "--from", "2026-11-01", "--to", "2026-11-01",
                    "--by", "dispatch")
    header, row = read_csv(result.stdout)
    line = dict(zip(header, row))
    assert (line["total"], line["final_report_total"], line["difference"], line["reason"]) == \
        ("0.0353", "0.0333", "-0.002", "totals differ")


def test_export_events_keeps_the_bodies_byte_exact(client, runner, db_path, tmp_path):
    bodies = [b'{"message_uuid": "m-1", "status": "read",\n "timestamp": "2026-11-02T00:00:00Z", "x": "\\u00e9"}',
              dumps(final_report(new_uuid(), [], timestamp="2026-11-02T00:00:01Z"))]
    post_all(client, bodies)
    out = tmp_path / "audit.jsonl"
    export(runner, db_path, "events", "--from", "2000-01-01", "--to", "2100-01-01", "-o", str(out))
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["body"].encode() for line in lines] == bodies
    assert [line["kind"] for line in lines] == ["message_status", "final_report"]
    result = export(runner, db_path, "events", "--from", "2000-01-01", "--to", "2100-01-01",
                    "--format", "csv")
    rows = read_csv(result.stdout)
    assert [r[-1].encode() for r in rows[1:]] == bodies


def test_export_needs_a_period(runner, db_path):
    result = runner.invoke(["export", "billing", "--db", str(db_path), "--from", "2026-11-01"])
    assert result.exit_code == 2 and "--to" in result.output
    result = runner.invoke(["export", "billing", "--db", str(db_path), "--from", "November",
                            "--to", "2026-11-30"])
    assert result.exit_code == 2 and "is not a date" in result.output
