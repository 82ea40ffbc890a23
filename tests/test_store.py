"""The derived ``messages`` and ``dispatches`` rows: the same whatever order callbacks arrive in."""

import itertools
import random
from decimal import Decimal

import pytest

from payloads import dumps, failover_workflow, final_report, new_uuid, status
from receiver import db, store
from receiver.callbacks import parse

T0 = "2026-11-01T10:00:00.000Z"
T1 = "2026-11-01T10:01:00.000Z"
T2 = "2026-11-01T10:02:00.000Z"
T3 = "2026-11-01T10:03:00.000Z"


def stored(post, *bodies):
    """Post each body; every one must be stored."""
    for body in bodies:
        response = post(body)
        assert response.status_code == 200, response.get_json()


def message(rows, db_path, message_uuid):
    [row] = rows(db_path, "SELECT * FROM messages WHERE message_uuid = ?", message_uuid)
    return row


def dispatch(rows, db_path, dispatch_uuid):
    [row] = rows(db_path, "SELECT * FROM dispatches WHERE dispatch_uuid = ?", dispatch_uuid)
    return row


# --- a message's status is its highest-ranked one -----------------------------------------


@pytest.mark.parametrize(
    "events, expected",
    [
        ([("read", T2), ("delivered", T1)], "read"),  # read arrives before delivered
        ([("read", T1), ("delivered", T2)], "read"),  # a late delivered, timestamped after read
        ([("delivered", T1), ("submitted", T0)], "delivered"),
        ([("submitted", T0), ("read", T2), ("delivered", T1)], "read"),
        ([("rejected", T1), ("delivered", T2)], "rejected"),
        ([("delivered", T1), ("rejected", T2)], "rejected"),
        ([("undeliverable", T1), ("read", T2)], "undeliverable"),
        ([("read", T1), ("undeliverable", T2)], "undeliverable"),
        ([("undeliverable", T1), ("rejected", T2)], "rejected"),
    ],
)
def test_status_is_the_highest_rank_whatever_the_arrival_order(post, rows, db_path, events, expected):
    m, d = new_uuid(), new_uuid()
    stored(post, *(status(m, d, name, timestamp=ts) for name, ts in events))
    row = message(rows, db_path, m)
    assert row["status"] == expected
    assert row["event_count"] == len(events)
    for name, ts in events:
        assert row[f"{name}_at"] == ts.replace(".000Z", ".000000Z")
    # Every event stays in the log, including those that did not move the status.
    assert sorted(r["status"] for r in rows(db_path, "SELECT status FROM status_events WHERE message_uuid = ?", m)) == sorted(
        name for name, _ in events)


def test_a_failure_keeps_its_error(post, rows, db_path):
    m, d = new_uuid(), new_uuid()
    stored(post, status(m, d, "rejected", channel="sms", timestamp=T1, error=(1330, "Delivery failed")),
           status(m, d, "delivered", channel="sms", timestamp=T2))
    row = message(rows, db_path, m)
    assert (row["status"], row["error_code"], row["error_reason"]) == ("rejected", 1330, "Delivery failed")
    assert (row["first_seen_at"], row["last_seen_at"]) == ("2026-11-01T10:01:00.000000Z", "2026-11-01T10:02:00.000000Z")


# --- the failover workflow in every order --------------------------------------------------


def normalised(row, names):
    """``row`` with the uuids replaced by stable names, so rows of different runs compare."""
    return {k: names.get(v, v) if isinstance(v, str) else v for k, v in row.items()}


def derived_rows(query, d, wa, sms):
    names = {d: "D", wa: "WA", sms: "SMS"}
    return (
        [normalised(r, names) for r in query("SELECT * FROM messages WHERE dispatch_uuid = ? ORDER BY workflow_position", d)],
        [normalised(r, names) for r in query("SELECT * FROM dispatches WHERE dispatch_uuid = ?", d)],
        [normalised(r, names) for r in query("SELECT * FROM workflows WHERE workflow_id = ?", d)],
    )


