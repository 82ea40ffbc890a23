"""One definition of each rule, tested by what it means: the same events give the same
outcome whichever API sent them."""

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
import yaml

from payloads import final_report, messages_failover, new_uuid, status, v1_status
from test_datasette import DB_NAME, Client
from test_datasette_v1 import chart_sql

CHARTS = yaml.safe_load((Path(__file__).resolve().parent.parent / "config" / "metadata.yml")
                        .read_text())["plugins"]["datasette-dashboards"]["callbacks"]["charts"]

CHANNELS = ("whatsapp", "sms")

# Each leg's statuses in arrival order (leg 1 then leg 2 of a two-leg failover workflow), and
# what they mean: the workflow's outcome, the channel that reached the person, and for each
# leg seen whether it reached the person (dispatch_steps.delivered).
SCENARIOS = {
    "delivered, then undeliverable": ([["delivered", "undeliverable"], []],
                                      ("delivered", "whatsapp", [1])),
    "delivered, then rejected, on the last leg": ([["rejected"], ["submitted", "delivered", "rejected"]],
                                                  ("delivered", "sms", [0, 1])),
    "read only": ([["read"], []], ("delivered", "whatsapp", [1])),
    "first leg rejected, second delivered": ([["submitted", "rejected"], ["submitted", "delivered"]],
                                             ("delivered", "sms", [0, 1])),
    "submitted only": ([["submitted"], []], ("pending", None, [0])),
    "first leg rejected, second not heard of yet": ([["rejected"], []], ("pending", None, [0])),
}


def post_dispatch(post, legs):
    """The legs as Dispatch status callbacks of one dispatch (no final report)."""
    d = new_uuid()
    for leg, (channel, statuses) in enumerate(zip(CHANNELS, legs), start=1):
        m = new_uuid()
        for second, name in enumerate(statuses):
            assert post(status(m, d, name, channel=channel,
                               timestamp=f"2026-11-01T10:0{leg}:{second:02d}.000Z")).status_code == 200
    return d


def post_messages(post, legs):
    """The same legs as Messages API v1 failover legs of one request."""
    w = f"W-{new_uuid()}"
    for leg, (channel, statuses) in enumerate(zip(CHANNELS, legs), start=1):
        m = new_uuid()
        for second, name in enumerate(statuses):
            assert post(v1_status(m, name, channel=channel, workflow=(w, leg, len(CHANNELS)),
                                  timestamp=f"2026-11-01T10:0{leg}:{second:02d}Z")).status_code == 200
    return w


