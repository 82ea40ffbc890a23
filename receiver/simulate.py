"""Realistic traffic: failover workflows of the Dispatch API and of the Messages API v1, as
Vonage delivers their callbacks.

Channels in failover order, statuses with Vonage-like timing, out-of-order arrivals,
duplicate deliveries (retries), error codes from Vonage's list, prices as decimal strings.
Dispatch: late first legs that arrive after the final report (so the report's total differs).
Messages: a leg fails over when rejected; late statuses of earlier legs; both spellings of
``workflow`` (the spec's and the Java SDK's); error titles as strings and as numbers.

Every body carries ``"simulated": true`` (Vonage never sends that field), so simulated rows
can be found in any database, whether written directly or posted to a receiver, and removed
with ``remove``.
"""

import hashlib
import json
import os
import random
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal

# Failover plans: channels tried in order, and how often each plan is used.
PLANS = (
    (("whatsapp", "sms"), 45),
    (("viber_service_msg", "sms"), 20),
    (("whatsapp", "viber_service_msg", "sms"), 15),
    (("messenger", "sms"), 10),
    (("sms",), 10),
)
PRICES = {
    "sms": ("0.0333", "0.0412", "0.0075", "0.0591"),
    "mms": ("0.0910",),
    "whatsapp": ("0.0147", "0.0020", "0.0360"),
    "viber_service_msg": ("0.0120", "0.0098"),
    "messenger": ("0.0010",),
}
ERRORS = (
    (1300, "Not part of the provider network"),
    (1330, "Delivery failed"),
    (1360, "TTL was activated"),
    (1020, "Invalid params"),
    (1210, "Anti-Spam Rejection"),
    (1120, "Illegal Sender Address"),
    (1000, "Throttled"),
    (1490, "SMS segment timeout"),
)
CHARGED_AT_SUBMIT = ("sms", "mms")
EXPIRY_S = 600
# Where `receiver simulate` writes unless told otherwise: never the file Vonage posts to.
DEMO_DB = "var/demo.db"
# The top-level field marking a body as simulated, and the SQL that finds such callbacks.
MARKER = "simulated"
SIMULATED_CALLBACKS = f"SELECT id FROM callbacks WHERE json_extract(body, '$.{MARKER}') IS 1"


@dataclass(frozen=True)
class Delivery:
    """One callback as it will arrive: when, and the exact body bytes."""

    at: datetime
    body: bytes


def _iso(moment):
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _endpoints(channel, rng):
    number = f"44770090{rng.randrange(10**4):04d}"
    if channel == "messenger":
        return {"type": channel, "id": str(rng.randrange(10**15, 10**16))}, \
               {"type": channel, "id": "5432109876543210"}
    sender = {"type": channel, "id": "12345"} if channel == "viber_service_msg" else \
        {"type": channel, "number": "447700900000"}
    return {"type": channel, "number": number}, sender


