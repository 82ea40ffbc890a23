"""When the database cannot take a write the answer is 503 (Vonage retries), never a 2xx.

The tests run as root, and root ignores permission bits: chmod 0444 does not make a file
read-only for it. What does stop root: the immutable attribute (chattr +i), SQLite's write
lock held by another connection, and a file-size limit (RLIMIT_FSIZE) standing in for a
full disk. Each test first shows its failure is real.
"""

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from contextlib import closing, contextmanager
from pathlib import Path

import pytest

from conftest import post_to
from payloads import dumps, final_report, status
from receiver import create_app
from receiver.writer import WriteFailed, _Pending

TESTS_DIR = str(Path(__file__).resolve().parent)


def count(rows, db_path, table):
    return rows(db_path, f"SELECT count(*) AS n FROM {table}")[0]["n"]


def assert_unavailable(response):
    """A 503 that tells Vonage to retry, and claims nothing was stored."""
    assert response.status_code == 503
    assert response.is_json
    assert response.headers["Retry-After"] == "5"
    answer = response.get_json()
    assert answer["reason"] == "storage_unavailable"
    assert "callback_id" not in answer and "rejected_id" not in answer
    assert answer.get("status") not in ("stored", "duplicate")


# --- read-only -----------------------------------------------------------------------------


def _chattr(flag, path):
    return subprocess.run(["chattr", flag, str(path)], capture_output=True, text=True)


class ReadOnly:
    """Make paths read-only for this process: chattr +i as root (which ignores mode bits),
    chmod for anyone else. ``clear`` undoes it; the fixture clears whatever is left."""

    def __init__(self):
        self.as_root = os.geteuid() == 0
        self.modes = {}

    def set(self, path):
        if self.as_root:
            result = _chattr("+i", path)
            assert result.returncode == 0, result.stderr
            self.modes[path] = None
        else:
            self.modes[path] = path.stat().st_mode
            path.chmod(0o555 if path.is_dir() else 0o444)

    def clear(self, path):
        mode = self.modes.pop(path)
        if self.as_root:
            _chattr("-i", path)
        else:
            path.chmod(mode)


@pytest.fixture
def read_only(tmp_path_factory):
    """A ReadOnly whose method is first shown to stop this process writing."""
    ro = ReadOnly()
    if ro.as_root and shutil.which("chattr") is None:
        pytest.skip("running as root without chattr: nothing makes a file read-only for root")
    probe = tmp_path_factory.mktemp("read-only-probe") / "probe"
    probe.write_bytes(b"x")
    try:
        ro.set(probe)
    except AssertionError as error:
        pytest.skip(f"chattr +i refused (no CAP_LINUX_IMMUTABLE or unsupported filesystem): {error}")
    try:
        probe.write_bytes(b"y")
        stopped = False
    except PermissionError:
        stopped = True
    finally:
        ro.clear(probe)
    if not stopped:
        pytest.skip("this process can write to a read-only file (capabilities): cannot test read-only")
    yield ro
    for path in list(ro.modes):
        ro.clear(path)


@pytest.mark.parametrize("what", ["file", "directory"])
def test_a_read_only_database_answers_503_and_recovers(db_path, rows, read_only, what):
    if what == "file":
        # No connection is open: the database and any -wal/-shm left beside it.
        targets = [p for p in db_path.parent.iterdir() if p.name.startswith(db_path.name)]
    else:
        targets = [db_path.parent]  # the -wal, -shm and lock files cannot be created
    for target in targets:
        read_only.set(target)
    with pytest.raises(sqlite3.OperationalError):  # the failure is real, for root too
        with closing(sqlite3.connect(db_path)) as conn:
            conn.execute("INSERT INTO receiver_health (id, checked_at) VALUES (1, 'x')")
            conn.commit()
    client = create_app({"db_path": str(db_path)}).test_client()

    assert_unavailable(post_to(client, dumps(status())))
    # A body that would be rejected cannot be kept either: 503 rather than a 4xx that loses it.
    assert_unavailable(post_to(client, b"not json"))
    health = client.get("/healthz")
    assert health.status_code == 503
    assert health.get_json()["status"] == "unavailable"

    for target in targets:
        read_only.clear(target)
    assert count(rows, db_path, "callbacks") == 0
    assert count(rows, db_path, "rejected_callbacks") == 0
    # Writable again: the same app stores the next callback without a restart.
    response = post_to(client, dumps(status()))
    assert response.status_code == 200
    assert client.get("/healthz").status_code == 200
    assert count(rows, db_path, "callbacks") == 1


# --- locked: another connection holds the write lock past the busy timeout ---------------