# What a Dispatch message has in the columns Messages API v1 added.
DISPATCH_MESSAGE = {
    "api": "dispatch", "workflow_id": None, "workflow_legs": None, "client_ref": None,
    "error_type": None, "error_title": None, "error_detail": None, "network_code": None,
    "sms_count": None,
}


EXPECTED_MESSAGES = [
    {
        "message_uuid": "WA", "dispatch_uuid": "D", "channel": "whatsapp", "workflow_position": 1,
        "status": "read", "status_rank": 3, "status_at": "2026-11-01T10:13:00.000000Z",
        "first_seen_at": "2026-11-01T10:00:00.000000Z", "last_seen_at": "2026-11-01T10:13:00.000000Z",
        "submitted_at": "2026-11-01T10:00:00.000000Z", "delivered_at": "2026-11-01T10:12:00.000000Z",
        "read_at": "2026-11-01T10:13:00.000000Z", "rejected_at": None, "undeliverable_at": None,
        "error_code": None, "error_reason": None,
        "price": "0.0020", "price_nano": 2_000_000, "currency": "EUR", "price_source": "status",
        "event_count": 3, "final_report_status": "submitted", "final_report_price": "0.0020",
        "final_report_at": "2026-11-01T10:10:03.500000Z", **DISPATCH_MESSAGE,
    },
    {
        "message_uuid": "SMS", "dispatch_uuid": "D", "channel": "sms", "workflow_position": 2,
        "status": "delivered", "status_rank": 2, "status_at": "2026-11-01T10:10:03.000000Z",
        "first_seen_at": "2026-11-01T10:10:00.100000Z", "last_seen_at": "2026-11-01T10:10:03.000000Z",
        "submitted_at": "2026-11-01T10:10:00.100000Z", "delivered_at": "2026-11-01T10:10:03.000000Z",
        "read_at": None, "rejected_at": None, "undeliverable_at": None,
        "error_code": None, "error_reason": None,
        "price": "0.0333", "price_nano": 33_300_000, "currency": "EUR", "price_source": "status",
        "event_count": 2, "final_report_status": "delivered", "final_report_price": "0.0333",
        "final_report_at": "2026-11-01T10:10:03.500000Z", **DISPATCH_MESSAGE,
    },
]

EXPECTED_DISPATCH = [
    {
        "dispatch_uuid": "D",
        "first_seen_at": "2026-11-01T10:00:00.000000Z", "last_seen_at": "2026-11-01T10:13:00.000000Z",
        "final_status": "completed", "final_timestamp": "2026-11-01T10:10:03.500000Z",
        "final_price": "0.0353", "final_price_nano": 35_300_000, "final_currency": "EUR",
        "final_report_count": 1, "message_count": 2,
        "channels": "whatsapp,sms",  # workflow order, not arrival order
        "delivered_channel": "sms",  # the SMS was delivered first; WhatsApp only after failover
        "messages_price": "0.0353", "messages_price_nano": 35_300_000, "messages_currency": "EUR",
    }
]

# The same dispatch as a row of `workflows`, the table of failover workflows of either API.
EXPECTED_WORKFLOW = [
    {
        "workflow_id": "D", "api": "dispatch", "legs": 2, "legs_seen": 2,
        "channels": "whatsapp,sms", "delivered_channel": "sms", "outcome": "delivered",
        "price": "0.0353", "price_nano": 35_300_000, "currency": "EUR",
        "first_seen_at": "2026-11-01T10:00:00.000000Z", "last_seen_at": "2026-11-01T10:13:00.000000Z",
        "incomplete": 0,
    }
]
EXPECTED = (EXPECTED_MESSAGES, EXPECTED_DISPATCH, EXPECTED_WORKFLOW)


def test_the_failover_workflow_gives_the_expected_rows(post, rows, db_path):
    d, wa, sms, bodies = failover_workflow()
    stored(post, *bodies)
    query = lambda sql, *p: rows(db_path, sql, *p)  # noqa: E731
    assert derived_rows(query, d, wa, sms) == EXPECTED
    assert rows(db_path, "SELECT count(*) AS n FROM status_events WHERE dispatch_uuid = ?", d) == [{"n": 5}]


