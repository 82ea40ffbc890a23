"""Nothing lost on a crash, a full disk or a read-only file: the real gunicorn under load.

Each test starts ``gunicorn -c config/gunicorn.conf.py receiver.wsgi:app`` on 127.0.0.1 in
its own process group, posts distinct realistic callbacks (receiver.simulate) from 16
threads, breaks something mid-run, and then, with every process gone, checks the file:

- every body that got a 200 is in ``callbacks`` (by the sha256 of the exact bytes posted);
- ``PRAGMA integrity_check`` is ok, and ``receiver check`` (derived messages/dispatches rows
  equal a rebuild from the event log) exits 0;
- nothing was answered but 200 or 503 (no 500, and no 4xx for a valid callback).

How things are broken (Linux; root for the last two, else they skip, saying why):

- crash: SIGKILL to workers (mid-request, waiting for their commit), then to the whole process
  group: the master, its workers and its writer process (likely inside a group commit) and its
  standby; restart on the same file (the writer tests kill the writer alone:
  test_writer_failures.py);
- full disk: the database lives on a small tmpfs mounted for the test and filled with a
  ballast file; deleting the ballast must bring back 200s without a restart;
- read-only file: ``chattr +i`` on the database and its WAL, later ``chattr -i``. Permission
  bits do not stop root, and ``mount -o remount,ro`` is refused (EBUSY) while the receiver
  has the file open for writing, so a read-only remount cannot happen mid-run.
"""

import errno
import http.client
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from testing.processes import Gunicorn, get
from testing.traffic import (
    Bodies,
    LoadGenerator,
    acknowledged,
    integrity_check,
    post,
    receiver_check,
    stored_hashes,
    summarize,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="kills processes and reads /proc: Linux only")

WORKER_KILLS = 4
MIN_ACKS = 200  # a run that acknowledged fewer proves little
TMPFS_SIZE = "64m"
HEALTH_PROBES = 3


# --- shared checks -------------------------------------------------------------------------


def report(label, **facts):
    """One summary line on stdout (shown with -s, or with the output of a failing test)."""
    print(f"[durability] {label}: " + ", ".join(f"{k}={v}" for k, v in facts.items()))


def assert_nothing_lost(db_path, outcomes, server):
    """Every 200 is stored; only 200 and 503 were answered; the file is consistent."""
    statuses = summarize(outcomes)
    http_statuses = {s for s in statuses if isinstance(s, int)}
    assert http_statuses <= {200, 503}, (
        f"answers other than 200/503 (a 500, or a 4xx for a valid callback, is a bug): "
        f"{statuses}\n{server.output(tail=4000)}")

    acks = acknowledged(outcomes)
    not_stored_replies = [o.reply[:200] for o in acks
                          if json.loads(o.reply).get("status") != "stored"]
    assert not not_stored_replies, (
        f"a distinct body's 200 did not say 'stored': {not_stored_replies[:5]}")

    recorded, recomputed = stored_hashes(db_path)
    assert recorded == recomputed, "a callbacks.sha256 differs from the sha256 of its body"
    lost = sorted({o.sha256 for o in acks} - recorded)
    assert not lost, (
        f"BUG: {len(lost)} of {len(acks)} acknowledged callbacks are not in the database, "
        f"e.g. {lost[:3]}\n{server.output(tail=4000)}")

    integrity = integrity_check(db_path)
    assert integrity == ["ok"], f"PRAGMA integrity_check: {integrity[:20]}"
    code, output = receiver_check(db_path)
    assert code == 0, f"receiver check --db {db_path} exited {code}:\n{output}"
    return recorded


class Run:
    """One test's gunicorn and load generators, and every outcome they recorded.

    ``run.phase()`` holds back a phase's AssertionError (e.g. "503s not seen within 20 s")
    until the processes are stopped and the durability checks have run, so that a receiver
    answering 200 for what it could not store fails as that ("BUG: ... not in the
    database"), not as a missing 503.
    """

    def __init__(self, server):
        self.server = server
        self.loads = []
        self.outcomes = []
        self.phase_error = None

    def load(self, bodies, threads=16):
        generator = LoadGenerator(self.server.port, bodies, threads=threads).start()
        self.loads.append(generator)
        return generator

    def stop_load(self, generator):
        self.loads.remove(generator)
        outcomes = generator.stop()
        self.outcomes += outcomes
        return outcomes

    @contextmanager
    def phase(self):
        try:
            yield
        except AssertionError as error:
            self.phase_error = error
        finally:
            self.problems = self.finish()

    def finish(self):
        """Stop every load generator, then gunicorn; return the teardown problems."""
        problems = []
        for generator in list(self.loads):
            try:
                self.stop_load(generator)
            except RuntimeError as error:
                problems.append(str(error))
        return problems + self.server.stop()

    def check(self, db_path):
        """Teardown clean, nothing acknowledged lost; then re-raise a held-back phase failure."""
        assert not self.problems, self.problems
        stored = assert_nothing_lost(db_path, self.outcomes, self.server)
        if self.phase_error is not None:
            raise self.phase_error
        return stored


