"""Helpers for the durability tests: a real gunicorn in its own process group, a threaded load
generator that records what every distinct callback got, and checks of the file afterwards.

Nothing here is mocked: gunicorn is started with the repository's config/gunicorn.conf.py,
callbacks are posted over HTTP on 127.0.0.1, and the database is read with sqlite3 and
``receiver check`` once every process is gone.
"""

import hashlib
import http.client
import itertools
import os
import signal
import sqlite3
import subprocess
import threading
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

from servers import ROOT, VENV_BIN, free_port

from receiver import simulate

# Settings the test must control, not inherit from whoever runs pytest.
INHERITED_PREFIXES = ("RECEIVER_", "GUNICORN_", "DATASETTE_", "VONAGE_")
INHERITED_NAMES = ("PORT", "HOST", "WEB_CONCURRENCY")
JSON_HEADERS = {"Content-Type": "application/json", "User-Agent": "durability-test/1.0"}


# --- processes -----------------------------------------------------------------------------


def stat_fields(pid):
    """The fields of /proc/<pid>/stat after the command name (state first, nice at 16), or
    None when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            raw = file.read().decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return None
    return raw[raw.rindex(")") + 2:].split()


def _live_pids(field, value):
    """Live (not zombie) pids whose stat field ``field`` (1: ppid, 2: pgid) is ``value``."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields_ = stat_fields(int(name))
            if fields_ is not None and fields_[0] not in ("Z", "X") and int(fields_[field]) == value:
                found.append(int(name))
    return sorted(found)


def children(pid):
    """Live (not zombie) child pids of ``pid``, found by scanning /proc."""
    return _live_pids(1, pid)


def _cmdline(pid):
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
    except OSError:
        return "?"


def group_members(pgid):
    """Live (not zombie) pids in process group ``pgid``.

    Workers orphaned by a killed master are reparented to pid 1, which may never reap them
    in a container; a zombie holds nothing (no files, no locks), so it counts as gone.
    """
    return _live_pids(2, pgid)


def receiver_environment(db_path, port, **extra):
    env = {
        key: value for key, value in os.environ.items()
        if not key.startswith(INHERITED_PREFIXES) and key not in INHERITED_NAMES
    }
    env.update(
        PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        RECEIVER_DB=str(db_path),
        PORT=str(port),
        HOST="127.0.0.1",
        GUNICORN_ACCESS_LOG="",
        PYTHONUNBUFFERED="1",
    )
    env.update({key: str(value) for key, value in extra.items()})
    return env


class Gunicorn:
    """``gunicorn -c config/gunicorn.conf.py receiver.wsgi:app`` in its own session.

    The master is the session leader, so its pid is the process group id of it and its
    workers. Each start appends to the same log file.
    """

    def __init__(self, db_path, log_path, *, workers=2, port=None, **env):
        self.db_path = Path(db_path)
        self.log_path = Path(log_path)
        self.port = port or free_port()
        self.workers = workers
        self.env = receiver_environment(db_path, self.port, WEB_CONCURRENCY=workers, **env)
        self.popen = None
        self.starts = 0

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    @property
    def master(self):
        return self.popen.pid

    def start(self, timeout=20.0):
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== start #{self.starts + 1} on port {self.port}\n".encode())
            log.flush()
            self.popen = subprocess.Popen(
                [str(VENV_BIN / "gunicorn"), "-c", "config/gunicorn.conf.py",
                 "receiver.wsgi:app"],
                cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        self.starts += 1
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout=20.0):
        """Until /healthz answers 200 and every worker is up."""
        deadline = time.monotonic() + timeout
        last = None
        while True:
            code = self.popen.poll()
            if code is not None:
                raise RuntimeError(f"gunicorn exited with {code} during start-up\n{self.output()}")
            status, _ = get(self.port, "/healthz", timeout=2)
            last = status
            if status == 200 and len(self.worker_pids()) == self.workers:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"gunicorn not ready after {timeout} s (/healthz: {last}, "
                                   f"workers: {self.worker_pids()})\n{self.output()}")
            time.sleep(0.1)

    def worker_pids(self):
        return children(self.master)

    def wait_workers(self, replaced, timeout=10.0):
        """Until the master has its full complement of workers again, none of ``replaced``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pids = self.worker_pids()
            if len(pids) == self.workers and not set(pids) & set(replaced):
                return pids
            time.sleep(0.05)
        raise RuntimeError(f"gunicorn did not respawn workers within {timeout} s "
                           f"(have {self.worker_pids()}, replaced {replaced})\n{self.output()}")

    def kill9_all(self, timeout=10.0):
        """SIGKILL the master, then every process left in its group; wait until none lives."""
        pgid = self.master
        os.kill(self.master, signal.SIGKILL)
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.popen.wait(timeout=timeout)
        self._wait_group_gone(pgid, timeout)

    def stop(self, grace=25.0):
        """SIGTERM the group, SIGKILL what is left after ``grace`` s. Returns problems found.

        The grace exceeds config/gunicorn.conf.py's graceful_timeout (20 s), the time gunicorn
        itself gives workers to finish their requests on SIGTERM.
        """
        if self.popen is None:
            return []
        pgid = self.master
        problems = []
        if group_members(pgid) or self.popen.poll() is None:
            try:
                os.killpg(pgid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + grace
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
            while group_members(pgid) and time.monotonic() < deadline:
                time.sleep(0.05)
        if self.popen.poll() is None or group_members(pgid):
            left = [f"{pid}: {_cmdline(pid)}" for pid in group_members(pgid)]
            problems.append(f"gunicorn group {pgid} still running {grace} s after SIGTERM: {left}")
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout=10)
                self._wait_group_gone(pgid, 10)
            except (subprocess.TimeoutExpired, RuntimeError) as error:
                problems.append(str(error))
        return problems

    @staticmethod
    def _wait_group_gone(pgid, timeout):
        deadline = time.monotonic() + timeout
        while group_members(pgid):
            if time.monotonic() > deadline:
                raise RuntimeError(f"process group {pgid} survived SIGKILL: {group_members(pgid)}")
            time.sleep(0.02)

    def output(self, tail=20_000):
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return text if len(text) <= tail else "[...]\n" + text[-tail:]


def get(port, path, timeout=2.0):
    """(status, headers) of a GET, or (error name, {}) when there is no HTTP answer."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status, dict(response.getheaders())
    except (OSError, http.client.HTTPException) as error:
        return type(error).__name__, {}
    finally:
        conn.close()


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
