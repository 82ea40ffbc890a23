"""The single writer gunicorn's master runs for all workers, reached over its Unix socket."""

import socket
import sqlite3
import struct
import threading
import time

import pytest

from payloads import dumps, status
from receiver import store
from receiver.callbacks import parse
from receiver.config import load_settings
from receiver.writer import RemoteWriter, StorageError, WriterServer
from testing.processes import Gunicorn, stat_fields


@pytest.fixture
def server(db_path):
    server = WriterServer(load_settings(db_path=str(db_path), synchronous="NORMAL")).start()
    yield server
    server.close()


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
            results.append(remote.run("store_callback", parse(body), delivery(body)))
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
            remote.run("store_callback", parse(body), delivery(body))
        remote.close()
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    body = dumps(status("m-2", "d-1"))
    remote = client(server)
    assert remote.run("store_callback", parse(body), delivery(body)).callback_id == 1
    remote.close()


def test_a_bad_frame_or_a_vanished_worker_does_not_stop_the_writer(server):
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    raw.connect(server.path)
    garbage = b"not a pickle"
    raw.sendall(struct.pack("!I", len(garbage)) + garbage)
    size = struct.unpack("!I", raw.recv(4))[0]
    assert b"storage_error" in raw.recv(size)
    half = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    half.connect(server.path)
    half.sendall(struct.pack("!I", 1000) + b"partial")  # a worker killed mid-request
    half.close()
    raw.close()
    remote = client(server)
    assert remote.run("record_health", 1) is None
    remote.close()


def test_an_unreachable_writer_is_a_storage_error(tmp_path):
    remote = RemoteWriter(load_settings(db_path="unused"), str(tmp_path / "nothing.sock"))
    with pytest.raises(StorageError, match="unreachable"):
        remote.run("record_health", 1)


def _nice(pid):
    return int(stat_fields(pid)[16])


@pytest.mark.parametrize("setting, expected", [(None, 5), ("0", 0)])
def test_gunicorn_workers_yield_the_cpu_to_the_masters_writer(tmp_path, setting, expected):
    """The writer thread in the master is the stage every request waits for: under load the
    workers (GUNICORN_WORKER_NICE, default 5) must not crowd it out."""
    env = {} if setting is None else {"GUNICORN_WORKER_NICE": setting}
    server = Gunicorn(tmp_path / "events.db", tmp_path / "gunicorn.log", workers=2, **env)
    server.start()
    try:
        master, workers = _nice(server.master), [_nice(pid) for pid in server.worker_pids()]
        assert len(workers) == 2
        assert workers == [master + expected] * 2
    finally:
        assert server.stop() == []


def test_a_writer_that_does_not_answer_is_a_storage_error_after_the_commit_timeout(tmp_path):
    path = str(tmp_path / "silent.sock")
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.bind(path)
    silent.listen(1)  # accepts the connection (backlog), never reads or answers
    try:
        remote = RemoteWriter(load_settings(db_path="unused", commit_timeout_s=0.3), path)
        started = time.monotonic()
        with pytest.raises(StorageError, match="not confirmed within 0.3 s"):
            remote.run("record_health", 1)
        assert 0.25 < time.monotonic() - started < 5
        remote.close()
    finally:
        silent.close()