def health_statuses(port, count=HEALTH_PROBES):
    statuses = []
    for _ in range(count):
        statuses.append(get(port, "/healthz", timeout=5)[0])
        time.sleep(0.1)
    return statuses


def count_status(status, at_least):
    return lambda outcomes: sum(o.status == status for o in outcomes) >= at_least


# --- kill -9 -------------------------------------------------------------------------------


def test_kill_9_workers_and_master_loses_nothing(tmp_path):
    db_path = tmp_path / "events.db"
    server = Gunicorn(db_path, tmp_path / "gunicorn.log", workers=3)
    rng = random.Random(7)
    run = Run(server)
    kills = []  # what each SIGKILL hit
    restarted = wal_bytes = None
    started = time.monotonic()
    server.start()
    with run.phase():
        load = run.load(Bodies(seed=1))
        load.wait_for(count_status(200, 50), started, 15, "200s before any kill")

        for _ in range(WORKER_KILLS):
            time.sleep(0.8)
            workers = server.worker_pids()
            # A worker killed while it waits for its commit: the writer must go on
            # committing for the others.
            victim = rng.choice(workers)
            os.kill(victim, signal.SIGKILL)
            kills.append("worker")
            server.wait_workers(replaced=[victim])
            respawned = time.monotonic()
            load.wait_for(count_status(200, 20), respawned, 10, "200s after a worker kill")

        time.sleep(0.8)
        server.kill9_all()  # the writer too: its batch in flight dies with it
        kills.append("master, workers and writers")
        # Left as a crash leaves it: the WAL (with whatever a killed commit half-wrote) is
        # still there for the restarted receiver's SQLite to recover from.
        wal = Path(f"{db_path}-wal")
        wal_bytes = wal.stat().st_size if wal.exists() else 0
        time.sleep(0.5)  # the load meets a closed port meanwhile
        restarted = time.monotonic()
        server.start()
        load.wait_for(count_status(200, 100), restarted, 15, "200s after the restart")
        time.sleep(1.0)

    acks = acknowledged(run.outcomes)
    after_restart = [o for o in acks if restarted is not None and o.started >= restarted]
    report("kill -9", kills=len(kills), what=kills, posts=len(run.outcomes), acks=len(acks),
           acks_after_restart=len(after_restart), wal_bytes_at_crash=wal_bytes,
           outcomes=summarize(run.outcomes),
           seconds=round(time.monotonic() - started, 1))
    run.check(db_path)
    assert len(kills) == WORKER_KILLS + 1, kills
    assert wal_bytes, "no WAL left after kill -9 of everything: nothing was mid-flight?"
    assert len(acks) >= MIN_ACKS, summarize(run.outcomes)
    assert len(after_restart) >= 100, "the restarted receiver did not take callbacks"


# --- a full disk ---------------------------------------------------------------------------


@pytest.fixture
def small_filesystem(tmp_path):
    """A fresh tmpfs of TMPFS_SIZE mounted under tmp_path; unmounted afterwards, always."""
    mountpoint = tmp_path / "fs"
    mountpoint.mkdir()
    if os.geteuid() != 0:
        pytest.skip("filling a disk needs a filesystem of its own: mounting a tmpfs needs root")
    if shutil.which("mount") is None or shutil.which("umount") is None:
        pytest.skip("mount/umount not installed")
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0700", "tmpfs", str(mountpoint)],
        capture_output=True, text=True, timeout=30,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (mount exited {result.returncode}: "
                    f"{result.stderr.strip()})")
    try:
        yield mountpoint
    finally:
        result = subprocess.run(["umount", str(mountpoint)], capture_output=True, text=True,
                                timeout=30)
        if result.returncode != 0:
            subprocess.run(["umount", "-l", str(mountpoint)], timeout=30)
        assert not os.path.ismount(mountpoint), f"{mountpoint} is still mounted"