def workflow(rng, start):
    """One dispatch's callbacks in arrival order, and its uuid."""
    dispatch_uuid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    plans, weights = zip(*PLANS)
    channels = rng.choices(plans, weights)[0]
    events = []  # (arrival time, body dict)
    report_items = []
    charged = Decimal(0)
    clock = start
    delivered = False
    late_legs = []
    for step, channel in enumerate(channels, start=1):
        message_uuid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        to, sender = _endpoints(channel, rng)
        price = rng.choice(PRICES[channel])
        link = {"dispatch": {"dispatch_uuid": dispatch_uuid,
                             "href": f"v0.1/dispatch/{dispatch_uuid}"}}
        if rng.random() < 0.1:
            link = {"workflow": {"dispatch_uuid": dispatch_uuid,
                                 "href": f"/workflows/{dispatch_uuid}"}}

        # Defaults bind this step's values: a late leg's body is built after the loop moved on.
        def status_body(status, at, usage=False, error=None, message_uuid=message_uuid, to=to,
                        sender=sender, price=price, link=link):
            body = {"message_uuid": message_uuid, "to": to, "from": sender,
                    "timestamp": _iso(at), "status": status, "_links": link, MARKER: True}
            if usage:
                body["usage"] = {"currency": "EUR", "price": price}
            if error:
                body["error"] = {"code": error[0], "reason": error[1]}
            return body

        submitted_at = clock + timedelta(milliseconds=rng.randrange(200, 1500))
        last = step == len(channels)
        outcome = rng.random()
        item_status, item_price = "submitted", None
        if channel in CHARGED_AT_SUBMIT:
            events.append((submitted_at, status_body("submitted", submitted_at, usage=True)))
            charged += Decimal(price)
            item_price = price
        else:
            events.append((submitted_at, status_body("submitted", submitted_at)))
        if outcome < 0.12:
            # Failed: rejected at once, or undeliverable after a while.
            failed_at = submitted_at + timedelta(seconds=rng.uniform(1, 120))
            status = rng.choice(("rejected", "undeliverable"))
            events.append((failed_at, status_body(status, failed_at, error=rng.choice(ERRORS))))
            item_status = status
            clock = failed_at
        elif outcome < 0.70 or last:
            # Delivered within the expiry: the workflow's condition is met.
            delivered_at = submitted_at + timedelta(seconds=rng.uniform(1, EXPIRY_S * 0.8))
            charge = channel not in CHARGED_AT_SUBMIT
            events.append((delivered_at, status_body("delivered", delivered_at, usage=charge)))
            if charge:
                charged += Decimal(price)
                item_price = price
            item_status = "delivered"
            if channel != "sms" and rng.random() < 0.6:
                read_at = delivered_at + timedelta(seconds=rng.uniform(5, 3600))
                events.append((read_at, status_body("read", read_at)))
            clock = delivered_at
            delivered = True
        else:
            # Not delivered in time: fail over. Sometimes this leg delivers late, after the
            # final report, so the report's total misses its price.
            clock = submitted_at + timedelta(seconds=EXPIRY_S)
            if rng.random() < 0.25 and channel not in CHARGED_AT_SUBMIT:
                late_legs.append((channel, price, status_body))
        report_items.append({"message_uuid": message_uuid, "href": message_uuid,
                             "channel": "viber_sevice_msg" if channel == "viber_service_msg"
                             and rng.random() < 0.5 else channel,
                             "status": item_status,
                             **({"usage": {"currency": "EUR", "price": item_price}}
                                if item_price else {})})
        if delivered:
            break
    report_at = clock + timedelta(milliseconds=rng.randrange(100, 3000))
    report = {"dispatch_uuid": dispatch_uuid, "template": "failover",
              "status": "completed" if delivered else "error", "timestamp": _iso(report_at),
              "usage": {"price": format(charged, "f"), "currency": "EUR"},
              "_links": {"messages": report_items}, MARKER: True}
    events.append((report_at, report))
    for channel, price, status_body in late_legs:
        late_at = report_at + timedelta(seconds=rng.uniform(30, 1800))
        events.append((late_at, status_body("delivered", late_at, usage=True)))
    return dispatch_uuid, _arrivals(events, rng)


def _arrivals(events, rng):
    """(time, body) events -> Deliveries in arrival order, with retries."""
    # Arrival order: mostly by time, with occasional swaps (read before delivered, say).
    events.sort(key=lambda e: e[0])
    for i in range(len(events) - 1):
        if rng.random() < 0.08:
            events[i], events[i + 1] = events[i + 1], events[i]
    deliveries = [Delivery(at, json.dumps(body, separators=(",", ":")).encode()) for at, body in events]
    # Vonage retries resend the same bytes.
    for delivery in list(deliveries):
        if rng.random() < 0.03:
            deliveries.append(Delivery(delivery.at + timedelta(seconds=5), delivery.body))
    return deliveries


