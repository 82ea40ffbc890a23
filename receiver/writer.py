"""Group commit: one writer shares each synced commit among all the requests in flight.

Requests hand their write to the writer and wait. The writer takes everything queued, runs it
in one ``BEGIN IMMEDIATE`` transaction, commits (synced to disk with ``synchronous=FULL``) and
only then wakes the requests, so no request is answered before its data is durable, while one
fsync serves a whole batch.

Under gunicorn there is one writer for all worker processes: ``WriterServer`` runs in the
master (started by config/gunicorn.conf.py) and the workers reach it through a private Unix
socket with ``RemoteWriter``. One writing connection means no lock contention between
processes and a page cache that stays warm. Without that socket (the Flask test client, a
single process) the app uses an in-process ``GroupCommitWriter`` thread.
"""

import dataclasses
import logging
import os
import pickle
import queue
import selectors
import socket
import sqlite3
import struct
import tempfile
import threading

from . import db, store
from .callbacks import Callback
from .signatures import Signature

log = logging.getLogger("receiver.writer")


class StorageError(Exception):
    """The write could not be committed (locked, disk full, read-only...); answer 503."""


class WriteFailed(StorageError):
    """This one write failed while the database is fine (e.g. an integer overflow in a sum):
    retrying it would fail again."""


# Primary SQLite result codes that mean the database itself cannot take writes now: the whole
# batch fails and every request in it gets 503. Any other error fails only its own write.
DATABASE_FAILURES = {
    5,   # SQLITE_BUSY
    6,   # SQLITE_LOCKED
    7,   # SQLITE_NOMEM
    8,   # SQLITE_READONLY
    9,   # SQLITE_INTERRUPT
    10,  # SQLITE_IOERR
    11,  # SQLITE_CORRUPT
    13,  # SQLITE_FULL
    14,  # SQLITE_CANTOPEN
    15,  # SQLITE_PROTOCOL
    26,  # SQLITE_NOTADB
}


def is_database_failure(error):
    """True when ``error`` says the database cannot take writes (not that one write is bad)."""
    code = getattr(error, "sqlite_errorcode", None)
    if code is None:
        return isinstance(error, sqlite3.OperationalError)
    return (code & 0xFF) in DATABASE_FAILURES


class _Pending:
    __slots__ = ("work", "done", "result", "error")

    def __init__(self, work, done=None):
        self.work = work
        self.done = done  # an Event for a waiting thread; the WriterServer answers sockets
        self.result = None
        self.error = None