def fill(path, chunk=1 << 20):
    """Write ``path`` until the filesystem is full (ENOSPC); return the bytes written."""
    written = 0
    block = b"\0" * chunk
    with open(path, "wb", buffering=0) as file:
        while chunk >= 512:
            try:
                written += file.write(block[:chunk])
            except OSError as error:
                if error.errno != errno.ENOSPC:
                    raise
                chunk //= 2
    return written


def drain(port, bodies, record, timeout=20.0):
    """Post, then health-check, one request at a time until neither fits on the full disk.

    After a checkpoint SQLite writes its WAL file from the start again, so a full disk still
    has room for as many WAL frames as the file already holds: a commit that fits there is
    on disk and rightly answered 200. Under load the group commits are large and fail;
    alone, a small one may fit (a health check, one frame, usually does). This uses that
    room up; each 200 it gets is checked to be stored like any other (posts' outcomes are
    appended to ``record`` as they come). Returns (post outcomes, health statuses).
    """
    deadline = time.monotonic() + timeout
    posts, health = [], []
    conn = None
    try:
        for attempt, enough in (("post", 5), ("health", 3)):
            consecutive = 0
            while consecutive < enough:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"the full disk kept taking writes for {timeout} s: posts "
                        f"{summarize(posts)}, health checks {count(health)}")
                if attempt == "post":
                    if conn is None:
                        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                    outcome, conn = post(conn, bodies.next())
                    posts.append(outcome)
                    record.append(outcome)
                    status = outcome.status
                else:
                    status = get(port, "/healthz", timeout=5)[0]
                    health.append(status)
                assert status in (200, 503), f"{attempt} on a full disk answered {status}"
                consecutive = consecutive + 1 if status == 503 else 0
    finally:
        if conn is not None:
            conn.close()
    return posts, health


def count(statuses):
    counts = {}
    for status in statuses:
        counts[status] = counts.get(status, 0) + 1
    return counts


def test_disk_full_gives_503_and_recovers(tmp_path, small_filesystem):
    db_path = small_filesystem / "events.db"
    ballast = small_filesystem / "ballast"
    # The log is outside the small filesystem: it must not be what fills it.
    server = Gunicorn(db_path, tmp_path / "gunicorn.log", workers=2)
    bodies = Bodies(seed=2)
    run = Run(server)
    facts = {}
    started = time.monotonic()
    server.start()
    workers_before = server.worker_pids()
    with run.phase():
        load = run.load(bodies)
        load.wait_for(count_status(200, 100), started, 15, "200s before the disk fills")

        filled = time.monotonic()
        facts["ballast_mib"] = round(fill(ballast) / 2**20, 1)
        load.wait_for(count_status(503, 20), filled, 20, "503s once the disk is full")
        full = time.monotonic()
        time.sleep(1.5)
        facts["full_under_load"] = [o for o in run.stop_load(load) if o.started >= full]

        facts["drain_posts"], facts["drain_health"] = drain(server.port, bodies, run.outcomes)

        # Full, and the WAL file's room used up: nothing can be stored, nothing gets a 200.
        load = run.load(bodies, threads=4)
        time.sleep(1.0)
        facts["health_full"] = health_statuses(server.port)
        facts["full_drained"] = run.stop_load(load)

        load = run.load(bodies)
        freed = time.monotonic()
        ballast.unlink()
        load.wait_for(count_status(200, 100), freed, 15,
                      "200s again once space returns, without restarting gunicorn")
        facts["health_after"] = health_statuses(server.port)
        time.sleep(0.5)
        facts["workers_after"] = server.worker_pids()

    acks = acknowledged(run.outcomes)
    report("disk full", posts=len(run.outcomes), acks=len(acks), **{
        key: summarize(value) if key in ("full_under_load", "drain_posts", "full_drained")
        else count(value) if key == "drain_health" else value
        for key, value in facts.items()
    }, seconds=round(time.monotonic() - started, 1))

    # Every 200 (before, while and after the disk was full) is stored; only 200s and 503s.
    run.check(db_path)
    assert len(acks) >= MIN_ACKS, summarize(run.outcomes)
    under_load, drained = facts["full_under_load"], facts["full_drained"]
    full_503s = [o for o in under_load + facts["drain_posts"] + drained if o.status == 503]
    assert all(o.retry_after for o in full_503s), "a 503 without Retry-After"
    assert summarize(under_load).get(503, 0) > summarize(under_load).get(200, 0), (
        f"under load on a full disk most posts must be 503: {summarize(under_load)}")
    assert drained and {o.status for o in drained} == {503}, (
        f"full disk, WAL room used up: {summarize(drained)} (only 503 expected)")
    assert facts["health_full"] == [503] * HEALTH_PROBES, facts["health_full"]
    assert facts["health_after"] == [200] * HEALTH_PROBES, facts["health_after"]
    assert facts["workers_after"] == workers_before, (
        f"workers changed ({workers_before} -> {facts['workers_after']}): one crashed or was "
        f"restarted\n{server.output()}")