# Messages API failover plans (v1 channel names): a leg fails over only when rejected.
MESSAGES_PLANS = (
    (("whatsapp", "sms"), 35),
    (("rcs", "sms"), 25),
    (("whatsapp", "viber_service", "sms"), 15),
    (("messenger", "sms"), 10),
    (("rcs", "whatsapp", "sms"), 10),
    (("sms",), 5),
)
V1_PRICES = {**PRICES, "viber_service": PRICES["viber_service_msg"], "rcs": (None,)}
BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def _iso_seconds(moment):
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")  # v1 timestamps carry no milliseconds


def messages_workflow(rng, start):
    """One Messages API failover request's v1 status callbacks in arrival order, and its
    workflow id (a plain message when the plan has one channel: no ``workflow`` object)."""
    plans, weights = zip(*MESSAGES_PLANS)
    channels = rng.choices(plans, weights)[0]
    workflow_id = "".join(rng.choice(BASE58) for _ in range(55))
    java = rng.random() < 0.15  # Vonage's Java SDK spelling: id, item_number, total_items
    events, clock = [], start
    number = f"44770090{rng.randrange(10**4):04d}"
    for leg, channel in enumerate(channels, start=1):
        message_uuid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        price = rng.choice(V1_PRICES[channel])
        to = {"messenger": str(rng.randrange(10**15, 10**16))}.get(channel, number)
        sender = {"rcs": "Vonage", "messenger": "5432109876543210"}.get(channel, "447700900000")

        def status_body(status, at, usage=False, error=None, message_uuid=message_uuid,
                        channel=channel, leg=leg, to=to, sender=sender, price=price):
            body = {"message_uuid": message_uuid, "to": to, "from": sender,
                    "timestamp": _iso_seconds(at), "status": status, "channel": channel,
                    MARKER: True}
            if usage and price:
                body["usage"] = {"currency": "EUR", "price": price}
            if error:
                code, detail = error
                body["error"] = {"type": f"https://developer.vonage.com/api-errors/messages#{code}",
                                 "title": code if rng.random() < 0.2 else str(code),
                                 "detail": detail, "instance": uuid.UUID(int=rng.getrandbits(128)).hex}
            if len(channels) > 1:
                body["workflow"] = (
                    {"id": workflow_id, "item_number": leg, "total_items": len(channels)} if java
                    else {"workflow_id": workflow_id, "items_number": str(leg),
                          "items_total": str(len(channels))})
            if channel == "sms" and status == "submitted":
                body["sms"] = {"count_total": "1"}
                body["destination"] = {"network_code": "23410"}
            return body

        submitted_at = clock + timedelta(milliseconds=rng.randrange(200, 1500))
        # A leg's submitted callback is sometimes late: after the next legs' (up to hours).
        submitted_arrives = submitted_at + timedelta(
            seconds=rng.uniform(60, 7200) if rng.random() < 0.1 else 0)
        events.append((submitted_arrives,
                       status_body("submitted", submitted_at, usage=channel in CHARGED_AT_SUBMIT)))
        last = leg == len(channels)
        if rng.random() < (0.1 if last else 0.4):
            rejected_at = submitted_at + timedelta(seconds=rng.uniform(1, 60))
            events.append((rejected_at, status_body("rejected", rejected_at,
                                                    error=rng.choice(ERRORS))))
            clock = rejected_at
            continue
        delivered_at = submitted_at + timedelta(seconds=rng.uniform(1, 300))
        events.append((delivered_at, status_body("delivered", delivered_at,
                                                 usage=channel not in CHARGED_AT_SUBMIT)))
        if channel not in ("sms", "mms") and rng.random() < 0.5:
            # Read receipts come late: up to days for WhatsApp.
            read_at = delivered_at + timedelta(seconds=rng.uniform(5, 3 * 86400))
            events.append((read_at, status_body("read", read_at)))
        break
    return workflow_id, _arrivals(events, rng)


APIS = ("dispatch", "messages", "mixed")


