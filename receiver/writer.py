"""Group commit: one writer shares each synced commit among all the requests in flight.

Requests hand their write to the writer and wait. The writer takes everything queued, runs it
in one ``BEGIN IMMEDIATE`` transaction, commits (synced to disk with ``synchronous=FULL``) and
only then answers, so no request is answered before its data is durable, while one fsync
serves a whole batch. It commits the event rows only, and derives the ``messages``,
``dispatches`` and ``workflows`` rows from them (``store.project``) in a transaction of its
own: right after each batch in process, every PROJECT_EVERY_S in the writer process.

Under gunicorn the writer is a process of its own (``python -m receiver.writer``), which the
workers reach through a Unix socket named after the database (``endpoint_paths``: the workers
of a second master reach the same writer). Each piece is named for the one fault it handles:
- ``Supervisor`` (a thread of the master): a writer that exits, is killed or hangs is replaced,
  a standby writer already started taking over.
- the writer lock (``take_lock``): two writers never run on one file (gunicorn's USR2 starts a
  second master with writers of its own; they wait).
- ``Heartbeat``: a worker answers a fast 503 when the writer is gone or hung, timed with the
  worker's own clock (a shifted clock cannot fake it).
- frames (``encode_request``, ``decode_request``): plain JSON of one fixed shape per operation,
  checked field by field, so nothing that reaches the socket can run code.

Without gunicorn (the Flask test client, ``flask run``) the app calls an in-process
``GroupCommitWriter`` thread directly (no frames).
"""

import base64
import binascii
import contextlib
import fcntl
import hashlib
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

from . import db, metrics, store
from .callbacks import Rejection

log = logging.getLogger("receiver.writer")


class StorageError(Exception):
    """The write could not be committed (locked, disk full, read-only...); answer 503."""


class WriteFailed(StorageError):
    """This one write failed while the database is fine (e.g. an integer overflow in a sum):
    retrying it would fail again."""


# SQLite's primary result codes that mean the database itself cannot take writes now: the whole
# batch fails and every request in it gets 503. Any other error fails only its own write.
DATABASE_FAILURES = {
    sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_NOMEM, sqlite3.SQLITE_READONLY,
    sqlite3.SQLITE_INTERRUPT, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_FULL,
    sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PROTOCOL, sqlite3.SQLITE_NOTADB,
}


def is_database_failure(error):
    """True when ``error`` says the database cannot take writes (not that one write is bad)."""
    code = getattr(error, "sqlite_errorcode", None)
    if code is None:
        return isinstance(error, sqlite3.OperationalError)
    return (code & 0xFF) in DATABASE_FAILURES


# What a writer can be asked to do: store.<function>(conn, *args, **kwargs).
OPERATIONS = {
    "store_planned": store.store_planned,
    "store_rejection": store.store_rejection,
    "record_health": store.record_health,
}
# A health probe is answered without a write of its own within this long of a successful
# commit (that commit proved the database takes writes); else it writes, in a group commit.
HEALTH_FRESH_S = 1.0


class _Pending:
    """One write waiting for its batch: ``work(conn)``, then its result or error. ``plan`` is
    a planned callback's (stored together with its batch-mates); ``health`` marks a probe."""

    __slots__ = ("work", "plan", "health", "done", "result", "error")

    def __init__(self, work, plan=None, health=False, error=None):
        self.work, self.plan, self.health, self.error = work, plan, health, error
        self.done = self.result = None

    @classmethod
    def of(cls, operation, args, kwargs):
        """The store operation named ``operation`` (see OPERATIONS) on these arguments."""
        function = OPERATIONS[operation]
        return cls(lambda conn: function(conn, *args, **kwargs),
                   args[0] if operation == "store_planned" else None,
                   operation == "record_health")


def _apart(conn, work):
    """Run ``work(conn)`` in a savepoint: (its result, None), or (None, the error) with what it
    did undone. A database failure is raised: the whole batch fails."""
    conn.execute("SAVEPOINT apart")
    try:
        result, error = work(conn), None
    except Exception as failure:
        if is_database_failure(failure):
            raise
        conn.execute("ROLLBACK TO apart")
        result, error = None, failure
    conn.execute("RELEASE apart")
    return result, error


