"""Pre-generate the benchmark's callbacks: realistic Dispatch and Messages API v1 failover
traffic, one per line.

Each line is ``<Authorization header value or empty>\\t<JSON body>``. Dispatches of one to three
messages (whatsapp -> viber_service_msg -> sms failover) produce their statuses and one final
report; many dispatches are in progress at once, so their callbacks interleave, and about 5 % of
the lines are exact re-deliveries (same bytes, same token) of a body sent shortly before, as
Vonage's retries are. The mix comes out at about 80 % statuses, 15 % final reports, 5 %
re-deliveries. Half of the workflows (MESSAGES_SHARE) are Messages API v1 failover
requests instead (RCS or WhatsApp, then SMS; each leg's v1 statuses carry ``workflow``): their
lines are of kind ``v1_status``, so the mix printed says the v1 share. Every uuid is drawn from the seed, so one (count, seed) gives one file; a fresh
database per run makes every first delivery new to the store.

    python bench/make_bodies.py --count 200000 --out bench-results/bodies.tsv
"""

import argparse
import base64
import hashlib
import hmac
import json
import random
import sys
import time
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.payloads import final_report, status, v1_status  # noqa: E402  (the tests' body builders)

LEGS = ("whatsapp", "viber_service_msg", "sms")
# Dispatches of 1, 2 and 3 messages; with the leg shapes below this gives ~5.3 statuses per
# final report, i.e. 80 % statuses / 15 % final reports once 5 % re-deliveries are added.
LEG_COUNT_WEIGHTS = (0.20, 0.35, 0.45)
PRICES = {"whatsapp": "0.0020", "viber_service_msg": "0.0110", "sms": "0.0333"}
FAILURES = ((1300, "Not part of the provider network"), (1330, "Delivery failed"),
            (1360, "TTL was activated"), (1210, "Anti-Spam Rejection"))
DUPLICATE_SHARE = 0.05
# How many dispatches are in flight at once, and how far back a re-delivery reaches.
ACTIVE_DISPATCHES = 48
REDELIVERY_WINDOW = 2000
EPOCH = datetime(2026, 11, 1, 8, 0, tzinfo=timezone.utc)
API_KEY = "bench0001"
# The share of workflows that are Messages API v1 failover requests (a migration half done).
MESSAGES_SHARE = 0.5
V1_LEGS = (("rcs", "sms"), ("whatsapp", "sms"), ("whatsapp", "viber_service", "sms"), ("sms",))


def _stamp(moment):
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class Generator:
    """Produces (kind, body dict) for dispatches, from one seeded random source."""

    def __init__(self, seed):
        self.rng = random.Random(seed)
        self.dispatches = 0

    def uuid(self):
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def number(self):
        return f"4477009{self.rng.randrange(100000):05d}"

    def workflow(self):
        """The next workflow's callbacks: Dispatch's, or a Messages v1 failover request's."""
        if self.rng.random() < MESSAGES_SHARE:
            return self.messages()
        return self.dispatch()

    def messages(self):
        """One Messages failover request: each leg submitted, then rejected (the next leg is
        sent) or delivered (and maybe read); the legs share the workflow id."""
        rng = self.rng
        workflow_id = "".join(rng.choice("123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz")
                              for _ in range(55))
        channels = rng.choice(V1_LEGS)
        t = EPOCH + timedelta(seconds=self.dispatches * 0.7 + rng.random())
        self.dispatches += 1
        out = []
        for leg, channel in enumerate(channels, start=1):
            m_uuid = self.uuid()
            flow = (workflow_id, leg, len(channels)) if len(channels) > 1 else None

            def emit(state, **kw):
                out.append(("v1_status", v1_status(
                    m_uuid, state, channel=channel, workflow=flow,
                    timestamp=t.strftime("%Y-%m-%dT%H:%M:%SZ"), **kw)))

            emit("submitted", price=PRICES["sms"] if channel == "sms" else None)
            t += timedelta(seconds=rng.uniform(1, 20))
            if leg < len(channels) and rng.random() < 0.6:
                emit("rejected", error=("1300", "Not part of the provider network"))
                continue
            emit("delivered", price=None if channel in ("sms", "rcs") else "0.0110")
            if channel != "sms" and rng.random() < 0.5:
                t += timedelta(seconds=rng.uniform(2, 300))
                emit("read")
            break
        return out

    def dispatch(self):
        """One failover dispatch: its callbacks in a plausible delivery order."""
        rng = self.rng
        d = self.uuid()
        start = EPOCH + timedelta(seconds=self.dispatches * 0.7 + rng.random())
        self.dispatches += 1
        to = self.number()
        n_legs = rng.choices((1, 2, 3), LEG_COUNT_WEIGHTS)[0]
        legs = [(self.uuid(), LEGS[i]) for i in range(n_legs)]
        out, late, report_items = [], [], []
        t = start

        def emit(into, m_uuid, channel, state, at, **kw):
            body = status(m_uuid, d, state, channel=channel, timestamp=_stamp(at), **kw)
            if channel in ("whatsapp", "sms"):
                body["to"]["number"] = to
            into.append(("status", body))

        all_failed = False
        for index, (m_uuid, channel) in enumerate(legs):
            last = index == n_legs - 1
            price = PRICES[channel]
            # SMS is charged at submitted; the OTT channels at delivered.
            emit(out, m_uuid, channel, "submitted", t, price=price if channel == "sms" else None)
            if not last:
                if rng.random() < 0.6:  # failover on rejection: an error status
                    t += timedelta(seconds=rng.uniform(1, 20))
                    emit(out, m_uuid, channel, rng.choice(("rejected", "undeliverable")), t,
                         error=rng.choice(FAILURES))
                    report_items.append((m_uuid, channel, "rejected", "0.0000"))
                else:  # failover on expiry; the first leg is delivered and read late
                    later = t + timedelta(minutes=rng.uniform(10, 90))
                    emit(late, m_uuid, channel, "delivered", later, price=price)
                    emit(late, m_uuid, channel, "read", later + timedelta(seconds=rng.uniform(5, 600)))
                    report_items.append((m_uuid, channel, "submitted", "0.0000"))
                t += timedelta(seconds=rng.uniform(30, 600))
                continue
            t += timedelta(seconds=rng.uniform(1, 10))
            if rng.random() < 0.05:  # the last leg fails too: the dispatch ends in error
                all_failed = True
                emit(out, m_uuid, channel, "undeliverable", t, error=rng.choice(FAILURES))
                report_items.append((m_uuid, channel, "undeliverable", "0.0000"))
                break
            delivered = [("delivered", t)]
            if channel != "sms" and rng.random() < 0.6:
                delivered.append(("read", t + timedelta(seconds=rng.uniform(2, 300))))
            if len(delivered) == 2 and rng.random() < 0.05:
                delivered.reverse()  # read can arrive before delivered
            for state, at in delivered:
                emit(out, m_uuid, channel, state, at,
                     price=price if state == "delivered" and channel != "sms" else None)
            report_items.append((m_uuid, channel, "delivered", price))
        total = sum(int(p.replace(".", "")) for *_, p in report_items)
        report = final_report(
            d, report_items, status="error" if all_failed else "completed",
            price=f"{total // 10000}.{total % 10000:04d}", timestamp=_stamp(t + timedelta(seconds=0.5)),
        )
        # The final report and the last delivered status arrive in either order.
        position = len(out) - (1 if rng.random() < 0.3 and len(out) > 1 else 0)
        out.insert(position, ("final_report", report))
        return out + late


