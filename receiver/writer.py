"""Group commit: one writer shares each synced commit among all the requests in flight.

Requests hand their write to the writer and wait. The writer takes everything queued, runs it
in one ``BEGIN IMMEDIATE`` transaction, commits (synced to disk with ``synchronous=FULL``) and
only then answers the requests, so no request is answered before its data is durable, while one
fsync serves a whole batch. The writer process commits the event rows only and derives the
``messages``, ``dispatches`` and ``workflows`` rows right after (``store.project``, every
PROJECT_EVERY_S), in a transaction of its own.

Under gunicorn the writer is a process of its own (``python -m receiver.writer``); each piece
here is named for the one fault it handles:
- ``WriterProcess``/``Supervisor`` (a thread of the master): a writer that exits or is killed
  is replaced, a standby writer already started taking over within one lock poll; a writer that
  hangs (no ``Heartbeat`` change for HUNG_S) is killed and so replaced.
- the writer lock (``take_lock``): two writers never run on one file (gunicorn's USR2 starts a
  second master with writers of its own; they wait).
- ``Heartbeat``: a worker answers a fast 503 when the writer is gone or hung, timed with the
  worker's own clock (a shifted clock cannot fake it).
- frames (``encode_request``): plain JSON with typed fields, so nothing that reaches the
  socket can run code.
The master holds no SQLite connection when it forks; the workers reach the writer through a
Unix socket in a private directory, named after the database (``endpoint_paths``), so that the
workers of a second master reach the same writer.

Without gunicorn (the Flask test client, the CLI) the app writes through an in-process
``GroupCommitWriter`` thread, called directly (no frames), deriving in the same transaction.
"""

import base64
import binascii
import dataclasses
import fcntl
import hashlib
import inspect
import json
import logging
import os
import queue
import selectors
import signal
import socket
import sqlite3
import stat
import struct
import sys
import tempfile
import threading
import time
import typing

from . import db, metrics, store
from .callbacks import Rejection

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
    """Serialises this process's writes through one connection, committing them in batches.

    ``deferred=False`` (the in-process writer of the Flask test client and the CLI) derives
    the rows of each write in its own transaction; ``deferred=True`` (the writer process)
    commits event rows only and derives them afterwards with ``project_pending``.
    """

    def __init__(self, settings, deferred=False):
        self.settings = settings
        self.deferred = deferred
        self._lock = threading.Lock()
        self._pid = None
        self._queue = None
        self._conn = None
        self.batches = 0
        self.writes = 0
        self.last_commit = None  # time.monotonic() of the last successful commit
        self.unprojected = 0  # writes committed since the last projection (deferred)
        self.unprojected_since = None  # time.monotonic() of the first of them
        self.project_after = 0.0  # time.monotonic() before which no projection is tried

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

        Called by one thread only (the writer thread, or the WriterServer's loop). Health
        probes alone, within HEALTH_FRESH_S of a successful commit, are answered from it.
        """
        if all(getattr(p.work, "health", False) for p in batch) and self._fresh():
            for pending in batch:
                pending.result = self.health()
            return
        started = time.perf_counter()
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
        metrics.observe_batch(len(batch), time.perf_counter() - started, self.queued())

    def _fail(self, batch, failure):
        self.last_commit = None  # health probes write again until a commit succeeds
        for pending in batch:
            pending.result, pending.error = None, failure
        self._conn = self._reset(self._conn)

    def _fresh(self):
        return (self.last_commit is not None
                and time.monotonic() - self.last_commit < HEALTH_FRESH_S)

    def health(self):
        """What a health probe answers once the database took a write: the projection's lag."""
        lag = 0.0 if not self.unprojected else time.monotonic() - self.unprojected_since
        return {"projection_behind": self.unprojected, "projection_lag_ms": round(lag * 1000)}

    def _derive(self, conn):
        """Derive what the write just stored, in its transaction (not when deferred)."""
        if not self.deferred:
            store.project(conn)

    def _commit(self, conn, batch):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for pending in self._store_planned_together(conn, batch):
                conn.execute("SAVEPOINT item")
                try:
                    pending.result = pending.work(conn)
                    self._derive(conn)
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
        self.last_commit = time.monotonic()
        self.batches += 1
        self.writes += len(batch)
        if self.deferred:
            if not self.unprojected:
                self.unprojected_since = self.last_commit
            self.unprojected += sum(getattr(p.work, "planned", None) is not None for p in batch)
        for pending in batch:
            if getattr(pending.work, "health", False) and pending.error is None:
                pending.result = self.health()

    def project_pending(self):
        """Derive the rows of what was committed since the last projection, in one
        transaction of its own (not synced: a crash rolls it back with its position, and the
        next synced commit syncs it); returns how many events it took. A failure is logged
        and retried a second later: the events are safe, the lag grows (and alerts)."""
        try:
            if self._conn is None:
                self._conn = db.connect_settings(self.settings)
            conn = self._conn
            conn.execute("PRAGMA synchronous = NORMAL")
            try:
                with store.transaction(conn):
                    taken = store.project(conn)
            finally:
                conn.execute(f"PRAGMA synchronous = {self.settings.synchronous}")
        except Exception as error:  # noqa: BLE001 - the writer must outlive a failed projection
            log.error("projection failed, retrying in 1 s: %r", error)
            self.project_after = time.monotonic() + 1.0
            if isinstance(error, sqlite3.Error) and is_database_failure(error):
                self._conn = self._reset(self._conn)
            return 0
        self.unprojected, self.unprojected_since = 0, None
        return taken

    def _store_planned_together(self, conn, batch):
        """Store the batch's planned callbacks with one set-based store_batch; return the
        writes left to run one by one (all of them if one planned callback fails: the others
        then go on without it)."""
        planned = [p for p in batch if getattr(p.work, "planned", None) is not None]
        if len(planned) < 2:
            return batch
        conn.execute("SAVEPOINT together")
        try:
            results = store.store_batch(conn, [p.work.planned for p in planned])
            self._derive(conn)
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
    "store_rejection": store.store_rejection,
    "record_health": store.record_health,
}
# A health probe is answered without a write of its own within this long of a successful
# commit (that commit proved the database takes writes); else it writes, in a group commit.
HEALTH_FRESH_S = 1.0
_SIGNATURES = {name: inspect.signature(function) for name, function in OPERATIONS.items()}