# --- a read-only file ----------------------------------------------------------------------


@pytest.fixture
def immutable_files(tmp_path):
    """``immutable_files(paths, on)`` sets or clears chattr +i; cleared again afterwards."""
    if os.geteuid() != 0:
        pytest.skip("chattr +i needs root (CAP_LINUX_IMMUTABLE)")
    if shutil.which("chattr") is None:
        pytest.skip("chattr (e2fsprogs) not installed")
    probe = tmp_path / "chattr-probe"
    probe.write_bytes(b"x")
    result = subprocess.run(["chattr", "+i", str(probe)], capture_output=True, text=True)
    if result.returncode != 0:
        probe.unlink()
        pytest.skip(f"{tmp_path}'s filesystem has no immutable flag (chattr +i: "
                    f"{result.stderr.strip()})")
    try:
        with open(probe, "r+b", buffering=0):
            writable = True
    except PermissionError:
        writable = False
    subprocess.run(["chattr", "-i", str(probe)], check=True)
    probe.unlink()
    if writable:
        pytest.skip(f"chattr +i does not stop root writing on {tmp_path}'s filesystem")

    touched = set()

    def toggle(paths, on):
        touched.update(paths)
        for path in paths:
            subprocess.run(["chattr", "+i" if on else "-i", str(path)], check=True,
                           capture_output=True, timeout=10)

    try:
        yield toggle
    finally:
        # Always: an immutable file left behind could not even be deleted by root.
        for path in touched:
            if os.path.exists(path):
                subprocess.run(["chattr", "-i", str(path)], capture_output=True, timeout=10)


def test_read_only_file_gives_503_and_recovers(tmp_path, immutable_files):
    db_path = tmp_path / "events.db"
    server = Gunicorn(db_path, tmp_path / "gunicorn.log", workers=2)
    # Not the -shm file: SQLite maps it into memory, and a store into a mapped page of an
    # immutable file is a SIGBUS (a crash, not an error SQLite could answer 503 for).
    files = [db_path, Path(f"{db_path}-wal")]
    run = Run(server)
    facts = {}
    read_only = writable = None
    started = time.monotonic()
    server.start()
    workers_before = server.worker_pids()
    with run.phase():
        load = run.load(Bodies(seed=3))
        load.wait_for(count_status(200, 100), started, 15, "200s before the file turns read-only")
        assert all(path.exists() for path in files), os.listdir(tmp_path)

        immutable_files(files, True)
        read_only = time.monotonic()
        load.wait_for(count_status(503, 20), read_only, 20, "503s once the file is read-only")
        time.sleep(2.0)
        facts["health_read_only"] = health_statuses(server.port)

        writable = time.monotonic()
        immutable_files(files, False)
        load.wait_for(count_status(200, 100), writable, 15,
                      "200s again once the file is writable, without restarting gunicorn")
        facts["health_after"] = health_statuses(server.port)
        time.sleep(0.5)
        facts["workers_after"] = server.worker_pids()

    # chattr +i takes effect at once: every write after it fails, however much room the
    # WAL file has, so every post made while the file was read-only must get a 503.
    while_read_only = [o for o in run.outcomes if read_only is not None and writable is not None
                       and read_only <= o.started and o.ended <= writable]
    acks = acknowledged(run.outcomes)
    report("read-only", posts=len(run.outcomes), acks=len(acks),
           while_read_only=summarize(while_read_only), **facts,
           seconds=round(time.monotonic() - started, 1))

    run.check(db_path)
    assert len(acks) >= MIN_ACKS, summarize(run.outcomes)
    assert while_read_only and {o.status for o in while_read_only} == {503}, (
        f"while the file was read-only: {summarize(while_read_only)} (only 503 expected)")
    assert all(o.retry_after for o in while_read_only), "a 503 without Retry-After"
    assert facts["health_read_only"] == [503] * HEALTH_PROBES, facts["health_read_only"]
    assert facts["health_after"] == [200] * HEALTH_PROBES, facts["health_after"]
    assert facts["workers_after"] == workers_before, (
        f"workers changed ({workers_before} -> {facts['workers_after']}): one crashed or was "
        f"restarted\n{server.output()}")