@pytest.mark.parametrize("legs, expected", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_the_same_events_give_the_same_outcome_for_both_apis(post, rows, db_path, legs, expected):
    """"Reached the person" has one meaning: in `workflows` and `dispatch_steps`, for a
    Dispatch dispatch and a Messages failover request alike."""
    for workflow_id in (post_dispatch(post, legs), post_messages(post, legs)):
        [workflow] = rows(db_path, "SELECT * FROM workflows WHERE workflow_id = ?", workflow_id)
        steps = rows(db_path, "SELECT * FROM dispatch_steps WHERE workflow_id = ? ORDER BY step",
                     workflow_id)
        got = (workflow["outcome"], workflow["delivered_channel"], [s["delivered"] for s in steps])
        assert got == expected, workflow["api"]
        reached = [s["channel"] for s in steps if s["delivered"]]
        assert workflow["delivered_channel"] == (reached[0] if reached else None)


def test_init_db_recomputes_rows_stored_under_the_old_rule(post, rows, db_path, runner):
    """A schema-2 file whose workflow says `pending` for a delivered-then-undeliverable leg is
    recomputed by `receiver init-db`, and `receiver check` then finds nothing to fix."""
    d = post_dispatch(post, [["delivered", "undeliverable"], []])
    with closing(sqlite3.connect(db_path)) as conn, conn:
        conn.execute("UPDATE dispatches SET delivered_channel = NULL")
        conn.execute("UPDATE workflows SET outcome = 'pending', delivered_channel = NULL")
        conn.execute("PRAGMA user_version = 2")
    assert runner.invoke(["init-db", "--db", str(db_path)]).exit_code == 0
    [workflow] = rows(db_path, "SELECT outcome, delivered_channel FROM workflows WHERE workflow_id = ?", d)
    assert workflow == {"outcome": "delivered", "delivered_channel": "whatsapp"}
    result = runner.invoke(["check", "--db", str(db_path)])
    assert result.exit_code == 0, result.output


def test_a_workflow_whose_first_leg_never_arrived_is_flagged_listed_and_counted(post, rows, db_path):
    """Leg 2 of 2 delivered, leg 1 never heard of: the workflow is `incomplete`, listed in
    incomplete_workflows, counted by the dashboard's card, and counts as having failed over;
    a complete workflow is none of these."""
    w = f"W-{new_uuid()}"
    assert post(v1_status(new_uuid(), "delivered", channel="sms", workflow=(w, 2, 2))).status_code == 200
    complete = post_messages(post, [["rejected"], ["delivered"]])
    [flags] = rows(db_path, "SELECT incomplete, outcome, legs, legs_seen FROM workflows WHERE workflow_id = ?", w)
    assert flags == {"incomplete": 1, "outcome": "delivered", "legs": 2, "legs_seen": 1}
    assert rows(db_path, "SELECT incomplete FROM workflows WHERE workflow_id = ?", complete) == [{"incomplete": 0}]
    listed = rows(db_path, "SELECT workflow_id, legs_heard_of, channels FROM incomplete_workflows")
    assert listed == [{"workflow_id": w, "legs_heard_of": "2", "channels": "sms"}]
    steps = rows(db_path, "SELECT step, channel FROM dispatch_steps WHERE workflow_id = ?", w)
    assert steps == [{"step": 2, "channel": "sms"}]

    assert rows(db_path, chart_sql(CHARTS["incomplete-workflows"]["query"], {})) == [{"incomplete": 1}]
    assert rows(db_path, chart_sql(CHARTS["failover-overall"]["query"], {})) == [{"failover": "100.0 %"}]


def test_the_dashboard_counts_rejected_callbacks(post, rows, db_path):
    assert post(b"{not json").status_code == 400
    assert post({"message_uuid": "x"}).status_code == 422
    assert rows(db_path, chart_sql(CHARTS["rejected-callbacks"]["query"], {})) == [{"rejected": 2}]


def test_why_a_messages_message_failed_is_where_support_looks(post, db_path, monkeypatch):
    """The reason Vonage gave shows beside the code for both APIs: in the timeline, the
    message's history and the failed-workflows list."""
    w, legs, bodies = messages_failover(("whatsapp", "sms"), delivered=False)
    d = new_uuid()
    for body in [*bodies, status(new_uuid(), d, "rejected", channel="sms", error=(1330, "Delivery failed")),
                 final_report(d, [], status="error")]:
        assert post(body).status_code == 200
    monkeypatch.delenv("DATASETTE_PASSWORD_HASH", raising=False)
    client = Client.of_copy(db_path)
    try:
        timeline = client.query("dispatch_timeline", dispatch_uuid=w)
        assert {(r["error_code"], r["error_reason"]) for r in timeline if r["status"] == "rejected"} == {
            (1300, "Not part of the provider network")}
        history = client.query("message_history", message_uuid=legs[-1])
        assert [(r["error_code"], r["error_reason"]) for r in history if r["status"] == "rejected"] == [
            (1300, "Not part of the provider network")]
        failed = client.json(f"/{DB_NAME}/failed_workflows.json", _shape="objects")["rows"]
        assert {(r["api"], r["last_leg_channel"], r["error_code"], r["error_reason"]) for r in failed} == {
            ("messages", "sms", 1300, "Not part of the provider network"),
            ("dispatch", "sms", 1330, "Delivery failed")}
    finally:
        client.close()


def test_init_db_moves_a_stored_messages_error_text_into_error_reason(post, rows, db_path, runner):
    m = new_uuid()
    assert post(v1_status(m, "rejected", error=("1300", "Not part of the provider network"))).status_code == 200
    with closing(sqlite3.connect(db_path)) as conn, conn:
        conn.execute("UPDATE status_events SET error_reason = NULL")
        conn.execute("UPDATE messages SET error_reason = NULL")
        conn.execute("PRAGMA user_version = 2")
    assert runner.invoke(["init-db", "--db", str(db_path)]).exit_code == 0
    for table in ("status_events", "messages"):
        assert rows(db_path, f"SELECT error_reason FROM {table}") == [
            {"error_reason": "Not part of the provider network"}], table
    assert runner.invoke(["check", "--db", str(db_path)]).exit_code == 0