class BadFrame(ValueError):
    """Bytes that are not a valid request to the writer: refused, nothing run."""


def work(operation, args, kwargs):
    """The write ``operation`` names, as a function of a connection (BadFrame if it is not
    one the writer knows, or the arguments do not fit it)."""
    function = OPERATIONS.get(operation) if isinstance(operation, str) else None
    if function is None:
        raise BadFrame(f"unknown operation {operation!r}")
    try:
        _SIGNATURES[operation].bind(None, *args, **kwargs)
    except TypeError as error:
        raise BadFrame(f"{operation}: {error}") from None

    def run(conn):
        return function(conn, *args, **kwargs)

    # A planned callback can be stored together with its batch-mates (store.store_batch).
    run.planned = args[0] if operation == "store_planned" else None
    run.health = operation == "record_health"
    return run


# --- frames: plain JSON with typed fields ---------------------------------------------------
#
# A value crosses as [tag, payload]: [null, json value] for plain data, ["bytes", base64] for
# bytes, [type name, {field: value}] for one of the types below. A type's fields are checked
# against its annotations (bytes fields travel as base64), so a frame can only ever produce
# these types holding these kinds of values.


class _FrameType:
    """How one class crosses the socket: its name, fields with allowed types, constructor."""

    def __init__(self, name, cls, fields, build=None):
        self.name, self.cls, self.fields = name, cls, fields  # fields: [(name, types, bytes?)]
        self.build = build or cls

    @classmethod
    def of_dataclass(cls, name, klass):
        hints = typing.get_type_hints(klass)
        fields = []
        for field in dataclasses.fields(klass):
            hint = hints[field.name]
            types = typing.get_args(hint) or (hint,)
            types = tuple(typing.get_origin(t) or t for t in types)
            if float in types:
                types += (int,)
            fields.append((field.name, types, bytes in types))
        return cls(name, klass, fields)

    def encode(self, value):
        out = {}
        for name, _, is_bytes in self.fields:
            item = getattr(value, name)
            out[name] = base64.b64encode(item).decode("ascii") if is_bytes and item is not None \
                else item
        return out

    def decode(self, payload):
        if not isinstance(payload, dict) or set(payload) - {f[0] for f in self.fields}:
            raise BadFrame(f"{self.name}: expected an object with fields "
                           f"{[f[0] for f in self.fields]}")
        values = {}
        for name, types, is_bytes in self.fields:
            if name not in payload:
                continue  # a default, or the constructor says it is missing
            item = payload[name]
            if is_bytes and isinstance(item, str):
                item = _b64decode(item, f"{self.name}.{name}")
            if not isinstance(item, types):
                raise BadFrame(f"{self.name}.{name}: {type(item).__name__} is not "
                               f"{' or '.join(t.__name__ for t in types)}")
            values[name] = item
        try:
            return self.build(**values)
        except TypeError as error:
            raise BadFrame(f"{self.name}: {error}") from None


