"""A known event store for the Datasette tests, filled through the receiver's own endpoint.

Every row comes from a callback body posted to /webhooks/vonage through the Flask test client,
exactly as Vonage would post it; nothing is inserted by hand. The scenario (March 2025, plus
two dispatches relative to the current time) is described dispatch by dispatch below, and the
tests derive what each canned query must answer from that description.
"""

import copy
import json
import uuid
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone

from payloads import final_report, status

from receiver import create_app
from receiver.db import init_db

NAMESPACE = uuid.UUID("6f1d7c1e-5b7a-4c1e-9a57-3d2b0c0ffee0")


def uid(name):
    """A fixed uuid per scenario name, so that runs are reproducible."""
    return str(uuid.uuid5(NAMESPACE, name))


def without_usage(body, message_uuid):
    """A final report whose entry for ``message_uuid`` carries no price (as in real traces)."""
    body = copy.deepcopy(body)
    for item in body["_links"]["messages"]:
        if item["message_uuid"] == message_uuid:
            del item["usage"]
    return body


def iso(moment):
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def scenario_bodies(now=None):
    """The callback bodies in delivery order, and the uuids by name."""
    now = now or datetime.now(timezone.utc)
    u = {name: uid(name) for name in (
        "A", "A.wa", "A.sms", "B", "B.sms", "C", "C.sms", "H", "H.sms", "F", "F.viber",
        "F.sms", "G", "G.sms", "G2", "G2.sms", "J", "J.wa", "J.sms", "T", "T.sms",
        "N1", "N1.wa", "N2", "N2.wa",
    )}
    bodies = []

    # A, 2025-03-01: WhatsApp then SMS. The final report's total (0.0333) misses the WhatsApp
    # leg, which is delivered (0.0020) two minutes after the report: a late first leg.
    a, wa, sms = u["A"], u["A.wa"], u["A.sms"]
    bodies += [
        status(wa, a, "submitted", channel="whatsapp", timestamp="2025-03-01T10:00:00.000Z"),
        status(sms, a, "submitted", channel="sms", timestamp="2025-03-01T10:10:00.100Z",
               price="0.0333"),
        status(sms, a, "delivered", channel="sms", timestamp="2025-03-01T10:10:03.000Z"),
        without_usage(final_report(a, [(wa, "whatsapp", "submitted", None),
                                       (sms, "sms", "delivered", "0.0333")],
                                   price="0.0333", timestamp="2025-03-01T10:10:03.500Z"), wa),
        status(wa, a, "delivered", channel="whatsapp", timestamp="2025-03-01T10:12:00.000Z",
               price="0.0020"),
        status(wa, a, "read", channel="whatsapp", timestamp="2025-03-01T10:13:00.000Z"),
    ]

    # B, C (EUR) and H (USD), 2025-03-02: single SMS dispatches at 0.1, 0.2 and 0.05.
    for name, price, currency, hour in (("B", "0.1", "EUR", "09"), ("C", "0.2", "EUR", "15"),
                                        ("H", "0.05", "USD", "16")):
        d, m = u[name], u[f"{name}.sms"]
        bodies += [
            status(m, d, "submitted", channel="sms", timestamp=f"2025-03-02T{hour}:00:00.000Z",
                   price=price, currency=currency),
            status(m, d, "delivered", channel="sms", timestamp=f"2025-03-02T{hour}:00:05.000Z"),
            final_report(d, [(m, "sms", "delivered", price)], price=price, currency=currency,
                         timestamp=f"2025-03-02T{hour}:00:06.000Z"),
        ]

    # F, 2025-03-03: Viber rejected (1120), failover to SMS, delivered. The report spells the
    # channel with the spec's typo.
    f, viber, fsms = u["F"], u["F.viber"], u["F.sms"]
    bodies += [
        status(viber, f, "rejected", channel="viber_service_msg",
               timestamp="2025-03-03T08:00:00.000Z", error=(1120, "Illegal Sender Address")),
        status(fsms, f, "submitted", channel="sms", timestamp="2025-03-03T08:00:01.000Z",
               price="0.0333"),
        status(fsms, f, "delivered", channel="sms", timestamp="2025-03-03T08:00:04.000Z"),
        without_usage(final_report(f, [(viber, "viber_sevice_msg", "rejected", None),
                                       (fsms, "sms", "delivered", "0.0333")],
                                   price="0.0333", timestamp="2025-03-03T08:00:05.000Z"), viber),
    ]

    # G, 2025-03-03: SMS undeliverable (1330), final report error.
    g, gsms = u["G"], u["G.sms"]
    bodies += [
        status(gsms, g, "submitted", channel="sms", timestamp="2025-03-03T12:00:00.000Z",
               price="0.0333"),
        status(gsms, g, "undeliverable", channel="sms", timestamp="2025-03-03T12:00:30.000Z",
               error=(1330, "Delivery failed")),
        final_report(g, [(gsms, "sms", "undeliverable", "0.0333")], status="error",
                     price="0.0333", timestamp="2025-03-03T12:00:31.000Z"),
    ]

    # G2, 2025-03-03: SMS undeliverable (1330) and no final report, ever.
    g2, g2sms = u["G2"], u["G2.sms"]
    bodies += [
        status(g2sms, g2, "submitted", channel="sms", timestamp="2025-03-03T13:00:00.000Z",
               price="0.0333"),
        status(g2sms, g2, "undeliverable", channel="sms", timestamp="2025-03-03T13:00:40.000Z",
               error=(1330, "Delivery failed")),
    ]

    # J, 2025-03-04: WhatsApp stays at submitted for good; SMS delivered instead.
    j, jwa, jsms = u["J"], u["J.wa"], u["J.sms"]
    bodies += [
        status(jwa, j, "submitted", channel="whatsapp", timestamp="2025-03-04T10:00:00.000Z"),
        status(jsms, j, "submitted", channel="sms", timestamp="2025-03-04T10:05:00.000Z",
               price="0.0333"),
        status(jsms, j, "delivered", channel="sms", timestamp="2025-03-04T10:05:02.000Z"),
        without_usage(final_report(j, [(jwa, "whatsapp", "submitted", None),
                                       (jsms, "sms", "delivered", "0.0333")],
                                   price="0.0333", timestamp="2025-03-04T10:05:03.000Z"), jwa),
    ]

    # T, 2025-03-04: SMS at 0.0333 but the final report says 0.05: totals differ.
    t, tsms = u["T"], u["T.sms"]
    bodies += [
        status(tsms, t, "submitted", channel="sms", timestamp="2025-03-04T11:00:00.000Z",
               price="0.0333"),
        status(tsms, t, "delivered", channel="sms", timestamp="2025-03-04T11:00:02.000Z"),
        final_report(t, [(tsms, "sms", "delivered", "0.0333")], price="0.05",
                     timestamp="2025-03-04T11:00:03.000Z"),
    ]

    # N1 and N2, now: WhatsApp submitted 5 hours and 30 minutes ago, nothing since.
    for name, age in (("N1", timedelta(hours=5)), ("N2", timedelta(minutes=30))):
        bodies.append(status(u[f"{name}.wa"], u[name], "submitted", channel="whatsapp",
                             timestamp=iso(now - age)))
    return bodies, u


