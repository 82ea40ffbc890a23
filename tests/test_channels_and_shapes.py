"""One name per channel everywhere (tables and metrics), and the v0.1 shape of Messages API
callbacks: statuses of any Messages channel are stored, inbound messages are classified."""

from datetime import datetime, timedelta, timezone

import pytest

from payloads import new_uuid, status, v1_status
from receiver.schemas import format_timestamp
from test_metrics import delta, scrape


def test_viber_has_one_name_in_tables_and_metrics(post, rows, db_path, client):
    """A Viber status of the Messages API (`viber_service`) and of Dispatch
    (`viber_service_msg`) are one channel in status_events, messages and the lag metric."""
    sent = format_timestamp(datetime.now(timezone.utc) - timedelta(seconds=30))
    before = scrape(client)
    assert post(v1_status(channel="viber_service", timestamp=sent)).status_code == 200
    assert post(status(channel="viber_service_msg", timestamp=sent)).status_code == 200
    after = scrape(client)
    assert delta(before, after, "receiver_callback_lag_seconds_count", kind="message_status",
                 channel="viber_service_msg") == 2
    assert delta(before, after, "receiver_callback_lag_seconds_count", kind="message_status",
                 channel="viber_service") == 0
    assert {r["channel"] for r in rows(db_path, "SELECT channel FROM status_events")} == {"viber_service_msg"}
    assert {r["channel"] for r in rows(db_path, "SELECT channel FROM messages")} == {"viber_service_msg"}


@pytest.mark.parametrize("channel, stored", [("rcs", "rcs"), ("email", "email"),
                                             ("viber_service", "viber_service_msg")])
def test_a_v01_status_of_a_messages_only_channel_is_stored(post, rows, db_path, channel, stored):
    """Any Messages API message may ask for v0.1 webhooks (webhook_version): its statuses come
    with `to`/`from` objects whose `type` is the Messages channel."""
    m = new_uuid()
    body = {"message_uuid": m, "to": {"type": channel, "number": "447700900000"},
            "from": {"type": channel, "id": "Vonage"}, "timestamp": "2026-11-01T10:00:00.000Z",
            "status": "delivered", "workflow": {"workflow_id": "W", "items_number": "1",
                                                "items_total": "1"}}
    response = post(body)
    assert response.status_code == 200, response.get_json()
    [row] = rows(db_path, "SELECT api, channel, to_type, status FROM status_events WHERE message_uuid = ?", m)
    assert row == {"api": "messages", "channel": stored, "to_type": stored, "status": "delivered"}


# A v0.1 inbound SMS as Vonage's Messages v0.1 spec (SmsInbound) and docs show it.
V01_INBOUND = {
    "message_uuid": "aaaaaaaa-bbbb-cccc-dddd-0123456789ab",
    "to": {"type": "sms", "number": "447700900000"},
    "from": {"type": "sms", "number": "447700900001"},
    "timestamp": "2020-01-01T14:00:00.000Z",
    "message": {"content": {"type": "text", "text": "Hello From Vonage!"}},
    "usage": {"currency": "EUR", "price": "0.0333"},
}


@pytest.mark.parametrize("path", ["/webhooks/vonage", "/webhooks/message-status"])
def test_a_v01_inbound_message_is_classified_as_inbound(post, rows, db_path, path):
    response = post(V01_INBOUND, path)
    assert response.status_code == 422
    assert response.get_json()["reason"] == "inbound_message"
    assert "message.content.type" in response.get_json()["errors"]["json"]
    assert rows(db_path, "SELECT reason FROM rejected_callbacks") == [{"reason": "inbound_message"}]
    assert rows(db_path, "SELECT count(*) AS n FROM status_events") == [{"n": 0}]


def test_a_v01_status_with_a_message_field_is_still_a_status(post, rows, db_path):
    body = {**status(new_uuid(), new_uuid(), "delivered", channel="sms"), "message": {"content": {"type": "text"}}}
    assert post(body).status_code == 200