def generate(dispatches, *, seed=0, start=None, days=30, api="dispatch", now=None):
    """Yield (workflow id, [Delivery, ...]) for ``dispatches`` workflows spread over ``days``:
    Dispatch's, Messages API v1's, or (``mixed``) half of each, as during a migration.

    Nothing arrives after ``now`` (default: the current time): a workflow started shortly
    before it is still in progress, its later callbacks (a read receipt days later, the final
    report) not yet sent, as a receiver running now would have it."""
    rng = random.Random(seed)
    now = now or datetime.now(timezone.utc)
    start = start or (now - timedelta(days=days)).replace(microsecond=0)
    span = days * 86400
    for _ in range(dispatches):
        at = start + timedelta(seconds=rng.uniform(0, span))
        messages = api == "messages" or (api == "mixed" and rng.random() < 0.5)
        workflow_id, deliveries = (messages_workflow if messages else workflow)(rng, at)
        yield workflow_id, [delivery for delivery in deliveries if delivery.at <= now]


def new_seed():
    """A seed for a run that names none: runs differ, so their uuids never collide."""
    return int.from_bytes(os.urandom(4), "big")


def sign(body, secret, api_key="simulated", application_id=None, now=None):
    """A Vonage-style signature header for ``body``: HS256 JWT with payload_hash."""
    import jwt

    claims = {"iat": int(now if now is not None else time.time()), "jti": str(uuid.uuid4()),
              "iss": "Vonage", "payload_hash": hashlib.sha256(body).hexdigest(),
              "api_key": api_key}
    if application_id:
        claims["application_id"] = application_id
    return "Bearer " + jwt.encode(claims, secret, algorithm="HS256")


def store_all(workflows, conn, progress=None, batch=150):
    """Validate and store every callback through the receiver's storage code, in arrival order
    within each workflow, ``batch`` workflows per transaction; return counts of what happened."""
    from itertools import islice

    from . import store
    from .callbacks import Rejection, parse

    outcome = {"stored": 0, "duplicate": 0, "rejected": 0}
    workflows = iter(workflows)
    try:
        while chunk := list(islice(workflows, batch)):
            with store.transaction(conn):
                for _, deliveries in chunk:
                    for delivery in deliveries:
                        try:
                            callback = parse(delivery.body)
                        except Rejection:
                            outcome["rejected"] += 1
                            continue
                        arrived = delivery.at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
                        stored = store.store_callback(
                            conn, callback, store.Delivery(delivery.body, "simulate", arrived))
                        outcome["duplicate" if stored.duplicate else "stored"] += 1
                    if progress is not None:
                        progress.update(1)
    finally:
        if progress is not None:
            progress.render_finish()
    return outcome


def remove(conn):
    """Delete every simulated callback (``"simulated": true`` in its body) and every row made
    from it, then rebuild ``messages`` and ``dispatches`` from what is left. Returns how many
    callbacks were removed. A rejected body later stored from one keeps its row, unlinked."""
    from . import store

    with store.transaction(conn):
        conn.execute("DROP TABLE IF EXISTS temp.simulated_callbacks")
        conn.execute(f"CREATE TEMP TABLE simulated_callbacks AS {SIMULATED_CALLBACKS}")
        count = conn.execute("SELECT count(*) FROM temp.simulated_callbacks").fetchone()[0]
        if count:
            conn.execute("UPDATE rejected_callbacks SET callback_id = NULL "
                         "WHERE callback_id IN (SELECT id FROM temp.simulated_callbacks)")
            _delete_referencing(conn, "callbacks", "id IN (SELECT id FROM temp.simulated_callbacks)")
            conn.execute("DELETE FROM callbacks WHERE id IN (SELECT id FROM temp.simulated_callbacks)")
            store.rebuild_derived(conn)
        conn.execute("DROP TABLE temp.simulated_callbacks")
    return count


