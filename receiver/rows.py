"""The one place that maps a validated callback payload to table rows.

``plan`` builds, where the request is, everything storing a callback writes: its ``callbacks``
row and its event rows, as plain data. The writer (store.store_batch) then only runs SQL. The
observations of ``messages`` rows are made from the stored events, by the projection
(store.project), never from a plan.
"""

import re

from . import money
from .schemas import MESSAGE_STATUS, STATUS_RANK, V1, channel_name
from .signatures import UNSIGNED

# The columns of a ``callbacks`` row as a plan carries them, in order.
CALLBACK_COLUMNS = (
    "kind", "api", "sha256", "body", "endpoint", "received_at", "last_received_at",
    "remote_addr", "user_agent", "content_type", "signature_status", "api_key",
    "application_id", "jti", "iat", "clock_skew_s",
)
# The columns of a ``status_events`` row a plan fills (callback_id is added by the writer).
STATUS_EVENT_COLUMNS = (
    "api", "message_uuid", "dispatch_uuid", "channel", "status", "status_rank", "timestamp",
    "to_type", "to_id", "to_number", "from_type", "from_id", "from_number", "error_code",
    "error_reason", "price", "price_nano", "currency", "received_at", "client_ref",
    "workflow_id", "workflow_leg", "workflow_legs", "error_type", "error_title",
    "error_detail", "network_code", "sms_count",
)


def plan(callback, delivery, signature=UNSIGNED):
    """A validated callback and its delivery -> what storing it writes, as plain data:
    ``{"kind", "sha256", "callback": row values, "event"|"report"+"items"}``."""
    sha256 = delivery.sha256
    planned = {
        "kind": callback.kind,
        "sha256": sha256,
        "callback": (
            callback.kind, callback.api, sha256, delivery.body.decode("utf-8"), delivery.endpoint,
            delivery.received_at, delivery.received_at, delivery.remote_addr,
            delivery.user_agent, delivery.content_type, signature.status, signature.api_key,
            signature.application_id, signature.jti, signature.iat, signature.clock_skew_s,
        ),
    }
    if callback.kind == MESSAGE_STATUS:
        event = status_event_row(callback)
        event["received_at"] = delivery.received_at
        planned["event"] = event
    else:
        report, items = final_report_rows(callback.data)
        report["received_at"] = delivery.received_at
        planned["report"], planned["items"] = report, items
    return planned

# A v1 error's `type` ends in its code: ".../api-errors/messages#1000".
ERROR_TYPE_CODE = re.compile(r"#(\d{1,9})\Z")


def status_event_row(callback):
    """A validated message status (either body version) -> its ``status_events`` row (without
    callback id)."""
    data = callback.data
    row = dict.fromkeys(STATUS_EVENT_COLUMNS)
    row.update(_v1_status(data) if callback.version == V1 else _v01_status(data))
    workflow = data.get("workflow") or {}
    usage = data.get("usage") or {}
    row.update(
        api=callback.api,
        message_uuid=data["message_uuid"],
        status=data["status"],
        status_rank=STATUS_RANK[data["status"]],
        timestamp=data["timestamp"],
        client_ref=data.get("client_ref"),
        workflow_id=workflow.get("workflow_id"),
        workflow_leg=workflow.get("items_number"),
        workflow_legs=workflow.get("items_total"),
        price=usage.get("price"),
        price_nano=money.to_nano(usage.get("price")),
        currency=usage.get("currency"),
    )
    return row


def _v01_status(data):
    """The columns of the v0.1 shape (Dispatch, and Messages with webhook_version v0.1)."""
    to = data.get("to") or {}
    sender = data.get("from") or {}
    error = data.get("error") or {}
    parent = (data.get("_links") or {}).get("dispatch") or (data.get("_links") or {}).get("workflow") or {}
    to_type, from_type = channel_name(to.get("type")), channel_name(sender.get("type"))
    return {
        "dispatch_uuid": parent.get("dispatch_uuid"),
        "channel": to_type or from_type,
        "to_type": to_type,
        "to_id": to.get("id"),
        "to_number": to.get("number"),
        "from_type": from_type,
        "from_id": sender.get("id"),
        "from_number": sender.get("number"),
        "error_code": error.get("code"),
        "error_reason": error.get("reason"),
    }