class GroupCommitWriter:
    """Serialises this process's writes through one connection, committing them in batches."""

    def __init__(self, settings):
        self.settings = settings
        self._lock = threading.Lock()
        self._pid = None
        self._queue = None
        self._conn = None
        self.batches = 0
        self.writes = 0

    def run(self, operation, *args, **kwargs):
        """Run the store operation named ``operation`` (see OPERATIONS) and return its result."""
        return self.submit(work(operation, args, kwargs))

    def submit(self, work):
        """Run ``work(conn)`` inside a committed transaction and return its result.

        Raises StorageError when the transaction could not be committed in time.
        """
        pending = _Pending(work, threading.Event())
        self._ensure_started().put(pending)
        if not pending.done.wait(self.settings.commit_timeout_s):
            raise StorageError(
                f"commit not confirmed within {self.settings.commit_timeout_s} s"
            )
        if pending.error is not None:
            raise pending.error
        return pending.result

    def queued(self):
        """How many writes wait for the writer thread to take them into a batch."""
        return self._queue.qsize() if self._queue is not None else 0

    def _ensure_started(self):
        # Started lazily and again after a fork: threads and connections never cross a fork.
        pid = os.getpid()
        if self._pid != pid:
            with self._lock:
                if self._pid != pid:
                    self._queue = queue.SimpleQueue()
                    thread = threading.Thread(
                        target=self._run, args=(self._queue,), name="group-commit", daemon=True
                    )
                    thread.start()
                    self._pid = pid
        return self._queue

    def _run(self, work_queue):
        while True:
            batch = [work_queue.get()]
            while len(batch) < self.settings.max_batch:
                try:
                    batch.append(work_queue.get_nowait())
                except queue.Empty:
                    break
            self.commit_batch(batch)
            for pending in batch:
                pending.done.set()

    def commit_batch(self, batch):
        """Run a batch of pending writes in one synced transaction; set each one's outcome.

        Called by one thread only (the writer thread, or the WriterServer's loop).
        """
        try:
            if self._conn is None:
                self._conn = db.connect_settings(self.settings)
            self._commit(self._conn, batch)
        except sqlite3.Error as error:
            log.error("storage failed, answering 503 to %d request(s): %s", len(batch), error)
            self._fail(batch, StorageError(str(error)))
        except BaseException as error:  # a bug must not kill the writer or hang requests
            log.exception("unexpected error in the writer")
            self._fail(batch, StorageError(f"internal error: {error!r}"))

    def _fail(self, batch, failure):
        for pending in batch:
            pending.result, pending.error = None, failure
        self._conn = self._reset(self._conn)

    def _commit(self, conn, batch):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for pending in self._store_planned_together(conn, batch):
                conn.execute("SAVEPOINT item")
                try:
                    pending.result = pending.work(conn)
                except Exception as error:
                    if isinstance(error, sqlite3.Error) and is_database_failure(error):
                        raise  # the database itself is failing: the whole batch fails
                    # One bad write (a bug, an overflow) fails alone, not its batch-mates.
                    conn.execute("ROLLBACK TO item")
                    log.exception("one write failed; its batch-mates go on")
                    pending.error = WriteFailed(f"{type(error).__name__}: {error}")
                conn.execute("RELEASE item")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            raise
        self.batches += 1
        self.writes += len(batch)

    @staticmethod
    def _store_planned_together(conn, batch):
        """Store the batch's planned callbacks with one set-based store_batch; return the
        writes left to run one by one (all of them if one planned callback fails: the others
        then go on without it)."""
        planned = [p for p in batch if getattr(p.work, "planned", None) is not None]
        if len(planned) < 2:
            return batch
        conn.execute("SAVEPOINT together")
        try:
            results = store.store_batch(conn, [p.work.planned for p in planned])
        except Exception as error:
            if isinstance(error, sqlite3.Error) and is_database_failure(error):
                raise
            conn.execute("ROLLBACK TO together")
            conn.execute("RELEASE together")
            return batch
        conn.execute("RELEASE together")
        for pending, result in zip(planned, results):
            pending.result = result
        return [p for p in batch if getattr(p.work, "planned", None) is None]

    def close(self):
        """Close the writer's connection (by the thread that commits)."""
        self._conn = self._reset(self._conn)

    @staticmethod
    def _reset(conn):
        """Drop a connection after a failure; the next batch opens a fresh one."""
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error:
                pass
        return None


# What a writer can be asked to do: store.<function>(conn, *args, **kwargs).
OPERATIONS = {
    "store_planned": store.store_planned,
    "store_callback": store.store_callback,
    "store_rejection": store.store_rejection,
    "record_health": store.record_health,
}


def work(operation, args, kwargs):
    """The write ``operation`` names, as a function of a connection (KeyError if unknown)."""
    function = OPERATIONS[operation]

    def run(conn):
        return function(conn, *args, **kwargs)

    # A planned callback can be stored together with its batch-mates (store.store_batch).
    run.planned = args[0] if operation == "store_planned" else None
    return run


# Frames between workers and the writer are pickles of plain tuples: each value travels as
# (tag, field values) for the dataclasses a write takes, (None, value) for anything else, and
# is rebuilt on the other side. That costs a third of pickling the objects themselves
# (measured: 10 us against 27 us per status callback).
_FLAT = {cls: (tag, tuple(f.name for f in dataclasses.fields(cls)))
         for tag, cls in (("D", store.Delivery), ("S", Signature), ("C", Callback),
                          ("R", store.Stored))}