def _b64decode(text, what):
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadFrame(f"{what}: not base64") from None


_TYPES = [
    _FrameType.of_dataclass("Delivery", store.Delivery),
    _FrameType.of_dataclass("Stored", store.Stored),
    _FrameType("Rejection", Rejection,
               [("http_status", (int,), False), ("reason", (str,), False),
                ("message", (str,), False), ("errors", (dict,), False)]),
]
_BY_CLASS = {t.cls: t for t in _TYPES}
_BY_NAME = {t.name: t for t in _TYPES}
_PLAIN = (str, int, float, bool, type(None), list, dict)


def encode_value(value):
    """One argument or result as its [tag, payload] (TypeError for what cannot cross)."""
    frame_type = _BY_CLASS.get(type(value))
    if frame_type is not None:
        return [frame_type.name, frame_type.encode(value)]
    if isinstance(value, bytes):
        return ["bytes", base64.b64encode(value).decode("ascii")]
    if isinstance(value, _PLAIN):
        return [None, value]
    raise TypeError(f"a {type(value).__name__} cannot be sent to the writer")


def decode_value(tagged):
    """[tag, payload] -> the value (BadFrame if it is not one encode_value makes)."""
    if not isinstance(tagged, list) or len(tagged) != 2:
        raise BadFrame("a value must be [tag, payload]")
    tag, payload = tagged
    if tag is None:
        return payload
    if tag == "bytes" and isinstance(payload, str):
        return _b64decode(payload, "bytes")
    frame_type = _BY_NAME.get(tag) if isinstance(tag, str) else None
    if frame_type is None:
        raise BadFrame(f"unknown value type {tag!r}")
    return frame_type.decode(payload)


def encode_request(operation, args, kwargs):
    """A request to the writer as frame bytes: {"op", "args", "kwargs"} in JSON."""
    return json.dumps({
        "op": operation,
        "args": [encode_value(a) for a in args],
        "kwargs": {k: encode_value(v) for k, v in kwargs.items()},
    }, separators=(",", ":")).encode("ascii")  # \u escapes: lone surrogates cross too


def decode_request(frame):
    """Frame bytes -> the write they ask for; BadFrame for anything that is not a request."""
    try:
        request = json.loads(frame)
    except (UnicodeDecodeError, ValueError):
        raise BadFrame("not JSON") from None
    if (not isinstance(request, dict) or set(request) != {"op", "args", "kwargs"}
            or not isinstance(request["args"], list) or not isinstance(request["kwargs"], dict)):
        raise BadFrame('expected {"op": ..., "args": [...], "kwargs": {...}}')
    args = [decode_value(a) for a in request["args"]]
    kwargs = {k: decode_value(v) for k, v in request["kwargs"].items()}
    return work(request["op"], args, kwargs)


def encode_reply(status, value):
    return json.dumps([status, value], separators=(",", ":")).encode("utf-8")


_LENGTH = struct.Struct("!I")
# A request holds at most one body (RECEIVER_MAX_BODY_BYTES, base64: 4/3) and a few fields.
_FRAME_OVERHEAD = 1 << 20


def max_frame(settings):
    """The largest request frame the writer reads; a longer length prefix is refused."""
    return settings.max_body_bytes * 2 + _FRAME_OVERHEAD


def _send_frame(sock, payload):
    sock.sendall(_LENGTH.pack(len(payload)) + payload)


# --- where the writer is, and whether it is alive -------------------------------------------

# The writer beats (sets its socket file's mtime to its next beat number) this often;
# workers answer 503 once they have seen no change for STALE_S (a request in flight too); the
# supervisor replaces a writer it has seen no change from for HUNG_S (stopped, or stuck).
# Each side times the change with its own clock: no clock is compared with another process's,
# so a shifted or faked clock (libfaketime) cannot make a live writer look stale.
HEARTBEAT_S = 0.1
# The writer process derives the rows of committed events (store.project) once they are this
# old, in one batch: the projection's lag under load, about (see bench/README.md).
PROJECT_EVERY_S = 0.02
STALE_S = 0.5
HUNG_S = 2.0
LOCK_SUFFIX = ".writer-lock"