@contextmanager
def write_lock(db_path):
    """Hold SQLite's write lock from another connection, as another process would."""
    conn = sqlite3.connect(str(db_path), isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    finally:
        conn.execute("ROLLBACK")
        conn.close()


def test_a_database_locked_past_the_busy_timeout_answers_503(db_path, rows):
    client = create_app({"db_path": str(db_path), "busy_timeout_ms": 200}).test_client()
    body = dumps(status("m-locked", "d-locked"))
    with write_lock(db_path):
        started = time.monotonic()
        assert_unavailable(post_to(client, body))
        assert time.monotonic() - started >= 0.2  # it waited for the lock first
        assert_unavailable(post_to(client, b"{broken"))
        assert client.get("/healthz").status_code == 503
    assert count(rows, db_path, "callbacks") == 0
    assert count(rows, db_path, "rejected_callbacks") == 0
    # Lock released: Vonage's retry of the same body is stored, once.
    response = post_to(client, body)
    assert response.status_code == 200
    assert response.get_json()["status"] == "stored"
    assert rows(db_path, "SELECT delivery_count FROM callbacks") == [{"delivery_count": 1}]
    assert count(rows, db_path, "status_events") == 1


def test_a_lock_released_within_the_busy_timeout_is_waited_for(db_path, rows):
    client = create_app({"db_path": str(db_path), "busy_timeout_ms": 5000}).test_client()
    other = sqlite3.connect(str(db_path), isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.3, other.execute, ("ROLLBACK",))
    release.start()
    try:
        started = time.monotonic()
        response = post_to(client, dumps(status()))
        waited = time.monotonic() - started
    finally:
        release.join()
        other.close()
    assert response.status_code == 200
    assert waited >= 0.25  # it was held up by the lock, and then stored
    assert count(rows, db_path, "callbacks") == 1


# --- disk full: a file-size limit in a child process ---------------------------------------

CHILD = textwrap.dedent("""
    import json, os, resource, signal, sys
    sys.path.insert(0, sys.argv[2])
    from payloads import dumps, status
    from receiver import create_app

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG from write() instead of dying
    path = sys.argv[1]
    client = create_app({"db_path": path}).test_client()
    post = lambda body: client.post("/webhooks/vonage", data=body, content_type="application/json")
    out = {"before": post(dumps(status("m-small"))).status_code}
    biggest = max(os.path.getsize(path + suffix) for suffix in ("", "-wal") if os.path.exists(path + suffix))
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (biggest + 8192, hard))
    try:
        with open(path + ".probe", "wb") as probe:
            probe.write(b"x" * (biggest + 100_000))
        out["limit_works"] = False
    except OSError:
        out["limit_works"] = True
    os.remove(path + ".probe")
    big = dumps(status("m-big", note="x" * 300_000))
    response = post(big)
    out["full"] = [response.status_code, response.headers.get("Retry-After"), response.get_json()]
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    response = post(big)
    out["after"] = [response.status_code, response.get_json()]
    print(json.dumps(out))
""")


def test_a_full_disk_answers_503_and_recovers(db_path, rows):
    result = subprocess.run([sys.executable, "-c", CHILD, str(db_path), TESTS_DIR],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["before"] == 200
    assert out["limit_works"] is True
    code, retry_after, answer = out["full"]
    assert (code, retry_after, answer["reason"]) == (503, "5", "storage_unavailable")
    assert out["after"][0] == 200
    assert out["after"][1]["status"] == "stored"  # not "duplicate": the failed write left nothing
    assert [r["message_uuid"] for r in rows(db_path, "SELECT message_uuid FROM status_events ORDER BY id")] == [
        "m-small", "m-big"]


# --- group commit: a batch's writes succeed or fail by themselves -------------------------


@contextmanager
def held_writer(app):
    """Block the app's writer thread so that the requests sent meanwhile form one batch."""
    writer = app.extensions["receiver.writer"]
    entered, release = threading.Event(), threading.Event()
    blocker = threading.Thread(target=writer.submit,
                               args=(_Pending(lambda conn: (entered.set(), release.wait(10))),))
    blocker.start()
    assert entered.wait(5)
    try:
        yield writer
    finally:
        release.set()
        blocker.join(10)


def post_concurrently(app, bodies, writer):
    """Post ``bodies`` from one thread each while the writer is held; return the responses."""
    responses = [None] * len(bodies)

    def send(i):
        responses[i] = post_to(app.test_client(), bodies[i])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 5
    while writer.queued() < len(bodies) and time.monotonic() < deadline:
        time.sleep(0.005)
    assert writer.queued() == len(bodies)
    return threads, responses


def test_concurrent_callbacks_share_one_commit(app, rows, db_path):
    bodies = [dumps(status(f"m-{i}", "d-1", price="0.01")) for i in range(8)]
    with held_writer(app) as writer:
        threads, responses = post_concurrently(app, bodies, writer)
        batches = writer.batches
    for thread in threads:
        thread.join(10)
    assert [r.status_code for r in responses] == [200] * 8
    assert writer.batches == batches + 2  # the held batch, then all eight in one
    assert count(rows, db_path, "status_events") == 8
    assert rows(db_path, "SELECT messages_price FROM dispatches") == [{"messages_price": "0.08"}]


def test_one_failing_write_does_not_fail_its_batch(app, rows, db_path):
    """A write that fails on its own (here SQLite's integer overflow in sum()) fails alone:
    its batch-mates are committed, and it gets WriteFailed, not a storage failure."""
    good = [dumps(status(f"m-{i}", "d-1")) for i in range(3)]
    outcome = {}
    writer = app.extensions["receiver.writer"]

    def overflow():
        try:
            writer.submit(_Pending(lambda conn: conn.execute(
                "SELECT sum(x) FROM (SELECT 9223372036854775807 AS x UNION ALL SELECT 1)").fetchone()))
        except Exception as error:  # noqa: BLE001 - recorded and asserted below
            outcome["error"] = error

    with held_writer(app):
        threads, responses = post_concurrently(app, good, writer)
        failing = threading.Thread(target=overflow)
        failing.start()
        deadline = time.monotonic() + 5
        while writer.queued() < len(good) + 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert writer.queued() == len(good) + 1  # all four will form one batch
    for thread in [*threads, failing]:
        thread.join(10)
    assert isinstance(outcome.get("error"), WriteFailed), outcome
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert count(rows, db_path, "status_events") == 3