_BY_TAG = {tag: cls for cls, (tag, _) in _FLAT.items()}


def _flatten(value):
    flat = _FLAT.get(type(value))
    if flat is None:
        return (None, value)
    tag, names = flat
    return (tag, tuple([getattr(value, name) for name in names]))


def _rebuild(flat):
    tag, value = flat
    return value if tag is None else _BY_TAG[tag](*value)


def encode_request(operation, args, kwargs):
    """A worker's request to the writer as frame bytes."""
    return pickle.dumps((operation, tuple([_flatten(a) for a in args]), kwargs),
                        protocol=pickle.HIGHEST_PROTOCOL)


def decode_request(frame):
    """Frame bytes -> the write they ask for (raises on anything malformed)."""
    operation, args, kwargs = pickle.loads(frame)
    return work(operation, tuple([_rebuild(a) for a in args]), kwargs)


_LENGTH = struct.Struct("!I")


def _send_frame(sock, payload):
    sock.sendall(_LENGTH.pack(len(payload)) + payload)


def _recv_exactly(sock, size):
    chunks, remaining = [], size
    while remaining:
        chunk = sock.recv(remaining)
        if not chunk:
            raise ConnectionError("writer connection closed")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _recv_frame(sock):
    head = sock.recv(4096)  # a reply is a few dozen bytes: one recv holds it whole
    if len(head) < _LENGTH.size:
        if not head:
            raise ConnectionError("writer connection closed")
        head += _recv_exactly(sock, _LENGTH.size - len(head))
    (size,) = _LENGTH.unpack_from(head)
    body = head[_LENGTH.size:]
    if len(body) < size:
        body += _recv_exactly(sock, size - len(body))
    return body


class WriterServer:
    """The single writer for every worker process: a GroupCommitWriter behind a Unix socket.

    The socket lives in a fresh private directory (mode 0700), so only this user can reach it
    (the frames are pickles: never expose the socket to anyone else).
    """

    def __init__(self, settings):
        self.writer = GroupCommitWriter(settings)
        self.directory = tempfile.mkdtemp(prefix="receiver-writer-")
        self.path = os.path.join(self.directory, "writer.sock")
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen(256)
        self._closed = False

    def start(self):
        """Serve the workers from one background thread; returns self."""
        self._thread = threading.Thread(target=self._loop, name="writer", daemon=True)
        self._thread.start()
        return self

    def _loop(self):
        """One thread: read every complete request that has arrived, commit them all as one
        batch, answer each, repeat. No thread hand-offs, so no GIL contention."""
        selector = selectors.DefaultSelector()
        selector.register(self.listener, selectors.EVENT_READ)
        buffers = {}
        try:
            while not self._closed:
                try:
                    self._serve_once(selector, buffers)
                except Exception:  # noqa: BLE001 - the writer must outlive any one bug
                    log.exception("writer loop error; serving on")
        finally:
            for conn in buffers:
                conn.close()
            selector.close()
            self.writer.close()

    def _serve_once(self, selector, buffers):
        try:
            events = selector.select(timeout=0.5)  # wakes now and then to notice close()
        except OSError:
            self._closed = True
            return
        batch = []
        for key, _ in events:
            if key.fileobj is self.listener:
                try:
                    conn, _ = self.listener.accept()
                except OSError:
                    continue
                selector.register(conn, selectors.EVENT_READ)
                buffers[conn] = bytearray()
                continue
            conn = key.fileobj
            try:
                data = conn.recv(1 << 20)
            except OSError:
                data = b""
            if not data:
                selector.unregister(conn)
                buffers.pop(conn, None)
                conn.close()
                continue
            buffer = buffers[conn]
            buffer += data
            while len(buffer) >= _LENGTH.size:
                (size,) = _LENGTH.unpack_from(buffer)
                if len(buffer) < _LENGTH.size + size:
                    break
                frame = bytes(buffer[_LENGTH.size:_LENGTH.size + size])
                del buffer[:_LENGTH.size + size]
                batch.append((conn, self._pending(frame)))
        if batch:
            self._commit_and_answer(batch)

    def _pending(self, frame):
        """A worker's request frame -> a pending write (or one already failed)."""
        try:
            pending = _Pending(decode_request(frame))
        except Exception as error:  # noqa: BLE001 - a bad frame fails alone
            pending = _Pending(None)
            pending.error = StorageError(f"bad request to the writer: {error!r}")
        return pending

    def _commit_and_answer(self, batch):
        runnable = [pending for _, pending in batch if pending.work is not None]
        for start in range(0, len(runnable), self.writer.settings.max_batch):
            self.writer.commit_batch(runnable[start:start + self.writer.settings.max_batch])
        for conn, pending in batch:
            if pending.error is None:
                reply = ("ok", _flatten(pending.result))
            elif isinstance(pending.error, WriteFailed):
                reply = ("write_failed", str(pending.error))
            else:
                reply = ("storage_error", str(pending.error))
            try:
                _send_frame(conn, pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL))
            except OSError:
                pass  # the worker is gone; the selector drops its connection

    def close_in_child(self):
        """In a forked worker: drop the inherited listening socket (the master keeps it)."""
        self.listener.close()

    def close(self):
        """In the master, at exit: stop serving and remove the socket."""
        self._closed = True
        if getattr(self, "_thread", None) is not None:
            self._thread.join(2)
        self.listener.close()
        for path in (self.path, self.directory):
            try:
                (os.unlink if path == self.path else os.rmdir)(path)
            except OSError:
                pass