def without_links(bodies):
    """The statuses without their parent link: only the final report ties them to the dispatch."""
    return [{k: v for k, v in body.items() if k != "_links" or "messages" in v} for body in bodies]


@pytest.mark.parametrize("links", ["linked", "linkless"])
def test_every_arrival_order_of_the_failover_workflow_gives_the_same_rows(tmp_path, links):
    """All 720 orders of its six callbacks, through parse and the store (one dispatch each)."""
    path = str(tmp_path / "orders.db")
    db.init_db(path)
    conn = db.connect(path, synchronous="OFF")
    query = lambda sql, *p: [dict(zip([c[0] for c in cur.description], r)) for cur in [conn.execute(sql, p)] for r in cur]  # noqa: E731
    differing = []
    for order in itertools.permutations(range(6)):
        d, wa, sms, bodies = failover_workflow()
        if links == "linkless":
            bodies = without_links(bodies)
        with store.transaction(conn):
            for i in order:
                body = dumps(bodies[i])
                store.store_callback(conn, parse(body), store.Delivery(body, "/webhooks/vonage", store.utcnow()))
        if derived_rows(query, d, wa, sms) != EXPECTED:
            differing.append(order)
    conn.close()
    assert differing == []


@pytest.mark.parametrize("order", random.Random(20261101).sample(list(itertools.permutations(range(6))), 30))
def test_arrival_orders_through_http_give_the_same_rows(post, rows, db_path, order):
    """A fixed sample of orders through the real endpoint, each on a fresh database."""
    d, wa, sms, bodies = failover_workflow()
    stored(post, *(bodies[i] for i in order))
    query = lambda sql, *p: rows(db_path, sql, *p)  # noqa: E731
    assert derived_rows(query, d, wa, sms) == EXPECTED


@pytest.mark.parametrize("report_first", [True, False])
def test_final_report_before_or_after_the_statuses(post, rows, db_path, report_first):
    d, wa, sms, bodies = failover_workflow()
    report, statuses = bodies[3], bodies[:3] + bodies[4:]
    stored(post, *([report] + statuses if report_first else statuses + [report]))
    query = lambda sql, *p: rows(db_path, sql, *p)  # noqa: E731
    assert derived_rows(query, d, wa, sms) == EXPECTED


def test_a_partial_workflow_shows_what_has_arrived(post, rows, db_path):
    d, wa, sms, bodies = failover_workflow()
    stored(post, bodies[0], bodies[1])  # WhatsApp submitted, SMS submitted (priced)
    row = dispatch(rows, db_path, d)
    assert (row["final_status"], row["final_report_count"], row["message_count"]) == (None, 0, 2)
    assert row["channels"] == "whatsapp,sms"  # by first seen while no report gives positions
    assert row["delivered_channel"] is None
    assert (row["messages_price"], row["messages_price_nano"]) == ("0.0333", 33_300_000)


# --- money ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prices, total",
    [
        (["0.0020", "0.0333"], "0.0353"),
        (["0.1", "0.2"], "0.3"),  # 0.30000000000000004 in binary floating point
        (["0.5", "0.5"], "1"),
        (["10", "0"], "10"),
        (["0.000000001", "99999"], "99999.000000001"),
        (["0", "0"], "0"),
        (["0.0333"], "0.0333"),
    ],
)
def test_messages_price_is_an_exact_decimal_sum(post, rows, db_path, prices, total):
    d = new_uuid()
    stored(post, *(status(new_uuid(), d, "delivered", price=p) for p in prices))
    row = dispatch(rows, db_path, d)
    assert row["messages_price"] == total
    assert row["messages_price_nano"] == sum(int(Decimal(p).scaleb(9)) for p in prices)
    assert row["messages_currency"] == "EUR"