def _v1_status(data):
    """The columns of the Messages API v1 shape: string addresses, top-level channel."""
    channel = channel_name(data["channel"])
    error = data.get("error") or {}
    title = error.get("title") or None
    if title is None and error.get("type"):
        match = ERROR_TYPE_CODE.search(error["type"])
        title = match.group(1) if match else None
    row = {
        "dispatch_uuid": None,
        "channel": channel,
        "to_type": channel,
        "from_type": channel,
        # The error code both APIs share (an integer); the v1 code as sent is error_title.
        "error_code": int(title) if title and title.isascii() and title.isdigit() and len(title) <= 9 else None,
        # The reason both APIs share: Dispatch's error.reason, Messages v1's error.detail.
        "error_reason": error.get("detail"),
        "error_type": error.get("type"),
        "error_title": title,
        "error_detail": error.get("detail"),
        "network_code": (data.get("destination") or {}).get("network_code"),
    }
    sms = data.get("sms") or {}
    row["sms_count"] = sms.get("count_total", sms.get("total_count"))
    for side in ("to", "from"):
        # Phone numbers in *_number, any other address (and Messenger's ids) in *_id, as
        # Dispatch rows have them.
        address = data[side]
        digits = address.isascii() and address.isdigit() and channel != "messenger"
        row[f"{side}_number"] = address if digits else None
        row[f"{side}_id"] = None if digits else address
    return row


def final_report_rows(data):
    """A validated Final Report payload -> its ``final_reports`` row and its message rows."""
    usage = data.get("usage") or {}
    items = (data.get("_links") or {}).get("messages") or []
    report = {
        "dispatch_uuid": data["dispatch_uuid"],
        "template": data.get("template"),
        "status": data["status"],
        "timestamp": data["timestamp"],
        "price": usage.get("price"),
        "price_nano": money.to_nano(usage.get("price")),
        "currency": usage.get("currency"),
        "message_count": len(items),
    }
    messages = []
    for position, item in enumerate(items, start=1):
        item_usage = item.get("usage") or {}
        messages.append({
            "dispatch_uuid": data["dispatch_uuid"],
            "position": position,
            "message_uuid": item["message_uuid"],
            "channel": item.get("channel"),
            "status": item.get("status"),
            "status_rank": STATUS_RANK.get(item.get("status")),
            "price": item_usage.get("price"),
            "price_nano": money.to_nano(item_usage.get("price")),
            "currency": item_usage.get("currency"),
        })
    return report, messages


def _observation(**values):
    row = dict.fromkeys(MESSAGE_FIELDS)
    row.update(values)
    return row


# The columns of a ``messages`` row, in table order; store.py merges observations of these.
MESSAGE_FIELDS = (
    "message_uuid", "dispatch_uuid", "channel", "workflow_position", "status", "status_rank",
    "status_at", "first_seen_at", "last_seen_at", "submitted_at", "delivered_at", "read_at",
    "rejected_at", "undeliverable_at", "error_code", "error_reason", "price", "price_nano",
    "currency", "price_source", "event_count", "final_report_status", "final_report_price",
    "final_report_at", "api", "workflow_id", "workflow_legs", "client_ref", "error_type",
    "error_title", "error_detail", "network_code", "sms_count",
)


def _price(row, source):
    """A row's price fields as an observation makes them: kept only when an amount is known,
    with where it came from."""
    priced = row["price_nano"] is not None
    return {
        "price": row["price"] if priced else None,
        "price_nano": row["price_nano"],
        "currency": row["currency"] if priced else None,
        "price_source": source if priced else None,
    }


def message_from_status(event):
    """A ``status_events`` row -> the observation it makes of its ``messages`` row."""
    return _observation(
        message_uuid=event["message_uuid"],
        dispatch_uuid=event["dispatch_uuid"],
        channel=event["channel"],
        workflow_position=event.get("workflow_leg"),
        status=event["status"],
        status_rank=event["status_rank"],
        status_at=event["timestamp"],
        first_seen_at=event["timestamp"],
        last_seen_at=event["timestamp"],
        **{f"{event['status']}_at": event["timestamp"]},
        error_code=event["error_code"],
        error_reason=event["error_reason"],
        **_price(event, "status"),
        event_count=1,
        api=event.get("api") or "dispatch",
        workflow_id=event.get("workflow_id"),
        workflow_legs=event.get("workflow_legs"),
        client_ref=event.get("client_ref"),
        error_type=event.get("error_type"),
        error_title=event.get("error_title"),
        error_detail=event.get("error_detail"),
        network_code=event.get("network_code"),
        sms_count=event.get("sms_count"),
    )


def message_from_report_item(item, report):
    """A ``final_report_messages`` row (and its report) -> its observation of the message."""
    return _observation(
        message_uuid=item["message_uuid"],
        dispatch_uuid=item["dispatch_uuid"],
        channel=item["channel"],
        workflow_position=item["position"],
        status=item["status"],
        status_rank=item["status_rank"],
        **_price(item, "final_report"),
        event_count=0,
        final_report_status=item["status"],
        final_report_price=item["price"],
        final_report_at=report["timestamp"],
        api="dispatch",
    )