class GroupCommitWriter:
    """Serialises this process's writes through one connection, committing them in batches;
    each batch's rows are derived after it (``project_pending``)."""

    def __init__(self, settings):
        self.settings = settings
        self._lock = threading.Lock()
        self._pid = self._queue = self._conn = None
        self.batches = self.writes = 0
        self.last_commit = None  # time.monotonic() of the last successful commit
        self.unprojected = 0  # callbacks committed since the last projection
        self.unprojected_since = None  # time.monotonic() of the first of them
        self.project_after = 0.0  # time.monotonic() before which no projection is tried

    def run(self, operation, *args, **kwargs):
        """Run the store operation named ``operation`` (see OPERATIONS); return its result."""
        return self.submit(_Pending.of(operation, args, kwargs))

    def submit(self, pending):
        """Have the writer thread commit ``pending`` (a _Pending); return its result, or raise
        StorageError when it could not be committed in time."""
        pending.done = threading.Event()
        self._ensure_started().put(pending)
        if not pending.done.wait(self.settings.commit_timeout_s):
            raise StorageError(f"commit not confirmed within {self.settings.commit_timeout_s} s")
        if pending.error is not None:
            raise pending.error
        return pending.result

    def queued(self):
        """How many writes wait for the writer thread to take them into a batch."""
        return self._queue.qsize() if self._queue is not None else 0

    def _ensure_started(self):
        with self._lock:  # started lazily, and again after a fork: threads never cross one
            if self._pid != os.getpid():
                self._pid, self._queue = os.getpid(), queue.SimpleQueue()
                threading.Thread(target=self._run, args=(self._queue,), name="group-commit",
                                 daemon=True).start()
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
            if self.unprojected:
                self.project_pending()  # in process, derived before the requests are answered
            for pending in batch:
                pending.done.set()

    def _connection(self):
        if self._conn is None:
            self._conn = db.connect_settings(self.settings)
        return self._conn

    def commit_batch(self, batch):
        """Run a batch of pending writes in one synced transaction; set each one's outcome
        (by one thread only). Probes alone within HEALTH_FRESH_S of a commit are answered."""
        if (all(p.health for p in batch) and self.last_commit is not None
                and time.monotonic() - self.last_commit < HEALTH_FRESH_S):
            for pending in batch:
                pending.result = self.health()
            return
        started = time.perf_counter()
        try:
            self._commit(self._connection(), batch)
        except BaseException as error:  # a bug must not kill the writer or hang requests
            bug = not isinstance(error, sqlite3.Error)
            log.error("storage failed, answering 503 to %d request(s): %r", len(batch), error,
                      exc_info=bug)
            failure = StorageError(f"internal error: {error!r}" if bug else str(error))
            self.last_commit = None  # health probes write again until a commit succeeds
            for pending in batch:
                pending.result, pending.error = None, failure
            self.close()
        metrics.observe_batch(len(batch), time.perf_counter() - started, self.queued())

    def _commit(self, conn, batch):
        planned = [p for p in batch if p.plan is not None]
        alone = batch
        with store.transaction(conn):
            if len(planned) > 1:  # stored together (set-based); one by one if that fails
                plans = [p.plan for p in planned]
                results, error = _apart(conn, lambda c: store.store_batch(c, plans))
                if error is None:
                    for pending, result in zip(planned, results):
                        pending.result = result
                    alone = [p for p in batch if p.plan is None]
            for pending in alone:
                pending.result, error = _apart(conn, pending.work)
                if error is not None:  # a bug, an overflow: fails alone, not its batch-mates
                    log.error("one write failed; its batch-mates go on", exc_info=error)
                    pending.error = WriteFailed(f"{type(error).__name__}: {error}")
        self.last_commit = time.monotonic()
        self.batches += 1
        self.writes += len(batch)
        if planned and not self.unprojected:
            self.unprojected_since = self.last_commit
        self.unprojected += len(planned)
        for pending in batch:
            if pending.health and pending.error is None:
                pending.result = self.health()

    def health(self):
        """What a health probe answers once the database took a write: the projection's lag."""
        lag = 0.0 if not self.unprojected else time.monotonic() - self.unprojected_since
        return {"projection_behind": self.unprojected, "projection_lag_ms": round(lag * 1000)}

    def project_pending(self):
        """Derive the rows of what was committed since the last projection, in a transaction
        of its own (not synced: a crash rolls it back with its position, and the next synced
        commit syncs it). A failure is logged and retried a second later: the events are safe,
        the lag grows (and alerts)."""
        try:
            conn = self._connection()
            conn.execute("PRAGMA synchronous = NORMAL")
            try:
                with store.transaction(conn):
                    store.project(conn)
            finally:
                conn.execute(f"PRAGMA synchronous = {self.settings.synchronous}")
        except Exception as error:  # noqa: BLE001 - the writer must outlive a failed projection
            log.error("projection failed, retrying in 1 s: %r", error)
            self.project_after = time.monotonic() + 1.0
            if is_database_failure(error):
                self.close()
        else:
            self.unprojected, self.unprojected_since = 0, None

    def close(self):
        """Drop the connection (after a failure, or to stop); the next batch opens a new one."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()


# --- frames: plain JSON, one fixed shape per operation ----------------------------------------
# {"op": operation, field: value, ...}, exactly the fields FRAMES names, of their types: a
# Rejection and a Delivery as objects of their fields (the body in base64), a plan as it is.

_TEXT_OR_NULL = (str, type(None))
FRAMES = {
    "store_planned": {"plan": dict},
    "store_rejection": {"rejection": dict, "delivery": dict, "truncated": bool,
                        "body_bytes": (int, type(None))},
    "record_health": {"pid": int},
}
_REJECTION = {"http_status": int, "reason": str, "message": str, "errors": dict}
_DELIVERY = {"body": str, "endpoint": str, "received_at": str, "remote_addr": _TEXT_OR_NULL,
             "user_agent": _TEXT_OR_NULL, "content_type": _TEXT_OR_NULL,
             "authorization": _TEXT_OR_NULL}


class BadFrame(ValueError):
    """Bytes that are not a valid request to the writer: refused, nothing run."""


def encode_request(operation, args, kwargs):
    """A request to the writer as frame bytes (ASCII JSON: lone surrogates cross as escapes)."""
    if operation == "store_rejection":
        rejection, delivery = args
        fields = {"rejection": {name: getattr(rejection, name) for name in _REJECTION},
                  "delivery": {**{name: getattr(delivery, name) for name in _DELIVERY},
                               "body": base64.b64encode(delivery.body).decode("ascii")},
                  "truncated": False, "body_bytes": None, **kwargs}
    else:
        fields = dict(zip(FRAMES[operation], args))
    return json.dumps({"op": operation, **fields}, separators=(",", ":")).encode("ascii")


def _checked(value, fields, what):
    """``value`` when it is an object of exactly ``fields``, each of its types; else BadFrame."""
    if not isinstance(value, dict) or value.keys() != fields.keys():
        raise BadFrame(f"{what}: expected an object with fields {sorted(fields)}")
    for name, types in fields.items():
        if not isinstance(value[name], types):
            raise BadFrame(f"{what}.{name}: a {type(value[name]).__name__} is not allowed")
    return value


def decode_request(frame):
    """Frame bytes -> the write they ask for (a _Pending); BadFrame for anything else."""
    try:
        request = json.loads(frame)
    except ValueError:  # UnicodeDecodeError too
        raise BadFrame("not JSON") from None
    operation = request.pop("op", None) if isinstance(request, dict) else None
    fields = FRAMES.get(operation) if isinstance(operation, str) else None
    if fields is None:
        raise BadFrame(f"unknown operation {operation!r}")
    _checked(request, fields, operation)
    if operation != "store_rejection":
        return _Pending.of(operation, tuple(request.values()), {})
    delivery = _checked(request["delivery"], _DELIVERY, "delivery")
    try:
        body = base64.b64decode(delivery["body"], validate=True)
    except (binascii.Error, ValueError):
        raise BadFrame("delivery.body: not base64") from None
    args = (Rejection(**_checked(request["rejection"], _REJECTION, "rejection")),
            store.Delivery(**{**delivery, "body": body}))
    return _Pending.of(operation, args, {"truncated": request["truncated"],
                                         "body_bytes": request["body_bytes"]})


def _reply(status, value):
    """A reply frame: [status, value] (a Stored as its three fields)."""
    if isinstance(value, store.Stored):
        value = [value.callback_id, value.delivery_count, value.kind]
    payload = json.dumps([status, value], separators=(",", ":")).encode("utf-8")
    return _LENGTH.pack(len(payload)) + payload


_LENGTH = struct.Struct("!I")
_STATUS = {BadFrame: "bad_request", WriteFailed: "write_failed"}  # else "storage_error"
# A request holds at most one body (RECEIVER_MAX_BODY_BYTES, base64: 4/3) and a few fields.
_FRAME_OVERHEAD = 1 << 20


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
    """(socket path, lock path) of the writer of the database at ``db_path``: the socket in a
    directory only this user can enter (a Unix socket path is limited to 107 bytes), named by a
    hash of the database's real path; the lock file beside the database."""
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


