"""The one place that maps a validated callback payload to table rows."""

from . import money
from .schemas import STATUS_RANK


def status_event_row(data):
    """A validated Message Status payload -> its ``status_events`` row (without callback id)."""
    to = data.get("to") or {}
    sender = data.get("from_") or {}
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
