"""The writer's socket: workers store through it; it refuses what is not a request; a worker
fails fast when the writer is gone or hung."""

import json
import os
import socket
import sqlite3
import struct
import threading
import time

import pytest

from payloads import dumps, final_report, status
from receiver import store
from receiver.callbacks import Rejection, parse
from receiver.rows import plan
from receiver.config import load_settings
from receiver.writer import (
    STALE_S,
    RemoteWriter,
    StorageError,
    WriterServer,
    encode_request,
)
from testing.processes import Gunicorn, stat_fields


@pytest.fixture
def server(db_path, tmp_path):
    server = WriterServer(load_settings(db_path=str(db_path), synchronous="NORMAL"),
                          str(tmp_path / "sock" / "writer.sock"))
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    yield server
    server.stop()
    thread.join(5)
    assert not thread.is_alive()


def client(server, **overrides):
    return RemoteWriter(load_settings(db_path="unused", commit_timeout_s=5, **overrides), server.path)


def delivery(body):
    return store.Delivery(body, "/webhooks/vonage", store.utcnow())


def test_workers_store_through_the_one_writer_and_share_commits(server, rows, db_path):
    bodies = [dumps(status(f"m-{i}", "d-1", price="0.01")) for i in range(40)]
    results = []

    def worker(chunk):
        remote = client(server)  # a connection of its own, as each worker process has
        for body in chunk:
            results.append(remote.run("store_planned", plan(parse(body), delivery(body))))
        remote.close()

    threads = [threading.Thread(target=worker, args=(bodies[i::8],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert sorted(r.callback_id for r in results) == list(range(1, 41))
    assert rows(db_path, "SELECT count(*) AS n, sum(price_nano) AS nano FROM status_events") == \
        [{"n": 40, "nano": 400_000_000}]
    assert server.writer.writes == 40
    assert server.writer.batches <= 40


def test_a_storage_failure_reaches_the_worker_as_storage_error(server, db_path):
    blocker = sqlite3.connect(db_path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # hold the write lock past the busy timeout
    try:
        server.writer.settings = load_settings(db_path=str(db_path), busy_timeout_ms=100)
        body = dumps(status("m-1", "d-1"))
        remote = client(server)
        with pytest.raises(StorageError):
            remote.run("store_planned", plan(parse(body), delivery(body)))
        remote.close()
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    body = dumps(status("m-2", "d-1"))
    remote = client(server)
    assert remote.run("store_planned", plan(parse(body), delivery(body))).callback_id == 1
    remote.close()


# --- frames that are not requests ------------------------------------------------------------


def _frame(payload):
    return struct.pack("!I", len(payload)) + payload


def _valid_request():
    """A request whose arguments are typed values (a Rejection, a Delivery with bytes)."""
    rejection = Rejection(400, "invalid_json", "The body is not JSON.", {"_body": ["no"]})
    return json.loads(encode_request("store_rejection", (rejection, delivery(b"{")), {}))


def _with(path, value):
    request = _valid_request()
    target = request
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return _frame(json.dumps(request).encode())


BAD_FRAMES = {
    "garbage": _frame(b"\x80\x04\x95 not json at all"),
    "a pickle": _frame(b"\x80\x04\x95\x1d\x00\x00\x00\x00\x00\x00\x00\x8c\x05posix\x94\x8c\x06"
                       b"system\x94\x93\x94\x8c\x05true\x94\x85\x94R\x94."),
    "JSON, not an object": _frame(b"[1, 2, 3]"),
    "an object of the wrong shape": _frame(b'{"op": "store_planned", "plan": 5}'),
    "an unknown operation": _frame(b'{"op": "rebuild_derived"}'),
    "a dunder operation": _frame(b'{"op": "__class__"}'),
    "an operation that is not a name": _frame(b'{"op": ["store_planned"], "plan": {}}'),
    "too few arguments": _frame(b'{"op": "store_rejection"}'),
    "an unknown argument": _with(["__init__"], "x"),
    "an argument of the wrong type": _with(["rejection"], "os.system"),
    "a field of the wrong type": _with(["delivery", "received_at"], 12),
    "an unknown field": _with(["delivery", "__init__"], "x"),
    "bytes that are not base64": _with(["delivery", "body"], "%%%"),
}


@pytest.mark.parametrize("name", BAD_FRAMES)
def test_a_frame_that_is_not_a_request_is_refused_and_runs_nothing(server, rows, db_path, name):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
        raw.settimeout(5)
        raw.connect(server.path)
        raw.sendall(BAD_FRAMES[name])
        size = struct.unpack("!I", raw.recv(4))[0]
        status_, reason = json.loads(raw.recv(size))
    assert status_ == "bad_request", reason
    _still_serving(server, rows, db_path)


def test_a_huge_length_prefix_is_refused_without_reading_it(server, rows, db_path):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
        raw.settimeout(5)
        raw.connect(server.path)
        raw.sendall(struct.pack("!I", server.max_frame + 1) + b"{")
        size = struct.unpack("!I", raw.recv(4))[0]
        assert json.loads(raw.recv(size))[0] == "bad_request"
        assert raw.recv(10) == b""  # and the connection is closed: no way to resynchronise
    _still_serving(server, rows, db_path)


def test_a_truncated_frame_or_a_vanished_worker_does_not_stop_the_writer(server, rows, db_path):
    half = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    half.connect(server.path)
    half.sendall(_frame(json.dumps(_valid_request()).encode())[:60])  # killed mid-request
    half.close()
    _still_serving(server, rows, db_path)


def _still_serving(server, rows, db_path):
    """Nothing was stored by what came before; the next real request is served."""
    assert rows(db_path, "SELECT count(*) AS n FROM callbacks") == [{"n": 0}]
    assert rows(db_path, "SELECT count(*) AS n FROM rejected_callbacks") == [{"n": 0}]
    remote = client(server)
    body = dumps(status("m-after", "d-after"))
    assert remote.run("store_planned", plan(parse(body), delivery(body))).callback_id == 1
    remote.close()


# --- a writer that is gone or hung: the worker knows at once ---------------------------------


def test_an_unreachable_writer_is_a_storage_error_at_once(tmp_path):
    remote = RemoteWriter(load_settings(db_path="unused"), str(tmp_path / "nothing.sock"))
    started = time.monotonic()
    with pytest.raises(StorageError, match="not running"):
        remote.run("record_health", 1)
    assert time.monotonic() - started < 0.1


class FakeWriter:
    """A socket that accepts connections and never answers; it beats while ``beating``."""

    def __init__(self, path):
        self.path = path
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(1)  # accepts (backlog), never reads or answers
        self.beating = threading.Event()
        self.beating.set()
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)
        self.thread.start()

    def _beat(self):
        while not self.closed.wait(0.05):
            if self.beating.is_set():
                now = time.monotonic_ns()
                os.utime(self.path, ns=(now, now))

    def close(self):
        self.closed.set()
        self.thread.join()
        self.listener.close()


@pytest.fixture
def fake_writer(tmp_path):
    fake = FakeWriter(str(tmp_path / "silent.sock"))
    time.sleep(0.1)
    yield fake
    fake.close()


def test_a_live_writer_that_does_not_answer_is_a_storage_error_after_the_commit_timeout(
        fake_writer):
    remote = RemoteWriter(load_settings(db_path="unused", commit_timeout_s=0.3), fake_writer.path)
    started = time.monotonic()
    with pytest.raises(StorageError, match="not confirmed within 0.3 s"):
        remote.run("record_health", 1)
    assert 0.25 < time.monotonic() - started < 5
    remote.close()


def test_a_writer_whose_heartbeat_stops_is_a_storage_error_within_the_stale_limit(fake_writer):
    """A request already waiting gives up once the beat is STALE_S old, not after the commit
    timeout; the next one is refused before it is sent."""
    remote = RemoteWriter(load_settings(db_path="unused", commit_timeout_s=30), fake_writer.path)
    threading.Timer(0.2, fake_writer.beating.clear).start()  # hung, as with SIGSTOP
    started = time.monotonic()
    with pytest.raises(StorageError, match="not responding"):
        remote.run("record_health", 1)
    assert time.monotonic() - started < 0.2 + STALE_S + 0.5
    started = time.monotonic()
    with pytest.raises(StorageError, match="not responding"):
        remote.run("record_health", 1)
    assert time.monotonic() - started < 0.05
    remote.close()


# --- the gunicorn side -----------------------------------------------------------------------


def _nice(pid):
    return int(stat_fields(pid)[16])


@pytest.mark.parametrize("setting, expected", [(None, 0), ("5", 5)])
def test_gunicorn_starts_a_writer_and_a_standby_and_workers_at_the_nice_asked(
        tmp_path, setting, expected):
    """The writer (and its standby) are children of the master beside the workers, at the
    master's priority; the workers run at GUNICORN_WORKER_NICE (default 0) above it."""
    env = {} if setting is None else {"GUNICORN_WORKER_NICE": setting}
    server = Gunicorn(tmp_path / "events.db", tmp_path / "gunicorn.log", workers=2, **env)
    server.start()
    try:
        deadline = time.monotonic() + 20
        while len(server.writer_pids()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        writers = server.writer_pids()
        master, workers = _nice(server.master), [_nice(pid) for pid in server.worker_pids()]
        assert len(writers) == 2 and [_nice(pid) for pid in writers] == [master] * 2
        assert workers == [master + expected] * 2
    finally:
        assert server.stop() == []  # the writer too is gone after a TERM to the group


def test_a_plans_keys_never_become_sql(server, rows, db_path):
    """A plan crosses the socket as plain JSON: its keys are bound parameters, never column
    names, so a key written as SQL runs nothing."""
    body = dumps(final_report("d-sql"))
    planned = plan(parse(body), delivery(body))
    planned["report"]["dispatch_uuid) VALUES ('x'); DROP TABLE messages; --"] = "x"
    remote = client(server)
    remote.run("store_planned", planned)
    remote.close()
    assert rows(db_path, "SELECT count(*) AS n FROM messages") == [{"n": 0}]
    assert rows(db_path, "SELECT dispatch_uuid FROM final_reports") == [{"dispatch_uuid": "d-sql"}]


def test_a_stopping_writer_derives_what_it_committed_before_it_exits(db_path, tmp_path,
                                                                     monkeypatch, rows):
    """A graceful stop (the master closes the writer's stdin on TERM, HUP of the old master
    after USR2) leaves the derived rows caught up, however far the next projection was."""
    from receiver import writer as writer_module

    monkeypatch.setattr(writer_module, "PROJECT_EVERY_S", 3600)
    server = WriterServer(load_settings(db_path=str(db_path), synchronous="NORMAL"),
                          str(tmp_path / "sock" / "writer.sock"))
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    remote = client(server)
    for i in range(5):
        body = dumps(status(f"m-{i}", "d-stop", "delivered"))
        remote.run("store_planned", plan(parse(body), delivery(body)))
    remote.close()
    # Not derived yet: the next projection is an hour away.
    assert rows(db_path, "SELECT count(*) AS n FROM messages") == [{"n": 0}]
    server.stop()
    thread.join(5)
    assert rows(db_path, "SELECT count(*) AS n FROM messages") == [{"n": 5}]
    assert rows(db_path, "SELECT message_count FROM dispatches") == [{"message_count": 5}]