def test_prices_are_kept_as_the_text_sent(post, rows, db_path):
    d, m = new_uuid(), new_uuid()
    stored(post, status(m, d, "submitted", channel="sms", price="0.03330"),
           final_report(d, [(m, "sms", "delivered", "0.0333")], price="0.0200"))
    assert rows(db_path, "SELECT price, typeof(price) AS type, price_nano FROM status_events") == [
        {"price": "0.03330", "type": "text", "price_nano": 33_300_000}]
    row = dispatch(rows, db_path, d)
    assert (row["final_price"], row["final_price_nano"]) == ("0.0200", 20_000_000)
    assert rows(db_path, "SELECT price, typeof(price) AS type FROM final_reports") == [
        {"price": "0.0200", "type": "text"}]
    assert message(rows, db_path, m)["final_report_price"] == "0.0333"


def test_a_status_price_wins_over_the_final_reports(post, rows, db_path):
    d, m = new_uuid(), new_uuid()
    report = final_report(d, [(m, "whatsapp", "submitted", "0.0010")], price="0.0010")
    stored(post, report)
    assert (message(rows, db_path, m)["price"], message(rows, db_path, m)["price_source"]) == ("0.0010", "final_report")
    stored(post, status(m, d, "delivered", price="0.0020"))
    row = message(rows, db_path, m)
    assert (row["price"], row["price_source"], row["final_report_price"]) == ("0.0020", "status", "0.0010")
    row = dispatch(rows, db_path, d)
    assert (row["messages_price"], row["messages_price_nano"]) == ("0.002", 2_000_000)  # the sum, shortest text


# --- links and final reports --------------------------------------------------------------


@pytest.mark.parametrize("report_first", [False, True])
def test_a_status_without_links_gets_its_dispatch_from_the_final_report(post, rows, db_path, report_first):
    d, m = new_uuid(), new_uuid()
    linkless = status(m, None, "delivered", channel="sms", price="0.0333")
    report = final_report(d, [(m, "sms", "delivered", "0.0333")], price="0.0333")
    if not report_first:
        stored(post, linkless)
        assert message(rows, db_path, m)["dispatch_uuid"] is None
        assert rows(db_path, "SELECT count(*) AS n FROM dispatches") == [{"n": 0}]
    stored(post, report)
    if report_first:
        stored(post, linkless)
    assert message(rows, db_path, m)["dispatch_uuid"] == d
    row = dispatch(rows, db_path, d)
    assert (row["message_count"], row["channels"], row["delivered_channel"], row["messages_price"]) == (
        1, "sms", "sms", "0.0333")
    # The event itself stays as Vonage sent it.
    assert rows(db_path, "SELECT dispatch_uuid FROM status_events") == [{"dispatch_uuid": None}]


@pytest.mark.parametrize("link", ["workflow", "dispatch"])
def test_both_link_spellings_name_the_dispatch(post, rows, db_path, link):
    d, m = new_uuid(), new_uuid()
    stored(post, status(m, d, link=link))
    assert message(rows, db_path, m)["dispatch_uuid"] == d
    assert dispatch(rows, db_path, d)["message_count"] == 1


def test_the_misspelt_viber_channel_is_stored_normalised(post, rows, db_path):
    d, m = new_uuid(), new_uuid()
    report = final_report(d, [(m, "viber_sevice_msg", "delivered", "0.01")])
    response = post(report)
    assert response.status_code == 200
    assert rows(db_path, "SELECT channel FROM final_report_messages") == [{"channel": "viber_service_msg"}]
    assert message(rows, db_path, m)["channel"] == "viber_service_msg"
    assert dispatch(rows, db_path, d)["channels"] == "viber_service_msg"
    # ... while the raw callback keeps what Vonage sent.
    [row] = rows(db_path, "SELECT body FROM callbacks")
    assert '"viber_sevice_msg"' in row["body"]


@pytest.mark.parametrize("newest_first", [False, True])
def test_the_latest_final_report_wins_whatever_the_arrival_order(post, rows, db_path, newest_first):
    d, m = new_uuid(), new_uuid()
    older = final_report(d, [(m, "sms", "submitted", "0.0333")], status="error", price="0.0333",
                         timestamp="2026-11-01T10:05:00Z")
    newer = final_report(d, [(m, "sms", "delivered", "0.0333")], status="completed", price="0.0333",
                         timestamp="2026-11-01T10:06:00Z")
    stored(post, *([newer, older] if newest_first else [older, newer]))
    row = dispatch(rows, db_path, d)
    assert (row["final_status"], row["final_timestamp"], row["final_report_count"]) == (
        "completed", "2026-11-01T10:06:00.000000Z", 2)
    assert message(rows, db_path, m)["final_report_status"] == "delivered"