def lock_holder(lock_path):
    """The pid written in the lock file by the writer that holds it (None if unreadable)."""
    try:
        with open(lock_path, "rb") as file:
            return int(file.read(32).strip() or 0) or None
    except (OSError, ValueError):
        return None


# --- the writer's side of the socket --------------------------------------------------------


class WriterServer:
    """A GroupCommitWriter serving every worker process over a Unix socket, from the one
    thread that runs ``serve()`` (the caller holds the writer lock)."""

    def __init__(self, settings, path):
        self.writer = GroupCommitWriter(settings)
        self.path = path
        self.max_frame = settings.max_body_bytes * 2 + _FRAME_OVERHEAD
        _private_directory(os.path.dirname(path))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # a dead writer's socket: we hold the lock, it is ours now
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.inode = os.stat(path).st_ino
        self.listener.listen(512)
        self._stopped = threading.Event()

    def stop(self):
        """Have ``serve()`` answer what has arrived and return, within HEARTBEAT_S."""
        self._stopped.set()

    def heartbeat(self):
        """Beat every HEARTBEAT_S until stopped (a thread of its own: a long commit is no hang)."""
        number = 1
        while not pause(self._stopped, HEARTBEAT_S):
            number += 1
            try:  # whole seconds: libfaketime's stat() keeps only the seconds of a file time
                os.utime(self.path, (number, number))
            except OSError as error:
                log.error("writer heartbeat failed: %s", error)

    def serve(self):
        """Read every complete request that has arrived, commit them all as one batch,
        answer each, derive when due; repeat. One thread: no hand-offs, no GIL contention."""
        threading.Thread(target=self.heartbeat, name="writer-heartbeat", daemon=True).start()
        selector = selectors.DefaultSelector()
        selector.register(self.listener, selectors.EVENT_READ)
        buffers = {}
        writer = self.writer
        # A kill -9 may have left committed events underived: project once at the start.
        writer.unprojected, writer.unprojected_since = 1, time.monotonic()
        try:
            while not self._stopped.is_set():
                try:
                    self._serve_once(selector, buffers, min(PROJECT_EVERY_S, HEARTBEAT_S)
                                     if writer.unprojected else HEARTBEAT_S)
                    if writer.unprojected and time.monotonic() >= max(
                            writer.project_after, writer.unprojected_since + PROJECT_EVERY_S):
                        writer.project_pending()
                except Exception:  # noqa: BLE001 - the writer must outlive any one bug
                    log.exception("writer loop error; serving on")
            # Stopping: no new connections; answer the requests already here, derive what is
            # left (a graceful stop leaves the projection caught up), then close.
            selector.unregister(self.listener)
            self.listener.close()
            self._serve_once(selector, buffers, 0)
            writer.project_pending()
        finally:
            for conn in buffers:
                conn.close()
            selector.close()
            writer.close()
            self._stopped.set()
            with contextlib.suppress(OSError):
                if os.stat(self.path).st_ino == self.inode:
                    os.unlink(self.path)

    def _serve_once(self, selector, buffers, timeout):
        batch = []
        for key, _ in selector.select(timeout):
            if key.fileobj is self.listener:
                with contextlib.suppress(OSError):
                    conn, _ = self.listener.accept()
                    selector.register(conn, selectors.EVENT_READ)
                    buffers[conn] = bytearray()
                continue
            conn = key.fileobj
            try:
                data = conn.recv(1 << 20)
            except OSError:
                data = b""
            buffers[conn] += data
            if not data or not self._take_frames(conn, buffers[conn], batch):
                selector.unregister(conn)  # closed by the worker, or a frame we refuse to read
                del buffers[conn]
                conn.close()
        if batch:
            runnable = [pending for _, pending in batch if pending.error is None]
            size = self.writer.settings.max_batch
            for start in range(0, len(runnable), size):
                self.writer.commit_batch(runnable[start:start + size])
            for conn, pending in batch:
                error = pending.error
                self._answer(conn, _reply("ok", pending.result) if error is None else
                             _reply(_STATUS.get(type(error), "storage_error"), str(error)))

    def _take_frames(self, conn, buffer, batch):
        """Move the complete frames in ``buffer`` into ``batch``; False to drop the connection."""
        while len(buffer) >= _LENGTH.size:
            (size,) = _LENGTH.unpack_from(buffer)
            if size > self.max_frame:
                log.error("refused a frame of %d bytes (the limit is %d); connection closed",
                          size, self.max_frame)
                self._answer(conn, _reply("bad_request", f"a frame of {size} bytes is too big"))
                return False
            if len(buffer) < _LENGTH.size + size:
                break
            frame = bytes(buffer[_LENGTH.size:_LENGTH.size + size])
            del buffer[:_LENGTH.size + size]
            try:
                pending = decode_request(frame)
            except BadFrame as error:
                log.error("refused a request to the writer: %s", error)
                pending = _Pending(None, error=error)
            batch.append((conn, pending))
        return True

    @staticmethod
    def _answer(conn, reply):
        with contextlib.suppress(OSError):  # the worker is gone; the selector drops it
            conn.sendall(reply)


