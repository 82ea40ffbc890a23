"""Backups and restores of the event store while the receiver runs.

A backup is SQLite's online backup API reading one snapshot: the copy holds every transaction
committed before it started (so every callback acknowledged with a 200 by then) and nothing
half-written, while the receiver goes on committing in WAL mode. The copy is written beside
its destination under a temporary name, checked with ``PRAGMA integrity_check`` and only then
renamed into place, so a destination file is never a partial copy.

A restore copies a checked backup into the database with the same API, which writes through
SQLite's own locking: it is never a file swapped under an open connection.
"""

import fcntl
import os
import sqlite3
import struct
from contextlib import closing
from datetime import datetime, timezone

from . import db

# The backup copies this many pages (of 4 KiB) per step, so the progress bar moves.
PAGES_PER_STEP = 1024

# Every connection that has a WAL-mode database open holds a shared (read) lock on byte 128 of
# its "-shm" file, the "DMS" byte of SQLite's unix VFS (UNIX_SHM_BASE + SQLITE_SHM_NLOCK =
# (22 + 8) * 4 + 8), from opening to closing. Asking the kernel who would block a write lock on
# that byte (F_GETLK) tells whether any process has the file open, without taking any lock.
SHM_DMS_BYTE = 128


class BackupError(Exception):
    """A backup or restore that cannot go ahead; the message says why, in one line."""