def test_every_event_stays_in_status_events(post, rows, db_path):
    d, wa, sms, bodies = failover_workflow()
    stored(post, *reversed(bodies))
    stored(post, bodies[0])  # a retry: counted, not a new event
    events = rows(db_path, "SELECT message_uuid, status FROM status_events ORDER BY timestamp")
    assert [(e["message_uuid"], e["status"]) for e in events] == [
        (wa, "submitted"), (sms, "submitted"), (sms, "delivered"), (wa, "delivered"), (wa, "read")]
    assert rows(db_path, "SELECT count(*) AS n FROM final_reports") == [{"n": 1}]
    assert rows(db_path, "SELECT count(*) AS n, sum(delivery_count) AS deliveries FROM callbacks") == [
        {"n": 6, "deliveries": 7}]


def test_dispatches_do_not_mix(post, rows, db_path):
    first, second = failover_workflow(), failover_workflow()
    stored(post, *first[3], *second[3])
    for d, wa, sms, _ in (first, second):
        assert dispatch(rows, db_path, d)["message_count"] == 2
        assert {r["message_uuid"] for r in rows(db_path, "SELECT message_uuid FROM messages WHERE dispatch_uuid = ?", d)} == {wa, sms}


def test_first_seen_is_the_earliest_of_all_final_reports(post, rows, db_path):
    d, m = new_uuid(), new_uuid()
    stored(post, final_report(d, [(m, "sms", "delivered", "0.01")], timestamp="2026-11-01T10:05:00Z"),
           final_report(d, [(m, "sms", "delivered", "0.01")], timestamp="2026-11-01T10:06:00Z"))
    row = dispatch(rows, db_path, d)
    assert row["final_report_count"] == 2
    assert (row["first_seen_at"], row["last_seen_at"]) == (
        "2026-11-01T10:05:00.000000Z", "2026-11-01T10:06:00.000000Z")


def reconciliation(rows, db_path, dispatch_uuid):
    [row] = rows(db_path, "SELECT * FROM billing_reconciliation WHERE dispatch_uuid = ?", dispatch_uuid)
    return row


def test_prices_in_different_currencies_are_not_added_up(post, rows, db_path):
    d = new_uuid()
    stored(post, status(new_uuid(), d, "delivered", price="0.01", currency="EUR"),
           status(new_uuid(), d, "delivered", price="0.02", currency="USD"))
    [dispatch] = rows(db_path, "SELECT messages_price, messages_currency FROM dispatches")
    assert dispatch["messages_price"] is None
    assert sorted(dispatch["messages_currency"].split(",")) == ["EUR", "USD"]
    stored(post, final_report(d, [], price="0.03", currency="EUR"))
    assert reconciliation(rows, db_path, d)["reason"] == "messages priced in several currencies"


def test_a_currency_mismatch_is_not_reconciled_even_when_amounts_match(post, rows, db_path):
    d, m = new_uuid(), new_uuid()
    stored(post, status(m, d, "submitted", channel="sms", price="0.0333", currency="USD"),
           final_report(d, [(m, "sms", "submitted", "0.0333")], price="0.0333", currency="EUR"))
    assert reconciliation(rows, db_path, d)["reason"] == "currencies differ"


def test_a_late_status_without_a_charge_is_not_blamed_as_a_late_charge(post, rows, db_path):
    """The SMS is charged at submitted (before the report); its later delivered carries no
    price, so a differing total is just 'totals differ'."""
    d, m = new_uuid(), new_uuid()
    stored(post,
           status(m, d, "submitted", channel="sms", price="0.0333", timestamp="2026-11-01T10:00:00Z"),
           final_report(d, [(m, "sms", "submitted", "0.0333")], price="0.05",
                        timestamp="2026-11-01T10:00:05Z"),
           status(m, d, "delivered", channel="sms", timestamp="2026-11-01T10:00:10Z"))
    row = reconciliation(rows, db_path, d)
    assert (row["reason"], row["difference"]) == ("totals differ", "0.0167")