def post_all(db_path, bodies):
    """Post each body to the receiver (Flask test client) and insist it was stored."""
    init_db(str(db_path))
    app = create_app({"db_path": str(db_path)})
    client = app.test_client()
    for body in bodies:
        response = client.post("/webhooks/vonage", data=json.dumps(body),
                               content_type="application/json",
                               headers={"User-Agent": "Vonage-Callback-Test/1.0"})
        assert response.status_code == 200, (response.status_code, response.get_json(), body)
        assert response.get_json()["status"] == "stored", response.get_json()


def fill(db_path, now=None):
    """Fill ``db_path`` with the scenario; return the uuids by name."""
    bodies, uuids = scenario_bodies(now)
    post_all(db_path, bodies)
    return uuids


def many_bodies(count, start=datetime(2025, 1, 1, tzinfo=timezone.utc), every=timedelta(minutes=55)):
    """``count`` dispatches, one every ``every`` from ``start`` (over a thousand hours for a
    thousand and more): each an SMS leg submitted at 0.05 EUR that nothing followed, so each is
    a billing line, a message stuck at submitted and a dispatch without final report (a
    reconciliation discrepancy). Returns the bodies in delivery order."""
    bodies = []
    for i in range(count):
        moment = start + i * every
        bodies.append(status(uid(f"many.{i}.sms"), uid(f"many.{i}"), "submitted", channel="sms",
                             timestamp=iso(moment), price="0.05"))
    return bodies


@contextmanager
def served(directory, name):
    """The scenario in ``directory/<name>.db``, served by the real ``receiver datasette``;
    yields (the running Datasette, the scenario's uuids) and stops it afterwards."""
    from testing.processes import Datasette

    uuids = fill(directory / f"{name}.db")
    process = Datasette(directory / f"{name}.db", directory / "datasette.log").start()
    try:
        yield process, uuids
    finally:
        process.stop()