def endpoint_paths(db_path, environ=os.environ):
    """(socket path, lock path) of the writer of the database at ``db_path``.

    The socket lives in a directory only this user can enter (under $XDG_RUNTIME_DIR or the
    temporary directory; a Unix socket path is limited to 107 bytes), named by a hash of the
    database's real path; the lock file lies beside the database.
    """
    real = os.path.realpath(db_path)
    base = environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    directory = os.path.join(base, f"receiver-writer-{os.getuid()}")
    digest = hashlib.sha256(real.encode()).hexdigest()[:24]
    return os.path.join(directory, f"{digest}.sock"), real + LOCK_SUFFIX


def _private_directory(path):
    """Create ``path`` (mode 0700) or check that it is ours and closed to others."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise RuntimeError(f"{path} must be a directory of user {os.getuid()} with mode 0700")


def pause(event, seconds):
    """Sleep ``seconds``, then say whether ``event`` is set. Not ``event.wait(seconds)``: a
    timed wait on a lock takes an absolute CLOCK_MONOTONIC deadline that libfaketime fakes
    and the kernel does not, so under a faked clock it never times out."""
    time.sleep(seconds)
    return event.is_set()


class Heartbeat:
    """What one process has seen of the writer's beat at ``path``: ``age()`` is how long (by
    this process's own monotonic clock) the socket file's (inode, mtime) has stayed as it is."""

    def __init__(self, path):
        self.path = path
        self._seen = (None, 0.0)  # ((inode, mtime_ns), when first seen)

    def age(self):
        """(seconds without a beat, the socket's inode); FileNotFoundError when no socket."""
        info = os.stat(self.path)
        beat, now = (info.st_ino, info.st_mtime_ns), time.monotonic()
        seen, since = self._seen
        if beat != seen:
            self._seen = (beat, now)
            return 0.0, info.st_ino
        return now - since, info.st_ino


def _beat(path, number):
    # Whole seconds: libfaketime's stat() keeps only the seconds of a file time.
    os.utime(path, (number, number))


def lock_holder(lock_path):
    """The pid written in the lock file by the writer that holds it (None if unreadable)."""
    try:
        with open(lock_path, "rb") as file:
            return int(file.read(32).strip() or 0) or None
    except (OSError, ValueError):
        return None


# --- the writer's side of the socket --------------------------------------------------------


class WriterServer:
    """A GroupCommitWriter serving every worker process over a Unix socket, from one thread.

    Run it with ``serve()`` in the thread (or process) that should own the connection; the
    caller must hold the writer lock. ``stop()`` from any thread ends ``serve()`` after
    answering what has arrived.
    """

    def __init__(self, settings, path):
        self.writer = GroupCommitWriter(settings, deferred=True)
        self.window_s = settings.commit_window_ms / 1000
        self.last_commit = 0.0  # time.monotonic() when the latest commit began
        self.path = path
        self.max_frame = max_frame(settings)
        _private_directory(os.path.dirname(path))
        try:
            os.unlink(path)  # a dead writer's socket: we hold the lock, it is ours now
        except FileNotFoundError:
            pass
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.inode = os.stat(path).st_ino
        _beat(path, 1)
        self.listener.listen(512)
        self._stopped = threading.Event()
        self._wake_lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()

    def stop(self):
        """Ask ``serve()`` to finish (safe from any thread)."""
        self._stopped.set()
        with self._wake_lock:
            if self._wake_w is not None:
                os.write(self._wake_w, b"x")

    def heartbeat(self):
        """Beat every HEARTBEAT_S until stopped (run in a thread of its own)."""
        number = 1
        while not pause(self._stopped, HEARTBEAT_S):
            number += 1
            try:
                _beat(self.path, number)
            except OSError as error:
                log.error("writer heartbeat failed: %s", error)

    def serve(self):
        """Read every complete request that has arrived, commit them all as one batch,
        answer each, repeat. One thread: no hand-offs, no GIL contention."""
        beat = threading.Thread(target=self.heartbeat, name="writer-heartbeat", daemon=True)
        beat.start()
        selector = selectors.DefaultSelector()
        selector.register(self.listener, selectors.EVENT_READ)
        selector.register(self._wake_r, selectors.EVENT_READ)
        buffers = {}
        writer = self.writer
        writer.unprojected, writer.unprojected_since = 1, time.monotonic()  # a kill -9 may have left some
        try:
            while not self._stopped.is_set():
                try:
                    self._serve_once(selector, buffers,
                                     timeout=PROJECT_EVERY_S if writer.unprojected else 1.0)
                    if writer.unprojected and time.monotonic() >= max(
                            writer.project_after, writer.unprojected_since + PROJECT_EVERY_S):
                        writer.project_pending()
                except Exception:  # noqa: BLE001 - the writer must outlive any one bug
                    log.exception("writer loop error; serving on")
            # Stopping: no new connections; answer the requests already here, derive what is
            # left (a graceful stop leaves the projection caught up), then close.
            selector.unregister(self.listener)
            self.listener.close()
            self._serve_once(selector, buffers, timeout=0)
            writer.project_pending()
        finally:
            for conn in buffers:
                conn.close()
            selector.close()
            self.writer.close()
            self._stopped.set()
            try:
                if os.stat(self.path).st_ino == self.inode:
                    os.unlink(self.path)
            except OSError:
                pass
            with self._wake_lock:
                os.close(self._wake_r)
                os.close(self._wake_w)
                self._wake_w = None

    def _serve_once(self, selector, buffers, timeout):
        batch = []
        self._read(selector, buffers, timeout, batch)
        # The commit window (RECEIVER_COMMIT_WINDOW_MS): commits begin at least this far apart.
        # Requests that come sooner after the last one wait for the rest of the window, and
        # those arriving meanwhile share their commit; after a quiet spell, or when a commit
        # takes longer than the window (a slow disk), nothing waits.
        window_ends = self.last_commit + self.window_s
        while batch and len(batch) < self.writer.settings.max_batch:
            left = window_ends - time.monotonic()
            if left <= 0:
                break
            self._read(selector, buffers, left, batch)
        if batch:
            self.last_commit = time.monotonic()
            self._commit_and_answer(batch)

    def _read(self, selector, buffers, timeout, batch):
        """Accept connections and move the complete requests that arrive within ``timeout``
        into ``batch``."""
        for key, _ in selector.select(timeout=timeout):
            if key.fileobj is self.listener:
                try:
                    conn, _ = self.listener.accept()
                except OSError:
                    continue
                selector.register(conn, selectors.EVENT_READ)
                buffers[conn] = bytearray()
                continue
            if key.fileobj == self._wake_r:
                os.read(self._wake_r, 64)
                continue
            conn = key.fileobj
            try:
                data = conn.recv(1 << 20)
            except OSError:
                data = b""
            if data:
                buffer = buffers[conn]
                buffer += data
                data = self._take_frames(conn, buffer, batch)
            if not data:  # closed by the worker, or a frame we refuse to read
                selector.unregister(conn)
                del buffers[conn]
                conn.close()

    def _take_frames(self, conn, buffer, batch):
        """Move the complete frames in ``buffer`` into ``batch``; False to drop the connection."""
        while len(buffer) >= _LENGTH.size:
            (size,) = _LENGTH.unpack_from(buffer)
            if size > self.max_frame:
                log.error("refused a frame of %d bytes (the limit is %d); connection closed",
                          size, self.max_frame)
                self._answer(conn, "bad_request", f"frame of {size} bytes is over the limit")
                return False
            if len(buffer) < _LENGTH.size + size:
                break
            frame = bytes(buffer[_LENGTH.size:_LENGTH.size + size])
            del buffer[:_LENGTH.size + size]
            batch.append((conn, self._pending(frame)))
        return True

    def _pending(self, frame):
        """A worker's request frame -> a pending write (or one already refused)."""
        try:
            pending = _Pending(decode_request(frame))
        except BadFrame as error:
            log.error("refused a request to the writer: %s", error)
            pending = _Pending(None)
            pending.error = error
        return pending

    def _commit_and_answer(self, batch):
        runnable = [pending for _, pending in batch if pending.work is not None]
        size = self.writer.settings.max_batch
        for start in range(0, len(runnable), size):
            self.writer.commit_batch(runnable[start:start + size])
        for conn, pending in batch:
            if pending.error is None:
                try:
                    self._answer(conn, "ok", encode_value(pending.result))
                    continue
                except TypeError as error:  # a result that cannot cross (a bug)
                    pending.error = StorageError(f"internal error: {error}")
            if isinstance(pending.error, BadFrame):
                self._answer(conn, "bad_request", str(pending.error))
            elif isinstance(pending.error, WriteFailed):
                self._answer(conn, "write_failed", str(pending.error))
            else:
                self._answer(conn, "storage_error", str(pending.error))

    @staticmethod
    def _answer(conn, status, value):
        try:
            _send_frame(conn, encode_reply(status, value))
        except OSError:
            pass  # the worker is gone; the selector drops its connection


# --- the workers' side ----------------------------------------------------------------------


class RemoteWriter:
    """A worker's handle on the writer process (one connection per thread).

    Fails fast: no socket, a refused connection or a closed one is a StorageError at once, and
    so is a writer whose heartbeat is older than STALE_S, before sending and while waiting.
    """

    # While waiting for a reply, look at the heartbeat this often.
    POLL_S = 0.1

    def __init__(self, settings, path):
        self.settings = settings
        self.path = path
        self._local = threading.local()
        self.heartbeat = Heartbeat(path)

    def alive(self):
        """The socket's inode when the writer beats; else StorageError saying why."""
        try:
            age, inode = self.heartbeat.age()
        except FileNotFoundError:
            raise StorageError("writer not running (no socket)") from None
        except OSError as error:
            raise StorageError(f"writer unreachable: {error!r}") from None
        if age > STALE_S:
            raise StorageError(f"writer not responding (no heartbeat for {age:.1f} s)")
        return inode

    def _connection(self, inode):
        conn = getattr(self._local, "conn", None)
        if conn is not None and (self._local.pid != os.getpid() or self._local.inode != inode):
            self._drop()  # a fork, or a new writer behind the same path
            conn = None
        if conn is None:
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            # Kernel-side timeouts on a blocking socket: no poll() before every send and recv.
            timeval = struct.pack("ll", 0, int(self.POLL_S * 1_000_000))
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
            try:
                conn.connect(self.path)
            except OSError:
                conn.close()
                raise
            self._local.conn, self._local.pid, self._local.inode = conn, os.getpid(), inode
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
        """Have the writer run ``operation``; raise StorageError if it cannot, quickly when
        the writer is gone or hung."""
        frame = encode_request(operation, args, kwargs)
        deadline = time.monotonic() + self.settings.commit_timeout_s
        try:
            conn = self._send_on_a_live_connection(_LENGTH.pack(len(frame)) + frame, deadline)
            status, value = json.loads(self._receive(conn, deadline))
        except (ConnectionRefusedError, FileNotFoundError):
            self._drop()  # the socket of a writer that died: its successor is starting
            raise StorageError("writer not running (connection refused)") from None
        except StorageError:
            self._drop()  # a reply may still come for this request: never reuse the connection
            raise
        except (OSError, ValueError) as error:
            self._drop()
            raise StorageError(f"writer unreachable: {error!r}") from None
        if status == "ok":
            return decode_value(value)
        if status == "write_failed":
            raise WriteFailed(value)
        raise StorageError(value)

    def _send_on_a_live_connection(self, data, deadline):
        """Send ``data`` on this thread's connection, and once more on a new one when the kept
        connection turns out to lead to a writer that has since died (a broken pipe or reset
        while sending): a frame the writer did not wholly receive is never stored, so sending
        it again cannot store it twice. Returns the connection that took it."""
        reused = getattr(self._local, "conn", None) is not None
        conn = self._connection(self.alive())
        try:
            self._send(conn, data, deadline)
        except (BrokenPipeError, ConnectionResetError):
            if not reused:
                raise
            self._drop()
            conn = self._connection(self.alive())
            self._send(conn, data, deadline)
        return conn

    def _waited(self, deadline):
        """After a timed-out send or recv: raise if the writer died, hung or took too long."""
        self.alive()
        if time.monotonic() > deadline:
            raise StorageError(
                f"commit not confirmed within {self.settings.commit_timeout_s} s")

    def _send(self, conn, data, deadline):
        view = memoryview(data)
        while view:
            try:
                view = view[conn.send(view):]
            except (BlockingIOError, TimeoutError):
                self._waited(deadline)

    def _receive(self, conn, deadline):
        buffer = b""
        while True:
            try:
                chunk = conn.recv(65536)  # a reply is a few dozen bytes: one recv holds it
            except (BlockingIOError, TimeoutError):
                self._waited(deadline)
                continue
            if not chunk:
                raise StorageError("writer closed the connection (it stopped or was replaced)")
            buffer += chunk
            if len(buffer) >= _LENGTH.size:
                (size,) = _LENGTH.unpack_from(buffer)
                if len(buffer) >= _LENGTH.size + size:
                    return buffer[_LENGTH.size:_LENGTH.size + size]


def writer_for(settings, environ=os.environ):
    """The writer this process should use: the writer process, when gunicorn started one."""
    path = environ.get(SOCKET_VARIABLE)
    if path:
        return RemoteWriter(settings, path)
    return GroupCommitWriter(settings)


# Set by the gunicorn master for its workers; not a user setting.
SOCKET_VARIABLE = "RECEIVER_WRITER_SOCKET"


# --- the writer process and its supervisor --------------------------------------------------


def take_lock(lock_path, stopping):
    """Hold the exclusive flock of ``lock_path`` (waiting while another writer holds it);
    returns the open file descriptor, or None if ``stopping`` was set while waiting."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    waiting = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if not waiting:
                log.info("writer: standing by while another writer (pid %s) serves %s",
                         lock_holder(lock_path), lock_path[:-len(LOCK_SUFFIX)])
                waiting = True
            if pause(stopping, 0.05):
                os.close(fd)
                return None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def main():
    """The writer process: take the lock, serve until the master lets go of stdin."""
    from . import logs
    from .config import load_settings

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s",
                        datefmt="%Y-%m-%d %H:%M:%S %z")
    # Signals meant for the whole process group (Ctrl-C, a TERM to the group, gunicorn's HUP
    # and USR2) are not for the writer: the workers still finishing their requests need it.
    # It stops when its master closes its stdin (or dies: the kernel closes it then).
    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT, signal.SIGHUP,
                   signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH):
        signal.signal(number, signal.SIG_IGN)
    settings = load_settings()
    logs.configure(settings.log_format)  # RECEIVER_LOG_FORMAT=json: JSON lines, as gunicorn's
    socket_path, lock_path = endpoint_paths(settings.db_path)
    stopping = threading.Event()
    server = None

    def watch_master():
        while os.read(0, 4096):
            pass
        stopping.set()
        if server is not None:
            server.stop()

    threading.Thread(target=watch_master, name="writer-stdin", daemon=True).start()
    lock = take_lock(lock_path, stopping)
    if lock is None:
        return 0
    server = WriterServer(settings, socket_path)
    if stopping.is_set():
        server.stop()
    log.info("writer: serving %s at %s", os.path.abspath(settings.db_path), socket_path)
    server.serve()  # returns with the database closed and the socket removed
    os.close(lock)  # the next writer may start now, before this interpreter has wound down
    log.info("writer: stopped (%d writes in %d batches)", server.writer.writes,
             server.writer.batches)
    return 0


def _inheritable_fds():
    fds = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.get_inheritable(int(name)):
                fds.append(int(name))
        except OSError:
            pass  # the directory's own descriptor, closed by now
    return fds


class WriterProcess:
    """``python -m receiver.writer``, its stdin a pipe from the master (closing it, or the
    master's death, tells it to finish).

    Started with ``os.posix_spawn``, not ``subprocess.Popen``: Popen waits for its child's
    exec on a pipe, and a worker gunicorn forks meanwhile inherits that pipe, so Popen (and
    the supervisor) would wait until that worker exits.
    """

    def __init__(self):
        read, self.stdin = os.pipe()
        try:
            # Nothing of the master's but stdout and stderr (e.g. not gunicorn's listening
            # sockets, which it keeps inheritable for USR2).
            closes = [(os.POSIX_SPAWN_CLOSE, fd) for fd in _inheritable_fds() if fd > 2]
            self.pid = os.posix_spawn(sys.executable, [sys.executable, "-m", "receiver.writer"],
                                      os.environ,
                                      file_actions=[(os.POSIX_SPAWN_DUP2, read, 0), *closes])
        except BaseException:
            os.close(self.stdin)
            raise
        finally:
            os.close(read)
        self.started = time.monotonic()
        self.code = None

    def poll(self):
        """None while it runs, else its exit status (None-safe: gunicorn's arbiter reaps
        every child with waitpid(-1) and may take the status first; then it says 0)."""
        if self.code is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = self.pid, 0
            if pid == 0:
                return None
            self.code = os.waitstatus_to_exitcode(status)
        return self.code

    def wait(self, timeout):
        """True once it has exited (polled, within ``timeout`` s)."""
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def close(self):
        """Close its stdin: it answers what it has, derives what is left, and exits."""
        if self.stdin is not None:
            os.close(self.stdin)
            self.stdin = None


class Supervisor:
    """In the gunicorn master: keep a writer process serving, and one more standing by.

    What gunicorn's arbiter already does is not repeated here: it forks, replaces and kills
    its HTTP workers, and reaps every child (``waitpid(-1)``, hence ``WriterProcess.poll``'s
    ChildProcessError), but it replaces only its workers and runs no hook on its loop. So one
    thread of the master handles the writer's two faults, and holds no SQLite connection:
    - the writer exits or is killed: the standby (Python started, receiver imported, waiting
      on the writer lock) takes over within one lock poll (50 ms); a new standby is spawned.
      Measured (tests/test_writer_failures.py, kill -9 under 16 threads of load, 2 busy
      cores): back 0.06-0.19 s after the kill with a standby, 1.1-1.7 s (and ~20 times the
      503s) when the master has to start a new Python instead;
    - the writer hangs (no ``Heartbeat`` change for HUNG_S): it is killed, so replaced.
    Each writer's stdin is a pipe from the master: closing it (``stop()``), or the master's
    death, tells the writer to finish.
    """

    PROCESSES = 2  # the serving writer and its standby

    def __init__(self, settings, log=log):
        self.settings = settings
        self.log = log
        self.socket_path, self.lock_path = endpoint_paths(settings.db_path)
        self.procs = []
        self._holder, self._heartbeat = None, None
        self._stopping = threading.Event()
        self._thread = None

    def start(self, ready_timeout=10.0):
        """Start the writer and its standby, wait (up to ``ready_timeout``) until one serves,
        then watch them from a thread; returns self."""
        _private_directory(os.path.dirname(self.socket_path))
        for _ in range(self.PROCESSES):
            self._spawn()
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline and not self._listening():
            time.sleep(0.02)
        if not self._listening():
            self.log.warning("writer not ready after %.0f s: answering 503 until it is",
                             ready_timeout)
        self._thread = threading.Thread(target=self._watch, name="writer-supervisor",
                                        daemon=True)
        self._thread.start()
        return self

    def _listening(self):
        """True once a writer accepts connections at the socket."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(self.socket_path)
            except OSError:
                return False
        return True

    def _spawn(self):
        # spawn + exec: the child starts from nothing of the master's (no threads, no SQLite).
        proc = WriterProcess()
        self.procs.append(proc)
        self.log.info("writer process %d started", proc.pid)

    def inherited_fds(self):
        """File descriptors a forked worker must close (the writers' stdin pipes)."""
        return [proc.stdin for proc in list(self.procs) if proc.stdin is not None]

    def serving(self):
        """The pid of our writer that holds the lock (None: none of ours serves)."""
        holder = lock_holder(self.lock_path)
        return holder if any(proc.pid == holder for proc in self.procs) else None

    def _watch(self):
        backoff = 0.0
        while not pause(self._stopping, 0.1):
            for proc in list(self.procs):
                code = proc.poll()
                if code is None:
                    continue
                self.log.error("writer process %d is gone (exit status %s)", proc.pid, code)
                proc.close()
                self.procs.remove(proc)
                # Writers that keep dying at once (a bad path, a full disk) are retried less often.
                ran = time.monotonic() - proc.started
                backoff = 0.0 if ran > 10 else min(max(backoff * 2, 0.1), 2.0)
            holder = self.serving()
            if holder is not None and self._hung(holder):
                self.log.error("writer process %d has not beaten for %.0f s: replacing it",
                               holder, HUNG_S)
                os.kill(holder, signal.SIGKILL)
            if len(self.procs) < self.PROCESSES and not pause(self._stopping, backoff):
                self._spawn()

    def _hung(self, holder):
        """No beat seen for HUNG_S while ``holder`` held the lock all along (a standby that
        just took over, and has not bound its socket yet, starts a fresh count)."""
        if holder != self._holder:
            self._holder, self._heartbeat = holder, Heartbeat(self.socket_path)
        try:
            age, _ = self._heartbeat.age()
        except OSError:
            return False
        return age > HUNG_S

    def stop(self, timeout=10.0):
        """Let the writers finish (the serving one answers what it has, closes, exits); kill
        what is left after ``timeout`` s."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(2)
        for proc in self.procs:
            proc.close()
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            if not proc.wait(max(0.1, deadline - time.monotonic())):
                self.log.error("writer process %d did not stop in %.0f s: killed", proc.pid,
                               timeout)
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)


_supervisor = None


def supervisor():
    """The master's Supervisor (kept here, not in the config file: gunicorn re-reads that on
    HUP, and this must outlive it), or None."""
    return _supervisor


def start_supervisor(settings, log=log):
    """In the gunicorn master: start the writer process once; returns the Supervisor."""
    global _supervisor
    if _supervisor is None:
        _supervisor = Supervisor(settings, log).start()
    return _supervisor


if __name__ == "__main__":
    sys.exit(main())