def _delete_referencing(conn, parent, where):
    """Delete the rows of every table whose foreign key points at the ``parent`` rows matching
    ``where``, their own children first (final_report_messages before final_reports)."""
    tables = [name for (name,) in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
    for table in tables:
        for key in conn.execute(f"PRAGMA foreign_key_list([{table}])").fetchall():
            referenced, column, to = key[2], key[3], key[4] or "rowid"
            if referenced != parent or table == parent:
                continue
            condition = f"[{column}] IN (SELECT [{to}] FROM [{parent}] WHERE {where})"
            _delete_referencing(conn, table, condition)
            conn.execute(f"DELETE FROM [{table}] WHERE {condition}")


def is_http_url(url):
    """True for an http:// or https:// URL with a host (what ``post_all`` can post to)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def post_all(workflows, url, *, secret=None, concurrency=8, progress=None, timeout=15):
    """POST every callback to ``url`` (each workflow's in order); return counts by HTTP status."""
    import urllib.error
    import urllib.request
    from collections import Counter
    from concurrent.futures import ThreadPoolExecutor

    def post_workflow(item):
        _, deliveries = item
        statuses = []
        for delivery in deliveries:
            headers = {"Content-Type": "application/json", "User-Agent": "receiver-simulate"}
            if secret:
                headers["Authorization"] = sign(delivery.body, secret)
            request = urllib.request.Request(url, data=delivery.body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    statuses.append(str(response.status))
            except urllib.error.HTTPError as error:
                statuses.append(str(error.code))
                error.close()
            except OSError as error:
                statuses.append(type(error).__name__)
        return statuses

    counts = Counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for statuses in pool.map(post_workflow, workflows):
            counts.update(statuses)
            if progress is not None:
                progress.update(1)
    if progress is not None:
        progress.render_finish()
    return dict(counts)


# --- Vonage's own records of the traffic (its Reports API), with planted discrepancies -------

# The columns of an outbound MESSAGES record (REPORTS.md, csv_messages_outbound), in order.
RECORD_COLUMNS = ("account_id", "message_id", "client_ref", "direction", "from", "to", "provider",
                  "status", "error_code", "country", "country_name", "date_received",
                  "date_finalized", "latency", "total_price", "currency")
SIMULATED_ACCOUNT = "5140a7ed"  # an API key is 8 characters
# What can be planted, each in its own messages (vonage_reconciliation's class names).
PLANTS = ("no_callbacks", "price_differs", "currency_differs", "status_differs",
          "not_in_vonage_records")
PRICE_CHANGE = Decimal("0.0010")  # added to the price in a price_differs record
# Our status -> the record's: Vonage's MESSAGES words, and for SMS the SMS product's.
RECORD_STATUS = {"submitted": "submitted", "delivered": "delivered", "read": "delivered",
                 "rejected": "rejected", "undeliverable": "undeliverable"}
SMS_RECORD_STATUS = {**RECORD_STATUS, "submitted": "accepted", "undeliverable": "failed"}
STATUS_RANKS = ("submitted", "delivered", "read", "undeliverable", "rejected")


def _vonage_time(stamp):
    """A callback timestamp ('2026-11-06T10:00:00.123Z') -> a record's, to the second."""
    return stamp[:19] + "+0000"


def _messages_of(deliveries):
    """{message_uuid: what its status callbacks say} for one workflow's deliveries."""
    found = {}
    for delivery in deliveries:
        body = json.loads(delivery.body)
        uuid_ = body.get("message_uuid")
        if uuid_ is None:
            continue  # a Dispatch final report
        message = found.setdefault(uuid_, {"statuses": set(), "times": [], "price": None})
        channel = body.get("channel") or body["to"]["type"]
        message["channel"] = "viber_service_msg" if channel == "viber_service" else channel
        message["statuses"].add(body["status"])
        message["times"].append(body["timestamp"])
        to, sender = body["to"], body["from"]
        message["to"] = to if isinstance(to, str) else to.get("number") or to.get("id")
        message["from"] = sender if isinstance(sender, str) else sender.get("number") or sender.get("id")
        if body.get("usage"):
            message["price"] = body["usage"]["price"]
        if body.get("error"):
            message["error_code"] = str(body["error"].get("code") or body["error"]["type"].rsplit("#", 1)[-1])
    return found


class VonageRecords:
    """Writes Vonage's records of the simulated traffic passing through ``withhold``: a zip
    holding report_MESSAGES_<account>_<yyyyMMdd>.csv as Vonage's asynchronous reports do (or
    that CSV alone, for a path ending in .csv), and plants discrepancies, each in a share
    ``rate`` of the messages: callbacks withheld (never delivered), prices changed, currencies
    changed, statuses changed, records left out. ``planted`` maps each such message to its
    class; ``counts`` says how many of each."""

    def __init__(self, path, *, seed, rate=0.01):
        import csv
        import io
        import zipfile

        self.path, self.rate = path, rate
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.rng = random.Random(f"vonage-records {seed}")
        self.planted, self.records = {}, 0
        name = f"report_MESSAGES_{SIMULATED_ACCOUNT}_{datetime.now(timezone.utc):%Y%m%d}.csv"
        if str(path).endswith(".csv"):
            self._zip, self._file = None, open(path, "w", newline="", encoding="utf-8")
        else:
            self._zip = zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED)
            member = self._zip.open(name, "w", force_zip64=True)
            self._file = io.TextIOWrapper(member, encoding="utf-8", newline="")
        self._csv = csv.writer(self._file, lineterminator="\r\n")
        self._csv.writerow(RECORD_COLUMNS)

    @property
    def counts(self):
        counts = dict.fromkeys(PLANTS, 0)
        for plant in self.planted.values():
            counts[plant] += 1
        return counts

    def withhold(self, workflows):
        """Yield each workflow with the callbacks of its no_callbacks messages taken out, and
        write every record but those of not_in_vonage_records messages."""
        for workflow_id, deliveries in workflows:
            withheld = set()
            for message_uuid, message in _messages_of(deliveries).items():
                plant = self._plant(message)
                if plant:
                    self.planted[message_uuid] = plant
                if plant == "no_callbacks":
                    withheld.add(message_uuid)
                if plant != "not_in_vonage_records":
                    self._write(message_uuid, message, plant)
            if withheld:
                deliveries = [d for d in deliveries
                              if json.loads(d.body).get("message_uuid") not in withheld]
            yield workflow_id, deliveries

    def _plant(self, message):
        draw = self.rng.random() / self.rate
        if draw >= len(PLANTS):
            return None
        plant = PLANTS[int(draw)]
        if plant in ("price_differs", "currency_differs") and not message["price"]:
            return None  # only a priced message can have its price or currency changed
        return plant

    def _write(self, message_uuid, message, plant):
        status = max(message["statuses"], key=STATUS_RANKS.index)
        channel = message["channel"]
        words = SMS_RECORD_STATUS if channel == "sms" else RECORD_STATUS
        if plant == "status_differs":  # another outcome: reached <-> failed, pending -> reached
            status = "undeliverable" if status in ("delivered", "read") else "delivered"
        price = message["price"] or ("" if channel == "rcs" else "0")
        if plant == "price_differs":
            price = format(Decimal(price) + PRICE_CHANGE, "f")
        times = sorted(message["times"])
        latency = int((datetime.fromisoformat(times[-1][:19]) -
                       datetime.fromisoformat(times[0][:19])).total_seconds() * 1000)
        self._csv.writerow((
            SIMULATED_ACCOUNT, message_uuid, "", "outbound", message["from"],
            message["to"], "viber" if channel == "viber_service_msg" else channel, words[status],
            message.get("error_code", ""), "GB", "United Kingdom", _vonage_time(times[0]),
            _vonage_time(times[-1]), latency, price,
            "USD" if plant == "currency_differs" else "EUR",
        ))
        self.records += 1

    def close(self):
        self._file.close()
        if self._zip is not None:
            self._zip.close()
