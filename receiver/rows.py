"""The one place that maps a validated callback payload to table rows."""

from . import money
from .schemas import STATUS_RANK


def status_event_row(data):
    """A validated Message Status payload -> its ``status_events`` row (without callback id)."""
    to = data.get("to") or {}
    sender = data.get("from") or {}
    error = data.get("error") or {}
    usage = data.get("usage") or {}
    links = data.get("_links") or {}
    parent = links.get("dispatch") or links.get("workflow") or {}
    return {
        "api": "dispatch",
        "message_uuid": data["message_uuid"],
        "dispatch_uuid": parent.get("dispatch_uuid"),
        "channel": to.get("type") or sender.get("type"),
        "status": data["status"],
        "status_rank": STATUS_RANK[data["status"]],
        "timestamp": data["timestamp"],
        "to_type": to.get("type"),
        "to_id": to.get("id"),
        "to_number": to.get("number"),
        "from_type": sender.get("type"),
        "from_id": sender.get("id"),
        "from_number": sender.get("number"),
        "error_code": error.get("code"),
        "error_reason": error.get("reason"),
        "price": usage.get("price"),
        "price_nano": money.to_nano(usage.get("price")),
        "currency": usage.get("currency"),
    }


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


MESSAGE_FIELDS = (
    "message_uuid", "dispatch_uuid", "channel", "workflow_position", "status", "status_rank",
    "status_at", "first_seen_at", "last_seen_at", "submitted_at", "delivered_at", "read_at",
    "rejected_at", "undeliverable_at", "error_code", "error_reason", "price", "price_nano",
    "currency", "price_source", "event_count", "final_report_status", "final_report_price",
    "final_report_at",
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
    )
