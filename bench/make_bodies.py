"""Pre-generate the benchmark's callbacks: realistic Dispatch and Messages API v1 failover
traffic, one per line.

Each line is ``<Authorization header value or empty>\\t<JSON body>``. The workflows are the
receiver's own simulated ones (``receiver.simulate``, as ``receiver simulate --api mixed`` makes
them): half (MESSAGES_SHARE) are Dispatch workflows (one to three legs, failed and late legs,
read-before-delivered now and then, one final report each), half Messages API v1 failover
requests (each leg's v1 statuses carry ``workflow``; their lines are of kind ``v1_status``, so
the mix printed says the v1 share). Many workflows are in progress at once, so their callbacks
interleave, and about 5 % of the lines are exact re-deliveries (same bytes, same token) of a
body sent shortly before, as Vonage's retries are. Every uuid is drawn from the seed, so one
(count, seed) gives one file; a fresh database per run makes every first delivery new to the
store.

    python bench/make_bodies.py --count 200000 --out bench-results/bodies.tsv
"""

import argparse
import json
import random
import sys
import time
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from receiver import simulate  # noqa: E402
from testing.signing import authorization  # noqa: E402

DUPLICATE_SHARE = 0.05
# The share of workflows that are Messages API v1 failover requests (a migration half done).
MESSAGES_SHARE = 0.5
# How many dispatches are in flight at once, and how far back a re-delivery reaches.
ACTIVE_DISPATCHES = 48
REDELIVERY_WINDOW = 2000
EPOCH = datetime(2026, 11, 1, 8, 0, tzinfo=timezone.utc)
API_KEY = "bench0001"


class Generator:
    """Produces (kind, body bytes) for dispatches, from one seeded random source."""

    def __init__(self, seed):
        self.rng = random.Random(seed)
        self.dispatches = 0

    def dispatch(self):
        """One workflow (Dispatch's, or Messages v1's at MESSAGES_SHARE): its callbacks in
        arrival order, each distinct body once (simulate's own retries are left out:
        re-deliveries are added at DUPLICATE_SHARE)."""
        start = EPOCH + timedelta(seconds=self.dispatches * 0.7 + self.rng.random())
        self.dispatches += 1
        messages = self.rng.random() < MESSAGES_SHARE
        make = simulate.messages_workflow if messages else simulate.workflow
        _, deliveries = make(self.rng, start)
        out, seen = [], set()
        for delivery in deliveries:
            if delivery.body not in seen:
                seen.add(delivery.body)
                if messages:
                    kind = "v1_status"
                else:
                    kind = "final_report" if "template" in json.loads(delivery.body) else "status"
                out.append((kind, delivery.body))
        return out


def generate(count, seed=1, secret=None, iat=None):
    """Yield ``count`` (kind, authorization, body bytes); kind "duplicate" for a re-delivery."""
    gen = Generator(seed)
    rng = random.Random(seed ^ 0x5EED)
    token_rng = random.Random(seed ^ 0x70CE)
    iat = int(time.time()) if iat is None else iat
    active = [gen.dispatch() for _ in range(ACTIVE_DISPATCHES)]
    recent = []
    produced = 0
    while produced < count:
        if recent and rng.random() < DUPLICATE_SHARE:
            _, auth, body = rng.choice(recent[-REDELIVERY_WINDOW:])
            yield "duplicate", auth, body
        else:
            slot = rng.randrange(len(active))
            kind, body = active[slot].pop(0)
            if not active[slot]:
                active[slot] = gen.dispatch()
            auth = ""
            if secret:
                jti = str(uuid.UUID(int=token_rng.getrandbits(128), version=4))
                auth = authorization(body, secret, iat=iat, jti=jti, api_key=API_KEY)
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
