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
    header, *rows = read_csv(result.stdout)
    assert [(r[header.index("channel")], r[header.index("charged_status")], r[header.index("price")])
            for r in rows] == [
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
    header, *rows = read_csv(result.stdout)
    assert sum(Decimal(r[header.index("total")] or 0) for r in rows) == expected
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
    assert result.exit_code == 1 and "--to" in result.output
    result = runner.invoke(["export", "billing", "--db", str(db_path), "--from", "November",
                            "--to", "2026-11-30"])
    assert result.exit_code == 1 and "is not a date" in result.output


def test_billing_never_adds_currencies_together(client, runner, db_path):
    """A dispatch charged 0.5 EUR and 0.25 USD: every export gives a line and a total per
    currency, never 0.75 'EUR,USD'."""
    d, eur, usd = new_uuid(), new_uuid(), new_uuid()
    post_all(client, [
        status(eur, d, "submitted", channel="sms", price="0.5", currency="EUR",
               timestamp="2026-11-03T09:00:00Z"),
        status(usd, d, "submitted", channel="mms", price="0.25", currency="USD",
               timestamp="2026-11-03T09:01:00Z"),
        final_report(d, [(eur, "sms", "submitted", "0.5")], price="0.5", currency="EUR",
                     timestamp="2026-11-03T09:02:00Z"),
    ])
    for by in ("message", "dispatch", "day"):
        result = export(runner, db_path, "billing", "--from", "2026-11-01", "--to", "2026-11-30",
                        "--by", by)
        header, *lines = read_csv(result.stdout)
        assert sorted((line[header.index("currency")], line[header.index("total" if by != "message" else "price")])
                      for line in lines) == [("EUR", "0.5"), ("USD", "0.25")], by
        assert "total 0.5 EUR, 0.25 USD" in result.stderr, by
        assert "0.75" not in result.stdout + result.stderr and "EUR,USD" not in result.stdout, by
    result = export(runner, db_path, "billing", "--from", "2026-11-01", "--to", "2026-11-30",
                    "--by", "dispatch")
    header, *lines = read_csv(result.stdout)
    by_currency = {line[header.index("currency")]: dict(zip(header, line)) for line in lines}
    assert {c: (r["final_report_total"], r["difference"], r["reason"]) for c, r in by_currency.items()} == {
        "EUR": ("0.5", "0", "messages priced in several currencies"),
        "USD": ("0.5", "", "messages priced in several currencies"),
    }


def test_billing_is_summed_only_in_the_views():
    """One definition of billing: receiver/views.py is the only place that adds up prices;
    export, canned queries and charts read its views (store.py keeps dispatches' own total)."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    places = sorted(
        str(path.relative_to(root))
        for path in [*root.glob("receiver/*.py"), root / "config" / "metadata.yml"]
        if "sum(price_nano" in path.read_text() or "sum(b.price_nano" in path.read_text()
    )
    assert places == ["receiver/store.py", "receiver/views.py"]


def test_billing_by_dispatch_covers_messages_workflows_and_single_messages(client, runner, db_path):
    """A Messages API failover request is one line per currency under its workflow_id; a v1
    message outside any workflow is its own line; neither has a provider total."""
    from payloads import messages_failover, v1_status

    workflow_id, _, bodies = messages_failover(("whatsapp", "sms"))
    single = new_uuid()
    post_all(client, [*bodies, v1_status(single, "submitted", price="0.05", currency="USD",
                                         timestamp="2026-11-02T10:00:00Z")])
    result = export(runner, db_path, "billing", "--from", "2026-11-01", "--to", "2026-11-30",
                    "--by", "dispatch")
    header, *lines = read_csv(result.stdout)
    got = [{k: line[header.index(k)] for k in ("api", "workflow_id", "message_uuid", "total",
                                               "currency", "reason")} for line in lines]
    assert got == [
        {"api": "messages", "workflow_id": workflow_id, "message_uuid": "", "total": "0.0333",
         "currency": "EUR", "reason": "Messages API: Vonage sends no total to compare with"},
        {"api": "messages", "workflow_id": "", "message_uuid": single, "total": "0.05",
         "currency": "USD", "reason": "Messages API: Vonage sends no total to compare with"},
    ]
    assert "total 0.0333 EUR, 0.05 USD" in result.stderr
