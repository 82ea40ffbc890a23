"""Callback bodies for tests and benchmarks: the seed's examples and the field notes' real shapes."""

import copy
import json
import uuid

# The seed document's Message Status example, verbatim.
SEED_STATUS = {
    "message_uuid": "aaaaaaaa-bbbb-cccc-dddd-0123456789ab",
    "to": {"type": "sms", "id": "0123456789012345", "number": "447700900000"},
    "from": {"type": "sms", "id": "0123456789012345", "number": "447700900000"},
    "timestamp": "2020-01-01T14:00:00.000Z",
    "status": "delivered",
    "error": {"code": 1300, "reason": "Not part of the provider network"},
    "usage": {"currency": "EUR", "price": "0.0333"},
    "_links": {
        "workflow": {
            "dispatch_uuid": "aaaaaaaa-bbbb-cccc-dddd-0123456789ab",
            "href": "/workflows/aaaaaaaa-bbbb-cccc-dddd-0123456789ab",
        }
    },
}

# The seed document's Final Report example, verbatim.
SEED_FINAL_REPORT = {
    "dispatch_uuid": "aaaaaaaa-bbbb-cccc-dddd-0123456789ab",
    "template": "failover",
    "status": "completed",
    "timestamp": "2020-01-01T14:00:00.000Z",
    "usage": {"price": "0.02", "currency": "EUR"},
    "_links": {
        "messages": [
            {
                "message_uuid": "aaaaaaaa-bbbb-cccc-dddd-0123456789ab",
                "href": "aaaaaaaa-bbbb-cccc-dddd-0123456789ab",
                "channel": "viber_service_msg",
                "usage": {"currency": "EUR", "price": "0.0333"},
                "status": "submitted",
            }
        ]
    },
}


def new_uuid():
    return str(uuid.uuid4())


def status(message_uuid=None, dispatch_uuid=None, status="delivered", *, channel="whatsapp",
           timestamp="2026-11-01T10:00:00.000Z", price=None, currency="EUR", error=None,
           link="dispatch", **extra):
    """A Message Status body in the shape real traces show (``_links.dispatch`` by default;
    ``link="workflow"`` gives the spec's spelling, ``link=None`` no parent link)."""
    body = {
        "message_uuid": message_uuid or new_uuid(),
        "to": {"type": channel, "number": "447700900001"},
        "from": {"type": channel, "number": "447700900000"},
        "timestamp": timestamp,
        "status": status,
    }
    if channel == "viber_service_msg":
        body["from"] = {"type": channel, "id": "12345"}
    if channel == "messenger":
        body["to"] = {"type": channel, "id": "0123456789012345"}
        body["from"] = {"type": channel, "id": "5432109876543210"}
    if price is not None:
        body["usage"] = {"currency": currency, "price": price}
    if error is not None:
        body["error"] = {"code": error[0], "reason": error[1]}
    if link and dispatch_uuid:
        prefix = "v0.1/dispatch/" if link == "dispatch" else "/workflows/"
        body["_links"] = {link: {"dispatch_uuid": dispatch_uuid, "href": prefix + dispatch_uuid}}
    body.update(extra)
    return body


def final_report(dispatch_uuid=None, messages=(), *, status="completed", price="0.0353",
                 currency="EUR", timestamp="2026-11-01T10:05:00.000Z", **extra):
    """A Final Report body; ``messages`` is a list of (message_uuid, channel, status, price)."""
    body = {
        "dispatch_uuid": dispatch_uuid or new_uuid(),
        "template": "failover",
        "status": status,
        "timestamp": timestamp,
        "usage": {"price": price, "currency": currency},
        "_links": {
            "messages": [
                {
                    "message_uuid": m_uuid,
                    "href": m_uuid,
                    "channel": channel,
                    "usage": {"currency": currency, "price": m_price},
                    "status": m_status,
                }
                for m_uuid, channel, m_status, m_price in messages
            ]
        },
    }
    body.update(extra)
    return body


def failover_workflow(dispatch_uuid=None):
    """A realistic WhatsApp-then-SMS dispatch, in the order Vonage may deliver it:
    the SMS's statuses, the final report, then the late first leg (WhatsApp delivered after).

    Returns (dispatch_uuid, whatsapp_uuid, sms_uuid, [bodies in delivery order]).
    """
    d, wa, sms = dispatch_uuid or new_uuid(), new_uuid(), new_uuid()
    bodies = [
        status(wa, d, "submitted", channel="whatsapp", timestamp="2026-11-01T10:00:00.000Z"),
        status(sms, d, "submitted", channel="sms", timestamp="2026-11-01T10:10:00.100Z",
               price="0.0333"),
        status(sms, d, "delivered", channel="sms", timestamp="2026-11-01T10:10:03.000Z"),
        final_report(d, [(wa, "whatsapp", "submitted", "0.0020"), (sms, "sms", "delivered", "0.0333")],
                     price="0.0353", timestamp="2026-11-01T10:10:03.500Z"),
        status(wa, d, "delivered", channel="whatsapp", timestamp="2026-11-01T10:12:00.000Z",
               price="0.0020"),
        status(wa, d, "read", channel="whatsapp", timestamp="2026-11-01T10:13:00.000Z"),
    ]
    return d, wa, sms, bodies