def test_a_first_leg_charged_after_the_final_report_is_named(post, rows, db_path):
    d, wa, sms, bodies = failover_workflow()
    report = next(b for b in bodies if "template" in b)
    report["usage"]["price"] = "0.0333"  # the report missed the late WhatsApp charge
    stored(post, *bodies)
    row = reconciliation(rows, db_path, d)
    assert (row["reason"], row["difference"]) == ("a message was charged after the final report", "-0.002")


# --- set-based batches (store.store_batch, the writer's group commit) ---------------------


def _plans(bodies, received_at="2026-11-01T12:00:00.000000Z"):
    from receiver import rows

    return [rows.plan(parse(dumps(b)), store.Delivery(dumps(b), "/webhooks/vonage", received_at)) for b in bodies]


def _everything(conn):
    tables = ("messages", "dispatches", "workflows", "status_events", "final_report_messages", "callbacks")
    return {t: sorted(map(tuple, conn.execute(f"SELECT * FROM {t}").fetchall()), key=repr) for t in tables
            if t not in ("status_events", "final_report_messages", "callbacks")} | {
        "events": sorted(map(tuple, conn.execute(
            "SELECT message_uuid, status, timestamp FROM status_events").fetchall())),
        "deliveries": sorted(conn.execute("SELECT sha256, delivery_count FROM callbacks").fetchall()),
    }


def test_one_batch_stores_what_one_callback_at_a_time_stores(tmp_path):
    """Dispatch and Messages workflows, repeats inside the batch and of earlier bodies: the
    set-based batch gives the same rows and the same answers as storing one by one."""
    from payloads import messages_failover

    _, _, _, dispatch = failover_workflow()
    _, _, messages = messages_failover(("rcs", "whatsapp", "sms"))
    bodies = dispatch + messages
    bodies = bodies + [bodies[0], bodies[3], messages[1]]  # Vonage's retries, same bytes
    random.Random(5).shuffle(bodies)
    results = {}
    for way in ("one_by_one", "batch"):
        path = str(tmp_path / f"{way}.db")
        db.init_db(path)
        conn = db.connect(path, synchronous="OFF")
        plans = _plans(bodies)
        with store.transaction(conn):
            store.store_batch(conn, plans[:2])  # stored before the batch
        with store.transaction(conn):
            if way == "batch":
                answers = store.store_batch(conn, plans[2:] + plans[:1])
            else:
                answers = [store.store_batch(conn, [p])[0] for p in plans[2:] + plans[:1]]
        results[way] = ([(a.callback_id, a.delivery_count, a.kind) for a in answers], _everything(conn))
        assert store.derived_differences(conn) == {"messages": 0, "dispatches": 0, "workflows": 0}
        conn.close()
    assert results["batch"] == results["one_by_one"]
    counts = [count for _, count, _ in results["batch"][0]]
    assert counts.count(2) == 4 and max(counts) == 2  # three retries and the repeat of plans[0]


def test_a_bad_write_in_a_group_commit_fails_alone(db_path, rows):
    """The writer stores a batch together; one write that fails (here a plan the store cannot
    take) fails alone with WriteFailed, and its batch-mates are committed."""
    from receiver.config import load_settings
    from receiver.writer import GroupCommitWriter, WriteFailed, _Pending

    plans = _plans([status(new_uuid(), new_uuid(), "delivered") for _ in range(5)])
    plans[2]["event"]["message_uuid"] = None  # status_events.message_uuid is NOT NULL
    writer = GroupCommitWriter(load_settings(db_path=str(db_path)))
    batch = [_Pending.of("store_planned", (p,), {}) for p in plans]
    writer.commit_batch(batch)
    writer.close()
    assert isinstance(batch[2].error, WriteFailed)
    assert [p.error for i, p in enumerate(batch) if i != 2] == [None] * 4
    assert rows(db_path, "SELECT count(*) AS n FROM status_events") == [{"n": 4}]