# --- the workers' side ----------------------------------------------------------------------


class RemoteWriter:
    """A worker's handle on the writer process (one connection per thread). Fails fast: no
    socket, a refused or closed connection, or a heartbeat older than STALE_S (before sending
    and while waiting) is a StorageError at once."""

    POLL_S = 0.1  # while waiting for the writer, look at its heartbeat this often

    def __init__(self, settings, path):
        self.settings, self.path = settings, path
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
            self.close()  # a fork, or a new writer behind the same path
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
        conn, self._local.conn = getattr(self._local, "conn", None), None
        if conn is not None:
            conn.close()

    def run(self, operation, *args, **kwargs):
        """Have the writer run ``operation``; raise StorageError if it cannot, quickly when
        the writer is gone or hung."""
        frame = encode_request(operation, args, kwargs)
        frame = _LENGTH.pack(len(frame)) + frame
        deadline = time.monotonic() + self.settings.commit_timeout_s
        try:
            reused = getattr(self._local, "conn", None) is not None
            try:
                conn = self._send(frame, deadline)
            except (BrokenPipeError, ConnectionResetError):
                if not reused:
                    raise
                # The kept connection led to a writer that has since died: it never had the
                # whole frame, so it cannot have stored it; send it once more, to the new one.
                self.close()
                conn = self._send(frame, deadline)
            reply = b""
            while len(reply) < _LENGTH.size + (_LENGTH.unpack_from(reply)[0]
                                               if len(reply) >= _LENGTH.size else 0):
                chunk = self._wait(conn.recv, 65536, deadline)  # a reply takes one, usually
                if not chunk:
                    raise StorageError("writer closed the connection (it stopped or was replaced)")
                reply += chunk
            status, value = json.loads(reply[_LENGTH.size:])
            if status == "ok" and operation == "store_planned":
                value = store.Stored(*value)
        except (ConnectionRefusedError, FileNotFoundError):
            self.close()  # the socket of a writer that died: its successor is starting
            raise StorageError("writer not running (connection refused)") from None
        except StorageError:
            self.close()  # a reply may still come for this request: never reuse the connection
            raise
        except (OSError, ValueError, TypeError) as error:
            self.close()
            raise StorageError(f"writer unreachable: {error!r}") from None
        if status == "ok":
            return value
        raise (WriteFailed if status == "write_failed" else StorageError)(value)

    def _send(self, frame, deadline):
        """Send ``frame`` on this thread's connection to the live writer; return the connection."""
        conn = self._connection(self.alive())
        view = memoryview(frame)
        while view:
            view = view[self._wait(conn.send, view, deadline):]
        return conn

    def _wait(self, call, argument, deadline):
        """``call(argument)``, retried through the socket's POLL_S timeouts while the writer
        beats, until ``deadline``."""
        while True:
            try:
                return call(argument)
            except (BlockingIOError, TimeoutError):
                self.alive()
                if time.monotonic() > deadline:
                    timeout = self.settings.commit_timeout_s
                    raise StorageError(f"commit not confirmed within {timeout} s") from None