def dumps(body):
    """The bytes a client would post."""
    return json.dumps(body).encode("utf-8")


def variant(body, **changes):
    """A deep copy of ``body`` with top-level keys changed."""
    copy_ = copy.deepcopy(body)
    copy_.update(changes)
    return copy_


# --- Messages API v1 ------------------------------------------------------------------------

WORKFLOW_ID = "3TcNjguHxr2vcCZ9Ddsnq6tw8yQUpZ9rMHv9QXSxLan5ibMxqSzLdx9"  # the spec's example

# A recipient and a sender of each channel, as the spec's address types have them.
V1_ADDRESSES = {
    "sms": ("447700900000", "447700900001"),
    "mms": ("447700900000", "447700900001"),
    "rcs": ("447700900000", "Vonage"),
    "whatsapp": ("US.13491208655302741918", "447700900001"),
    "messenger": ("0123456789", "9876543210"),
    "viber_service": ("447700900000", "447700900001"),
    "email": ("customer@example.com", "no-reply@example.org"),
}


def v1_status(message_uuid=None, status="delivered", *, channel="sms",
              timestamp="2026-11-01T10:00:00Z", price=None, currency="EUR", workflow=None,
              spelling="spec", error=None, **extra):
    """A Messages API v1 status webhook. ``workflow`` is (workflow_id, leg, legs) of a failover
    leg, spelt as the spec (strings) or, with ``spelling="java"``, as Vonage's Java SDK
    (``id``, ``item_number``, ``total_items``, integers); ``error`` is (title, detail)."""
    to, sender = V1_ADDRESSES[channel]
    body = {"message_uuid": message_uuid or new_uuid(), "to": to, "from": sender,
            "timestamp": timestamp, "status": status, "channel": channel}
    if price is not None:
        body["usage"] = {"currency": currency, "price": price}
    if error is not None:
        title, detail = error
        body["error"] = {"type": f"https://developer.vonage.com/api-errors/messages#{title}",
                         "title": title, "detail": detail,
                         "instance": "bf0ca0bf927b3b52e3cb03217e1a1ddf"}
    if workflow is not None:
        workflow_id, leg, legs = workflow
        body["workflow"] = (
            {"workflow_id": workflow_id, "items_number": str(leg), "items_total": str(legs)}
            if spelling == "spec" else
            {"id": workflow_id, "item_number": leg, "total_items": legs})
    body.update(extra)
    return body


def messages_failover(channels=("rcs", "whatsapp", "sms"), *, delivered=True, workflow_id=None,
                      spelling="spec"):
    """A Messages failover request's callbacks, in the order Vonage would send them: each leg
    but the last submitted then rejected (error 1300 as a string title, or a number with the
    Java spelling), the last leg submitted (SMS priced at submitted) then delivered or
    rejected. Returns (workflow_id, [leg message uuids], [bodies])."""
    workflow_id = workflow_id or f"{WORKFLOW_ID[:40]}{uuid.uuid4().hex[:15]}"
    legs, bodies, minute = len(channels), [], 0
    uuids = [new_uuid() for _ in channels]
    for leg, (channel, m) in enumerate(zip(channels, uuids), start=1):
        last = leg == legs
        price = "0.0333" if channel in ("sms", "mms") else None

        def at(seconds, _minute=minute):
            return f"2026-11-01T10:{_minute:02d}:{seconds:02d}Z"

        common = {"channel": channel, "workflow": (workflow_id, leg, legs), "spelling": spelling}
        bodies.append(v1_status(m, "submitted", timestamp=at(0), price=price, **common))
        if last and delivered:
            bodies.append(v1_status(m, "delivered", timestamp=at(5),
                                    price=None if price or channel in ("rcs", "email") else "0.0100",
                                    **common))
        else:
            title = 1300 if spelling == "java" else "1300"
            bodies.append(v1_status(m, "rejected", timestamp=at(30),
                                    error=(title, "Not part of the provider network"), **common))
        minute += 1
    return workflow_id, uuids, bodies