class RemoteWriter:
    """A worker's handle on the master's WriterServer (one connection per thread)."""

    def __init__(self, settings, path):
        self.settings = settings
        self.path = path
        self._local = threading.local()

    def _connection(self):
        conn = getattr(self._local, "conn", None)
        if conn is None or self._local.pid != os.getpid():
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            # Kernel-side timeouts on a blocking socket: no poll() before every send and recv.
            seconds = self.settings.commit_timeout_s
            timeval = struct.pack("ll", int(seconds), int(seconds % 1 * 1_000_000))
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
            try:
                conn.connect(self.path)
            except OSError:
                conn.close()
                raise
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    def close(self):
        """Close this thread's connection to the writer."""
        self._drop()

    def _drop(self):
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            conn.close()

    def run(self, operation, *args, **kwargs):
        """Have the master's writer run ``operation``; raise StorageError if it cannot."""
        frame = encode_request(operation, args, kwargs)
        try:
            conn = self._connection()
            _send_frame(conn, frame)
            status, value = pickle.loads(_recv_frame(conn))
        except (BlockingIOError, TimeoutError):  # SO_RCVTIMEO / SO_SNDTIMEO ran out
            self._drop()
            raise StorageError(
                f"commit not confirmed within {self.settings.commit_timeout_s} s") from None
        except (OSError, ConnectionError) as error:
            # A reply may still come for this request: never reuse the connection.
            self._drop()
            raise StorageError(f"writer unreachable: {error!r}") from None
        if status == "ok":
            return _rebuild(value)
        if status == "write_failed":
            raise WriteFailed(value)
        raise StorageError(value)


def writer_for(settings, environ=os.environ):
    """The writer this process should use: the master's, when gunicorn started one."""
    path = environ.get(SOCKET_VARIABLE)
    if path:
        return RemoteWriter(settings, path)
    return GroupCommitWriter(settings)


# Set by the gunicorn master for its workers; not a user setting.
SOCKET_VARIABLE = "RECEIVER_WRITER_SOCKET"