def _b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=")


JWT_HEADER = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())


def _token(body_bytes, secret, rng, iat):
    """An HS256 JWT with Vonage's claims (RFC 7519 by hand: PyJWT is 10x slower at this)."""
    claims = {
        "iat": iat,
        "jti": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "iss": "Vonage",
        "payload_hash": hashlib.sha256(body_bytes).hexdigest(),
        "api_key": API_KEY,
        "application_id": "aaaaaaaa-bbbb-cccc-dddd-0123456789ab",
    }
    signing_input = JWT_HEADER + b"." + _b64(json.dumps(claims, separators=(",", ":")).encode())
    signature = hmac.new(secret.encode(), signing_input, hashlib.sha256).digest()
    return "Bearer " + (signing_input + b"." + _b64(signature)).decode()


def generate(count, seed=1, secret=None, iat=None):
    """Yield ``count`` (kind, authorization, body bytes); kind "duplicate" for a re-delivery."""
    gen = Generator(seed)
    rng = random.Random(seed ^ 0x5EED)
    token_rng = random.Random(seed ^ 0x70CE)
    iat = int(time.time()) if iat is None else iat
    active = [gen.workflow() for _ in range(ACTIVE_DISPATCHES)]
    recent = []
    produced = 0
    while produced < count:
        if recent and rng.random() < DUPLICATE_SHARE:
            _, auth, body = rng.choice(recent[-REDELIVERY_WINDOW:])
            yield "duplicate", auth, body
        else:
            slot = rng.randrange(len(active))
            kind, payload = active[slot].pop(0)
            if not active[slot]:
                active[slot] = gen.workflow()
            body = json.dumps(payload).encode()
            auth = _token(body, secret, token_rng, iat) if secret else ""
            recent.append((kind, auth, body))
            if len(recent) > 4 * REDELIVERY_WINDOW:
                del recent[:-REDELIVERY_WINDOW]
            yield kind, auth, body
        produced += 1


def write(path, count, seed=1, secret=None):
    """Write ``count`` lines to ``path``; return the mix as a Counter of kinds."""
    mix = Counter()
    with open(path, "wb") as out:
        for kind, auth, body in generate(count, seed, secret):
            mix[kind] += 1
            out.write(auth.encode() + b"\t" + body + b"\n")
    return mix


def read_lines(path):
    """The file's lines as (authorization, body bytes)."""
    with open(path, "rb") as f:
        for line in f:
            auth, _, body = line.rstrip(b"\n").partition(b"\t")
            yield auth.decode(), body


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200_000, help="lines to write (default 200000)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument("--secret", default=None,
                        help="sign each body (HS256 JWT, as Vonage does) with this signature secret")
    parser.add_argument("--out", required=True, help="output file")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    mix = write(args.out, args.count, args.seed, args.secret)
    total = sum(mix.values())
    shares = ", ".join(f"{k} {v} ({100 * v / total:.1f} %)" for k, v in sorted(mix.items()))
    print(f"{args.out}: {total} lines in {time.perf_counter() - started:.1f} s: {shares}")


if __name__ == "__main__":
    main()