def writer_for(settings, environ=os.environ):
    """The writer this process should use: the writer process, when gunicorn started one."""
    path = environ.get(SOCKET_VARIABLE)
    return RemoteWriter(settings, path) if path else GroupCommitWriter(settings)


# Set by the gunicorn master for its workers; not a user setting.
SOCKET_VARIABLE = "RECEIVER_WRITER_SOCKET"


# --- the writer process and its supervisor --------------------------------------------------


def take_lock(lock_path):
    """Hold the exclusive flock of ``lock_path``, waiting while another writer holds it (the
    kernel wakes the waiter the moment it is let go); returns the open file descriptor."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log.info("writer: standing by while another writer (pid %s) serves %s",
                 lock_holder(lock_path), lock_path[:-len(LOCK_SUFFIX)])
        fcntl.flock(fd, fcntl.LOCK_EX)
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
    server = None

    def watch_master():
        while os.read(0, 4096):
            pass
        if server is None:
            os._exit(0)  # a standby (or a writer not yet serving): nothing to finish
        server.stop()

    threading.Thread(target=watch_master, name="writer-stdin", daemon=True).start()
    lock = take_lock(lock_path)
    server = WriterServer(settings, socket_path)
    log.info("writer: serving %s at %s", os.path.abspath(settings.db_path), socket_path)
    server.serve()  # returns with the database closed and the socket removed
    os.close(lock)  # the next writer may start now, before this interpreter has wound down
    log.info("writer: stopped (%d writes in %d batches)", server.writer.writes,
             server.writer.batches)
    return 0


def _exit_status(pid):
    """None while our child ``pid`` runs, else its exit status ("unknown" when gunicorn's
    arbiter, which reaps every child with waitpid(-1), took it first)."""
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return "unknown"
    return os.waitstatus_to_exitcode(status) if done else None


class Supervisor:
    """In the gunicorn master: keep a writer process serving, and one more standing by.

    gunicorn's arbiter forks, replaces and kills its HTTP workers only, and runs no hook on its
    loop; so a thread of the master (which holds no SQLite connection) handles the writer's
    two faults. It exits or is killed: the standby (Python started, waiting on the writer lock)
    takes over at once, and a new standby is spawned (measured under load, kill -9: back in
    0.06-0.19 s, against 1.1-1.7 s and ~20 times the 503s when a new Python must start). It
    hangs (no ``Heartbeat`` change for HUNG_S): it is killed, so replaced. Each writer's stdin
    is a pipe from the master: closing it (``stop()``), or the master's death, ends it.
    """

    PROCESSES = 2  # the serving writer and its standby

    def __init__(self, settings, log=log):
        self.log = log
        self.socket_path, self.lock_path = endpoint_paths(settings.db_path)
        self.procs = {}  # pid -> (the master's end of its stdin, time.monotonic() at its start)
        self._watched = (None, None)  # (the serving pid, a Heartbeat of its socket)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="writer-supervisor",
                                        daemon=True)

    def start(self, ready_timeout=10.0):
        """Start the writer and its standby, wait (up to ``ready_timeout``) until one serves,
        then watch them from a thread; returns self."""
        _private_directory(os.path.dirname(self.socket_path))
        for _ in range(self.PROCESSES):
            self._spawn()
        deadline = time.monotonic() + ready_timeout
        while not self._listening():
            if time.monotonic() > deadline:
                self.log.warning("writer not ready after %.0f s: answering 503 until it is",
                                 ready_timeout)
                break
            time.sleep(0.02)
        self._thread.start()
        return self

    def _listening(self):
        """True once a writer accepts connections at the socket."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            return probe.connect_ex(self.socket_path) == 0

    def _spawn(self):
        """Start ``python -m receiver.writer``, its stdin a pipe from here, and nothing else of
        the master's but stdout and stderr (not gunicorn's listening sockets, inheritable for
        USR2; glibc skips a descriptor closed since it was listed). With posix_spawn: Popen
        waits for its child's exec on a pipe that a worker forked meanwhile would hold."""
        read, write = os.pipe()
        actions = [(os.POSIX_SPAWN_DUP2, read, 0)] + [
            (os.POSIX_SPAWN_CLOSE, fd) for fd in map(int, os.listdir("/proc/self/fd")) if fd > 2]
        try:
            pid = os.posix_spawn(sys.executable, [sys.executable, "-m", "receiver.writer"],
                                 os.environ, file_actions=actions)
        except BaseException:
            os.close(write)
            raise
        finally:
            os.close(read)
        self.procs[pid] = (write, time.monotonic())
        self.log.info("writer process %d started", pid)

    def inherited_fds(self):
        """File descriptors a forked worker must close (the writers' stdin pipes)."""
        return [stdin for stdin, _ in list(self.procs.values())]

    def _watch(self):
        backoff = 0.0
        while not pause(self._stopping, 0.1):
            for pid, (stdin, started) in list(self.procs.items()):
                code = _exit_status(pid)
                if code is None:
                    continue
                self.log.error("writer process %d is gone (exit status %s)", pid, code)
                os.close(stdin)
                del self.procs[pid]
                # Writers that keep dying at once (a bad path, a full disk) are retried less often.
                ran = time.monotonic() - started
                backoff = 0.0 if ran > 10 else min(max(backoff * 2, 0.1), 2.0)
            holder = lock_holder(self.lock_path)
            if holder in self.procs and self._hung(holder):
                self.log.error("writer process %d has not beaten for %.0f s: replacing it",
                               holder, HUNG_S)
                os.kill(holder, signal.SIGKILL)
            if len(self.procs) < self.PROCESSES and not pause(self._stopping, backoff):
                self._spawn()

    def _hung(self, holder):
        """No beat seen for HUNG_S while ``holder`` held the lock all along (a standby that
        just took over, and has not bound its socket yet, starts a fresh count)."""
        if holder != self._watched[0]:
            self._watched = (holder, Heartbeat(self.socket_path))
        try:
            return self._watched[1].age()[0] > HUNG_S
        except OSError:
            return False

    def stop(self, timeout=10.0):
        """Let the writers finish (the serving one answers what it has, derives what is left,
        exits); kill what is left after ``timeout`` s."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(2)
        for stdin, _ in self.procs.values():
            os.close(stdin)
        deadline = time.monotonic() + timeout
        for pid in self.procs:
            while _exit_status(pid) is None:
                if time.monotonic() > deadline:
                    self.log.error("writer process %d did not stop in %.0f s: killed", pid,
                                   timeout)
                    os.kill(pid, signal.SIGKILL)
                    break
                time.sleep(0.02)


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