def holder_of(path):
    """The pid of a process that has the SQLite database ``path`` open in WAL mode, or None.

    Reads the lock on the -shm file's DMS byte (see SHM_DMS_BYTE) with F_GETLK: honest for
    every process on this host using SQLite's default unix VFS (the receiver's gunicorn master
    holds its writer's connection open while it runs; Datasette holds one too). Not seen: a
    process on another host sharing the file over NFS, which SQLite does not support anyway.
    """
    shm = f"{path}-shm"
    try:
        fd = os.open(shm, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        # struct flock on Linux: short l_type, short l_whence, off_t l_start, off_t l_len,
        # pid_t l_pid (with padding to 32 bytes on 64-bit).
        request = struct.pack("hhxxxxqqixxxx", fcntl.F_WRLCK, os.SEEK_SET, SHM_DMS_BYTE, 1, 0)
        answer = fcntl.fcntl(fd, fcntl.F_GETLK, request)
        lock_type, _, _, _, pid = struct.unpack("hhxxxxqqixxxx", answer)
        return None if lock_type == fcntl.F_UNLCK else pid
    finally:
        os.close(fd)


def _open_source(path):
    """A read-only connection to an existing database file (never creates one)."""
    if not os.path.isfile(path):
        raise BackupError(f"{path}: no such database file")
    try:
        conn = db.connect(path, readonly=True)
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as error:
        raise BackupError(f"{path}: not a readable SQLite database ({error})") from None
    return conn


def integrity(conn):
    """SQLite's ``PRAGMA integrity_check`` result lines (``['ok']`` when sound)."""
    return [row[0] for row in conn.execute("PRAGMA integrity_check")]


def _first_problems(problems, limit=3):
    """The first integrity problems on one line (SQLite's own text spans several)."""
    return " ".join("; ".join(problems[:limit]).split())


def backup_path(destination, source, now=None):
    """The file a backup writes: ``destination`` itself, or inside a directory a name with
    the source's name and the UTC time (``events-20261202T031500Z.db``)."""
    if os.path.isdir(destination):
        stem = os.path.splitext(os.path.basename(source))[0]
        stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
        return os.path.join(destination, f"{stem}-{stamp}.db")
    return destination


def pages(conn):
    """Pages in the database (for the progress bar)."""
    return conn.execute("PRAGMA page_count").fetchone()[0]


def backup(source, destination, *, force=False, progress=None):
    """Copy the live database ``source`` to ``destination`` (a file, or a directory for a
    time-stamped file); return (path written, {table: rows} of the copy).

    ``progress(done, total)`` is called as pages are copied. An existing destination file is
    replaced only with ``force``.
    """
    target = backup_path(destination, source)
    if os.path.abspath(target) == os.path.abspath(source):
        raise BackupError(f"{target}: is the database itself; back up to another file")
    if os.path.exists(target) and not force:
        raise BackupError(f"{target} exists; choose another file or pass --force to replace it")
    directory = os.path.dirname(os.path.abspath(target))
    if not os.path.isdir(directory):
        raise BackupError(f"{directory}: no such directory")
    temporary = os.path.join(directory, f".{os.path.basename(target)}.partial-{os.getpid()}")
    with closing(_open_source(source)) as src:
        # One read transaction for the whole copy: a WAL snapshot that the receiver's commits
        # neither change nor block, so the copy is consistent however long it takes (copying
        # in steps outside a transaction restarts on every commit, and never ends under load).
        src.execute("BEGIN")
        src.execute("SELECT count(*) FROM sqlite_master").fetchone()
        total = pages(src)
        try:
            with closing(sqlite3.connect(temporary, isolation_level=None)) as dst:
                src.backup(dst, pages=PAGES_PER_STEP, sleep=0,
                           progress=(lambda status, remaining, count:
                                     progress(count - remaining, count)) if progress else None)
                # The copy takes the live file's WAL mode, which needs a -wal and a -shm file
                # beside it to be read, so it could not be read from read-only media. In
                # rollback mode it is one self-contained file, readable anywhere.
                dst.execute("PRAGMA journal_mode = DELETE")
                problems = integrity(dst)
                if problems != ["ok"]:
                    raise BackupError(f"the copy failed its integrity check: {_first_problems(problems)}")
                counts = table_counts(dst)
            src.execute("COMMIT")
            os.replace(temporary, target)
        except BaseException:
            for leftover in (temporary, f"{temporary}-journal", f"{temporary}-wal", f"{temporary}-shm"):
                if os.path.exists(leftover):
                    os.remove(leftover)
            raise
    if progress:
        progress(total, total)
    return target, counts


def table_counts(conn):
    """{table: rows} of every table of a database."""
    names = [row[0] for row in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
    return {name: conn.execute(f"SELECT count(*) FROM [{name}]").fetchone()[0] for name in names}


# SQLite's file header (https://www.sqlite.org/fileformat.html#the_database_header).
HEADER = b"SQLite format 3\x00"


def _check_file(path):
    """Read the backup's header: BackupError saying what is wrong when the file is missing,
    unreadable, not a SQLite database, or shorter than its header says (a truncated copy)."""
    try:
        with open(path, "rb") as file:
            header = file.read(100)
            size = os.fstat(file.fileno()).st_size
    except FileNotFoundError:
        raise BackupError(f"{path}: no such database file") from None
    except OSError as error:
        raise BackupError(f"{path}: cannot be read ({error.strerror})") from None
    if size == 0:
        raise BackupError(f"{path}: an empty file, not a backup")
    if not header.startswith(HEADER) or len(header) < 100:
        raise BackupError(f"{path}: not a SQLite database (no SQLite header); a receiver backup is one")
    page_size = struct.unpack(">H", header[16:18])[0]
    page_size = 65536 if page_size == 1 else page_size
    change_counter, page_count, valid_for = (struct.unpack(">I", header[offset:offset + 4])[0]
                                             for offset in (24, 28, 92))
    # The page count in the header is kept up to date whenever this matches (SQLite 3.7.0+).
    if valid_for == change_counter and size < page_size * page_count:
        raise BackupError(f"{path}: truncated: {size} bytes of the {page_size * page_count} its "
                          f"header announces (an incomplete copy?)")


def _open_backup(path):
    """A read-only connection to the backup ``path`` that writes nothing beside it.

    A backup (one file, nothing writing to it) is opened immutable: no lock, no -wal, -shm or
    -journal created, so it reads from read-only media and leaves its directory as it was.
    A file with a -wal or -journal beside it (a live database, or a crashed one) holds data
    in them: it is opened read-only instead, which reads them."""
    _check_file(path)
    companion = any(os.path.exists(f"{path}{suffix}") for suffix in ("-wal", "-journal"))
    try:
        conn = db.connect(path, readonly=True, immutable=not companion)
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as error:
        raise BackupError(f"{path}: cannot be read as a SQLite database ({error})") from None
    return conn


def check_backup(path):
    """Open a backup read-only and check it is a sound receiver database this receiver can
    use; return its schema version. Raises BackupError naming the problem."""
    with closing(_open_backup(path)) as conn:
        try:
            problems = integrity(conn)
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as error:
            raise BackupError(f"{path} failed its integrity check: {error}") from None
    if problems != ["ok"]:
        raise BackupError(f"{path} failed its integrity check: {_first_problems(problems)}")
    if version == 0 or "callbacks" not in tables:
        raise BackupError(f"{path} is not a receiver database (no schema version or callbacks table)")
    if version > db.SCHEMA_VERSION:
        raise BackupError(f"{path} has schema version {version}, newer than this receiver's "
                          f"{db.SCHEMA_VERSION}; restore it with a newer receiver")
    return version


def restore(source, target, *, force=False, progress=None, synchronous="FULL"):
    """Replace the database ``target`` with the backup ``source``, after checking it.

    Refuses while a process has ``target`` open (see ``holder_of``) unless ``force``: then the
    copy goes through SQLite's locking, and the running receiver carries on with the restored
    data (its writes wait, or get 503s, while the copy holds the lock). The restored file is
    migrated to this receiver's schema. Returns {table: rows} of the restored database.
    """
    check_backup(source)
    if os.path.exists(target) and os.path.samefile(source, target):
        raise BackupError(f"{source} is the database itself")
    holder = holder_of(target)
    if holder is not None and not force:
        raise BackupError(
            f"{target} is in use by process {holder} (a running receiver or Datasette); stop it "
            f"first, or pass --force to restore into the live database"
        )
    directory = os.path.dirname(os.path.abspath(target))
    if not os.path.isdir(directory):
        raise BackupError(f"{directory}: no such directory")
    with closing(_open_backup(source)) as src, \
            closing(db.connect(target, synchronous=synchronous)) as dst:
        src.execute("BEGIN")
        src.execute("SELECT count(*) FROM sqlite_master").fetchone()
        src.backup(dst, pages=PAGES_PER_STEP, sleep=0,
                   progress=(lambda status, remaining, count:
                             progress(count - remaining, count)) if progress else None)
        src.execute("COMMIT")
        # The backup API copies the source's header; the receiver's file stays in WAL mode.
        dst.execute("PRAGMA journal_mode = WAL")
    db.init_db(target, synchronous=synchronous)
    with closing(db.connect(target, synchronous=synchronous)) as conn:
        problems = integrity(conn)
        if problems != ["ok"]:
            raise BackupError(f"{target} failed its integrity check after the restore: "
                              f"{_first_problems(problems)}")
        return table_counts(conn)
