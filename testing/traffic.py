"""Traffic for tests and benchmarks: distinct realistic callback bodies (from the receiver's
own ``receiver.simulate``), a threaded load generator that records what every POST got, and
checks of the database file afterwards (read with sqlite3 and ``receiver check`` once every
process is gone).
"""

import hashlib
import http.client
import itertools
import sqlite3
import subprocess
import threading
import time
from contextlib import closing
from dataclasses import dataclass, field

from receiver import simulate

from .processes import ROOT, VENV_BIN, receiver_environment

JSON_HEADERS = {"Content-Type": "application/json", "User-Agent": "receiver-tests/1.0"}


# --- load ----------------------------------------------------------------------------------


def distinct_bodies(seed):
    """Endless distinct callback bodies (bytes) from ``simulate.generate`` realistic workflows.

    A workflow's retried deliveries repeat its bytes; those repeats are skipped so that each
    body is posted once and its outcome is its own.
    """
    seen = set()
    for round_ in itertools.count():
        for _, deliveries in simulate.generate(2000, seed=seed * 1_000_003 + round_, api="mixed"):
            for delivery in deliveries:
                digest = hashlib.sha256(delivery.body).hexdigest()
                if digest not in seen:
                    seen.add(digest)
                    yield delivery.body


class Bodies:
    """A thread-safe supply of distinct bodies, shared by every poster of one test."""

    def __init__(self, seed):
        self._iterator = distinct_bodies(seed)
        self._lock = threading.Lock()

    def next(self):
        with self._lock:
            return next(self._iterator)


@dataclass
class Outcome:
    """What one POST of one distinct body got."""

    sha256: str
    started: float  # time.monotonic()
    ended: float
    status: object  # int HTTP status, or the exception's class name: not acknowledged
    retry_after: str | None = None
    reply: bytes = b""


def post(conn, body, path="/webhooks/vonage"):
    """POST ``body`` on ``conn`` (an http.client connection); return (Outcome, conn to reuse).

    A connection error or timeout is an unacknowledged delivery (Vonage would retry it);
    the connection is then dropped (None) for the caller to open a new one.
    """
    digest = hashlib.sha256(body).hexdigest()
    started = time.monotonic()
    try:
        conn.request("POST", path, body, JSON_HEADERS)
        response = conn.getresponse()
        reply = response.read()
    except (OSError, http.client.HTTPException) as error:
        conn.close()
        return Outcome(digest, started, time.monotonic(), type(error).__name__), None
    outcome = Outcome(digest, started, time.monotonic(), response.status,
                      response.getheader("Retry-After"), reply)
    if response.will_close:
        conn.close()
        conn = None
    return outcome, conn


@dataclass
class LoadGenerator:
    """``threads`` threads POSTing distinct bodies to /webhooks/vonage as fast as answered.

    Every outcome is recorded; after a connection error or timeout a thread reconnects
    after a short pause.
    """

    port: int
    bodies: Bodies
    threads: int = 16
    timeout: float = 5.0
    path: str = "/webhooks/vonage"
    outcomes: list = field(default_factory=list)

    def __post_init__(self):
        self._stop = threading.Event()
        self._threads = []
        self._per_thread = []

    def _run(self, results):
        conn = None
        while not self._stop.is_set():
            body = self.bodies.next()
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            outcome, conn = post(conn, body, self.path)
            results.append(outcome)
            if not isinstance(outcome.status, int):
                self._stop.wait(0.05)
        if conn is not None:
            conn.close()

    def start(self):
        for number in range(self.threads):
            results = []
            self._per_thread.append(results)
            thread = threading.Thread(target=self._run, args=(results,),
                                      name=f"load-{number}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self):
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout + 5)
        alive = [thread.name for thread in self._threads if thread.is_alive()]
        self.outcomes = sorted(itertools.chain.from_iterable(self._per_thread),
                               key=lambda o: o.started)
        if alive:
            raise RuntimeError(f"load threads did not stop: {alive}")
        return self.outcomes

    def snapshot(self):
        """Outcomes so far (unordered), read while the threads run."""
        return [o for results in self._per_thread for o in list(results)]

    def wait_for(self, predicate, since, timeout, what):
        """Wait until ``predicate(outcomes started since)`` holds; return those outcomes."""
        deadline = time.monotonic() + timeout
        while True:
            recent = [o for o in self.snapshot() if o.started >= since]
            if predicate(recent):
                return recent
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not seen within {timeout} s; got "
                                     f"{summarize(recent)}")
            time.sleep(0.05)


def summarize(outcomes):
    """{status: count} of ``outcomes``."""
    counts = {}
    for outcome in outcomes:
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: str(item[0])))


def acknowledged(outcomes):
    return [o for o in outcomes if o.status == 200]


# --- the file afterwards -------------------------------------------------------------------


def stored_hashes(db_path):
    """sha256 of every callbacks row, and of every body as stored (they must agree)."""
    with closing(sqlite3.connect(str(db_path))) as conn:
        rows = conn.execute("SELECT sha256, body FROM callbacks").fetchall()
    recorded = {sha for sha, _ in rows}
    recomputed = {hashlib.sha256(body.encode("utf-8")).hexdigest() for _, body in rows}
    return recorded, recomputed


def integrity_check(db_path):
    with closing(sqlite3.connect(str(db_path))) as conn:
        return [row[0] for row in conn.execute("PRAGMA integrity_check")]


def receiver_check(db_path):
    """``receiver check --db PATH``: (exit code, output)."""
    env = receiver_environment(db_path, 0)
    result = subprocess.run(
        [str(VENV_BIN / "receiver"), "check", "--db", str(db_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
    return result.returncode, result.stdout + result.stderr
