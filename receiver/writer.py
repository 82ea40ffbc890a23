"""Group commit: one writer thread per process shares each synced commit among requests.

Request threads hand their write (a function of a connection) to the writer and wait. The
writer takes everything queued, runs it in one ``BEGIN IMMEDIATE`` transaction, commits
(synced to disk with ``synchronous=FULL``) and only then wakes the requests, so no request
is answered before its data is durable, while one fsync serves a whole batch.
"""

import fcntl
import logging
import os
import queue
import sqlite3
import threading

from . import db

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

    def __init__(self, work):
        self.work = work
        self.done = threading.Event()
        self.result = None
        self.error = None


class GroupCommitWriter:
    """Serialises this process's writes through one connection, committing them in batches."""

    def __init__(self, settings):
        self.settings = settings
        self._lock = threading.Lock()
        self._pid = None
        self._queue = None
        self._lock_file = None
        self._lock_pid = None
        self.batches = 0
        self.writes = 0

    def submit(self, work):
        """Run ``work(conn)`` inside a committed transaction and return its result.

        Raises StorageError when the transaction could not be committed in time.
        """
        pending = _Pending(work)
        self._ensure_started().put(pending)
        if not pending.done.wait(self.settings.commit_timeout_s):
            raise StorageError(
                f"commit not confirmed within {self.settings.commit_timeout_s} s"
            )
        if pending.error is not None:
            raise pending.error
        return pending.result

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
        conn = None
        while True:
            batch = [work_queue.get()]
            while len(batch) < self.settings.max_batch:
                try:
                    batch.append(work_queue.get_nowait())
                except queue.Empty:
                    break
            try:
                if conn is None:
                    conn = db.connect_settings(self.settings)
                with self._write_lock():
                    self._commit(conn, batch)
            except sqlite3.Error as error:
                log.error("storage failed, answering 503 to %d request(s): %s", len(batch), error)
                failure = StorageError(str(error))
                for pending in batch:
                    pending.result, pending.error = None, failure
                conn = self._reset(conn)
            except BaseException as error:  # a bug must not kill the writer or hang requests
                log.exception("unexpected error in the writer")
                failure = StorageError(f"internal error: {error!r}")
                for pending in batch:
                    pending.result, pending.error = None, failure
                conn = self._reset(conn)
            for pending in batch:
                pending.done.set()

    def _commit(self, conn, batch):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for pending in batch:
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

    def _write_lock(self):
        """Serialise the worker processes' writers with a blocking file lock.

        SQLite's own busy handler polls with sleeps of up to 100 ms, which shows up as latency
        spikes when several processes write; a waiter on flock is woken the moment the lock
        is released. Each writer holds it for one batch, while the others' batches grow.
        """
        if self._lock_file is None or self._lock_pid != os.getpid():
            self._lock_file = open(f"{self.settings.db_path}.write-lock", "a+b")
            self._lock_pid = os.getpid()
        return _FileLock(self._lock_file)

    @staticmethod
    def _reset(conn):
        """Drop a connection after a failure; the next batch opens a fresh one."""
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error:
                pass
        return None


class _FileLock:
    """``with`` an exclusive flock on an open file."""

    def __init__(self, file):
        self.file = file

    def __enter__(self):
        fcntl.flock(self.file.fileno(), fcntl.LOCK_EX)

    def __exit__(self, *exc):
        fcntl.flock(self.file.fileno(), fcntl.LOCK_UN)
