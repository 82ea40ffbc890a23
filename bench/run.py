"""Benchmark: the receiver against validation alone, a textbook peer and a no-op app, on the
normal disk and on a simulated network disk, and the writer alone.

For each disk, concurrency and round it starts each app under gunicorn (the receiver with the
production config, ``config/gunicorn.conf.py``) on a fresh database, warms it up, loads it with
wrk from 127.0.0.1 with pre-generated signed callbacks, stops it gracefully and checks that
every acknowledged callback is committed byte-exact and that the derived rows equal a rebuild
(``receiver check``). The simulated network disk is ``bench/slow_fsync.c``, built with gcc and
preloaded into the server processes: every fsync/fdatasync sleeps ``--fsync-ms`` first. The
same shim (sleeping 0 ms) counts the syncs on the normal disk. Then the writer alone: the
store's serial stage in process, without HTTP, against a raw insert; and what one callback
writes (pages and WAL bytes). Results go to bench-results/.

The exit status is non-zero only for a correctness failure (a non-2xx answer, a request error,
an acknowledged callback missing from the database, a failed ``receiver check``), never for
speed.

    python bench/run.py                      # 15 s per run, 16 and 64 connections, both disks
    python bench/run.py --quick              # a few seconds per run: a check that it all works
    python bench/run.py --repeat 3 --duration 10 --disks slow
    python bench/run.py --profile 10         # also a py-spy profile of a receiver worker
    python bench/run.py --soak 1000000       # one long receiver run: each of 1e6 bodies once
"""

import argparse
import hashlib
import json
import os
import platform
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from datetime import datetime
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(BENCH), str(REPO)]

import make_bodies  # noqa: E402
from testing.processes import GUNICORN_CONFIG, VENV_BIN, Gunicorn, children  # noqa: E402

APPS = {"receiver": "receiver.wsgi:app", "no-op": "bench.noop_app:app",
        "validate-only": "bench.validate_app:app", "textbook": "bench.textbook_app:app"}
DEFAULT_APPS = "receiver,validate-only,textbook,no-op"
# gunicorn's documented advice for sync workers, as the textbook peer's author would follow it.
TEXTBOOK_WORKERS = 2 * (os.cpu_count() or 1) + 1
TARGET_PATH = "/webhooks/vonage"
WRK_TIMEOUT = "15s"  # Vonage gives up on a response after 15 s
TICKS = os.sysconf("SC_CLK_TCK")
WARMUP_BODIES = 20_000
# The simulated network disk: an fsync on a cloud disk costs 1-5 ms (PERFORMANCE-NOTES.md).
SHIM_SOURCE = BENCH / "slow_fsync.c"
DISKS = ("normal", "slow")
# --quick: enough to see that everything runs and what the table looks like.
QUICK = {"duration": 3, "bodies": 20_000, "writer_alone": 2_000}
DEFAULTS = {"duration": 15, "bodies": 200_000, "writer_alone": 20_000}


# --- the machine -----------------------------------------------------------------------------

def _cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(module):
    try:
        from importlib.metadata import version
        return version(module)
    except Exception:
        return "?"


def _filesystem(path):
    """The filesystem type holding ``path`` (fsync cost depends on it: tmpfs syncs nothing)."""
    best, fstype = "", "?"
    path = os.path.realpath(path)
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            _, mount, kind, *_ = line.split()
            if (path == mount or path.startswith(mount.rstrip("/") + "/")) and len(mount) > len(best):
                best, fstype = mount, kind
    except OSError:
        pass
    return fstype


def machine_info(db_dir):
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True)
    wrk_version = (wrk.stdout + wrk.stderr).splitlines()[0].strip() if wrk.returncode in (0, 1) else "?"
    return {
        "nproc": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "flask": _version("flask"),
        "gunicorn": _version("gunicorn"),
        "marshmallow": _version("marshmallow"),
        "wrk": wrk_version,
        "db_dir": str(db_dir),
        "db_filesystem": _filesystem(db_dir),
        "memory_mib": _meminfo_total_mib(),
    }


def _meminfo_total_mib():
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return None


# --- processes ------------------------------------------------------------------------------

def base_app(name):
    """"receiver:nice5" (a variant) -> "receiver"."""
    return name.split(":", 1)[0]


def rss_kib(pid):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid, reaped=False):
    """User + system CPU seconds used by ``pid`` so far (0 if it is gone); with ``reaped``, its
    children's that it has waited for too (a worker or writer replaced during a run)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2:].split()
    return sum(int(f) for f in fields[11:15 if reaped else 13]) / TICKS


def process_tree(pid):
    """``pid`` and all its live descendants (master, workers, writer and theirs)."""
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo += children(current)
    return tree


def build_shim(directory):
    """Compile bench/slow_fsync.c into ``directory``; return the .so path (RuntimeError, one
    line, without gcc or if it does not compile)."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if not gcc:
        raise RuntimeError("the simulated disk needs gcc to build bench/slow_fsync.c "
                           "(`make system-deps`, or apt-get install gcc)")
    target = Path(directory) / "slow_fsync.so"
    done = subprocess.run([gcc, "-O2", "-Wall", "-shared", "-fPIC", "-o", str(target),
                           str(SHIM_SOURCE), "-ldl"], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"gcc could not build {SHIM_SOURCE.name}: {done.stderr.strip()}")
    return target


class SyncCounter:
    """The 8-byte file the shim adds each fsync/fdatasync of the server processes to."""

    def __init__(self, path):
        self.path = Path(path)
        self.path.write_bytes(bytes(8))

    def read(self):
        return int.from_bytes(self.path.read_bytes()[:8], sys.byteorder)

    def environment(self, shim, fsync_ms):
        """What a server's environment needs for the shim to slow (or only count) its syncs."""
        return {"LD_PRELOAD": str(shim), "SLOW_FSYNC_MS": str(fsync_ms),
                "SLOW_FSYNC_COUNTER": str(self.path)}


def machine_cpu():
    """(busy, total, steal) jiffies of the whole machine, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    steal = values[7] if len(values) > 7 else 0
    return sum(values) - idle - steal, sum(values), steal


class Server(Gunicorn):
    """One gunicorn master started with the production config (and the shell's settings), and
    its workers."""

    def __init__(self, app_name, run_dir, env_extra):
        super().__init__(run_dir / "events.db", run_dir / "gunicorn.log",
                         workers=TEXTBOOK_WORKERS if app_name == "textbook" else None,
                         app=APPS[base_app(app_name)], inherit=True, **env_extra)
        self.app_name = app_name
        self.run_dir = run_dir

    def command(self):
        """The production config, except for the textbook peer: plain ``gunicorn -w 2n+1``."""
        if self.app_name == "textbook":
            return [str(VENV_BIN / "gunicorn"), "-w", str(TEXTBOOK_WORKERS),
                    "-b", f"127.0.0.1:{self.port}", APPS["textbook"]]
        return super().command()

    def start(self, timeout=60):
        if self.app_name == "textbook":  # its schema first, as its README would say
            with open(self.log_path, "ab") as log:
                subprocess.run([str(VENV_BIN / "flask"), "--app", APPS["textbook"].split(":")[0],
                                "init-db"], cwd=REPO, env=self.env, stdout=log,
                               stderr=subprocess.STDOUT, check=True, timeout=60)
        super().start(timeout)
        # Each worker imports the app after the fork; give the others time to finish too.
        for _ in range(4 * self.worker_count):
            self._healthy()
        time.sleep(0.5)

    def _healthy(self):
        try:
            with urllib.request.urlopen(self.url + "/healthz", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def workers(self):
        return self.worker_pids()

    def rss(self):
        """{pid: VmRSS KiB} of the master, the workers and the writer processes."""
        return {pid: rss_kib(pid) for pid in [self.master, *children(self.master)]}

    def cpu(self):
        """CPU seconds of the master, its workers, the writer and their children (those that
        exited and were waited for included), from /proc/<pid>/stat."""
        return sum(cpu_seconds(pid, reaped=True) for pid in process_tree(self.master))

    def http_worker_cpu(self):
        """CPU seconds of the HTTP workers alone (not the master, not the writer): what the
        request path costs before the writer."""
        return sum(cpu_seconds(pid) for pid in self.worker_pids())

    def stop(self, grace=40):
        """SIGTERM (graceful: in-flight requests finish), SIGKILL of its group if it hangs."""
        return super().stop(grace)

    def log_problems(self):
        """Lines of the error log that are not routine (errors, tracebacks, worker timeouts)."""
        text = self.log_path.read_text(errors="replace")
        pattern = re.compile(r"\[(ERROR|CRITICAL)\]|Traceback|WORKER TIMEOUT| ERROR | 503 ")
        return [line for line in text.splitlines() if pattern.search(line)]


class LagSampler(threading.Thread):
    """Reads ``projection_lag_ms`` from the receiver's /healthz every ``interval`` seconds
    while a load runs (a receiver without a deferred projection has none: no samples)."""

    def __init__(self, url, interval=0.2):
        super().__init__(daemon=True)
        self.url, self.interval = url + "/healthz", interval
        self.samples, self.failures = [], 0
        self.stopped = threading.Event()

    def run(self):
        while not self.stopped.wait(self.interval):
            try:
                with urllib.request.urlopen(self.url, timeout=5) as response:
                    lag = json.loads(response.read()).get("projection_lag_ms")
            except (OSError, ValueError):
                self.failures += 1
                continue
            if isinstance(lag, (int, float)):
                self.samples.append(lag)

    def stop(self):
        self.stopped.set()
        self.join()
        if not self.samples:
            return None
        ordered = sorted(self.samples)
        return {"samples": len(ordered), "p50": ordered[len(ordered) // 2],
                "p99": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
                "max": ordered[-1], "failures": self.failures}


class Sampler(threading.Thread):
    """Samples the workers' RSS every ``interval`` seconds while a load runs."""

    def __init__(self, server, interval):
        super().__init__(daemon=True)
        self.server, self.interval = server, interval
        self.samples = []
        self.stopped = threading.Event()
        self.started_at = time.monotonic()

    def run(self):
        while not self.stopped.wait(self.interval):
            rss = self.server.rss()
            self.samples.append((round(time.monotonic() - self.started_at, 1), sum(rss.values())))

    def stop(self):
        self.stopped.set()
        self.join()


# --- wrk ------------------------------------------------------------------------------------

class BodySet:
    """The body files of one load: one file per wrk thread, ``prefix.0``, ``prefix.1``...

    Each file is its own stream of dispatches with its own re-deliveries (made by
    make_bodies from its own seed), so any prefix a thread gets through has the designed mix.
    """

    def __init__(self, prefix, threads, count, seed, secret):
        self.prefix, self.threads = prefix, threads
        self.lengths, self.mix = [], Counter()
        per_thread = -(-count // threads)
        for i in range(threads):
            self.mix.update(make_bodies.write(f"{prefix}.{i}", per_thread, seed * 1009 + i, secret))
            self.lengths.append(per_thread)

    def slices(self):
        """Each thread's lines as (authorization, body) bytes (read when needed: soak files are big)."""
        return [list(make_bodies.read_lines(f"{self.prefix}.{i}")) for i in range(self.threads)]

    def remove(self):
        for i in range(self.threads):
            Path(f"{self.prefix}.{i}").unlink(missing_ok=True)


def run_wrk(url, prefix, connections, threads, duration, log_path, stop_after=0):
    """Run wrk with post.lua; return its WRK_RESULT dict, the CPU it used, the 200s' acks."""
    ack_path = Path(log_path).with_suffix(".acks")
    command = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(duration))}s",
               "--timeout", WRK_TIMEOUT, "-s", str(BENCH / "post.lua"), url,
               "--", str(prefix), str(stop_after), TARGET_PATH, str(ack_path)]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log)
        cpu = 0.0
        output = []

        def read():
            output.append(proc.stdout.read())

        watcher = threading.Thread(target=read, daemon=True)
        watcher.start()
        markers = [Path(f"{ack_path}.stopped.{i}") for i in range(threads)]
        interrupted = False
        while proc.poll() is None:
            cpu = max(cpu, cpu_seconds(proc.pid))
            if stop_after and not interrupted and all(m.exists() for m in markers):
                proc.send_signal(signal.SIGINT)  # every thread is done: end wrk's wait now
                interrupted = True
            time.sleep(0.1)
        for marker in markers:
            marker.unlink(missing_ok=True)
        watcher.join()
        log.write(output[0])
    text = output[0].decode(errors="replace")
    match = re.search(r"^WRK_RESULT (.*)$", text, re.M)
    if proc.returncode != 0 or not match:
        raise RuntimeError(f"wrk failed (exit {proc.returncode}); see {log_path}:\n{text[-2000:]}")
    result = json.loads(match.group(1))
    result["wrk_cpu_s"] = round(cpu, 2)
    result["connections"] = connections
    result["connections_per_thread"] = connections // threads
    result["threads_n"] = threads
    result["acks"] = [tuple(map(int, line.split())) for line in ack_path.read_text().splitlines()]
    return result


def summarise_codes(result):
    codes = Counter()
    for thread in result["threads"]:
        codes.update({int(k): v for k, v in thread["codes"].items()})
    return codes


# --- checking the database ------------------------------------------------------------------

def _kind_of(body):
    return "message_status" if body.startswith(b'{"message_uuid"') else "final_report"


def issued_lines(slices, result):
    """The lines wrk sent (or began to send), thread by thread, in order."""
    sent = []
    for thread in result["threads"]:
        lines = slices[thread["id"]]
        sent += [lines[k % len(lines)] for k in range(thread["issued"])]
    return sent


def sent_mix(lines):
    """Kinds of the bodies sent, re-deliveries (a body already sent) counted apart."""
    seen, mix = set(), Counter()
    for _, body in lines:
        digest = hashlib.sha256(body).digest()
        mix["re-delivery" if digest in seen else _kind_of(body)] += 1
        seen.add(digest)
    return mix


def verify_receiver(db_path, loads, signed, sample=300, seed=7):
    """Check that every 200 answer is a committed delivery in the database, and nothing else is.

    ``loads`` is a list of (slices, wrk result): the warm-up and the measured run. Each 200
    names the row and the delivery it committed (callback_id, delivery_count); each must be
    there, once. Then the counts: sum(delivery_count) may exceed the 200s only by requests wrk
    left unanswered when it stopped (the server still stored them); no stored body was not
    sent, nor stored more often than sent; a sample of answered rows holds the sent bytes.
    """
    acks = [ack for _, result in loads for ack in result["acks"]]
    codes = Counter()
    for _, result in loads:
        codes.update(summarise_codes(result))
    non_2xx = sum(n for c, n in codes.items() if not 200 <= c < 300)
    unanswered = sum(t["issued"] - t["responded"] for _, r in loads for t in r["threads"])
    sent = Counter()
    sent_lines = {}
    for slices, result in loads:
        for auth, body in issued_lines(slices, result):
            digest = hashlib.sha256(body).hexdigest()
            sent[digest] += 1
            sent_lines[digest] = (auth, body)
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        rows = {row[0]: row[1:] for row in conn.execute("SELECT id, sha256, delivery_count FROM callbacks")}
        by_sha = {sha: count for sha, count in rows.values()}
        stored_deliveries = sum(by_sha.values())
        tables = {}
        for table in ("callbacks", "status_events", "final_reports", "final_report_messages",
                      "messages", "dispatches", "rejected_callbacks"):
            try:
                tables[table] = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            except sqlite3.Error:
                tables[table] = None
        kinds = dict(conn.execute("SELECT kind, count(*) FROM callbacks GROUP BY kind"))
        try:
            signatures = dict(conn.execute(
                "SELECT signature_status, count(*) FROM callbacks GROUP BY signature_status"))
        except sqlite3.Error:
            signatures = {}
        # Every 200: its row exists and has had at least that many deliveries; no 200 twice.
        ack_counts = Counter(acks)
        repeated = [a for a, n in ack_counts.items() if n > 1]
        unknown = [a for a in ack_counts if a[0] not in rows or not 1 <= a[1] <= rows[a[0]][1]]
        # Nothing stored that was not sent, nor more often than it was sent.
        unexpected = [d for d in by_sha if d not in sent]
        overcounted = [d for d, n in by_sha.items() if d in sent and n > sent[d]]
        not_stored = [d for d in sent if d not in by_sha]
        # Spot check of answered rows: the stored bytes are the bytes sent; kind, signature.
        rng = random.Random(seed)
        answered_ids = sorted({a[0] for a in ack_counts if a[0] in rows})
        picks = rng.sample(answered_ids, min(sample, len(answered_ids)))
        spot_failures = []
        for callback_id in picks:
            row = conn.execute(
                "SELECT sha256, body, kind, " + ("signature_status" if signatures else "'?'") +
                " FROM callbacks WHERE id = ?", (callback_id,)).fetchone()
            digest, stored_body = row[0], row[1].encode()
            if hashlib.sha256(stored_body).hexdigest() != digest:
                spot_failures.append(f"callback {callback_id}: body does not hash to its sha256")
            if digest not in sent_lines or sent_lines[digest][1] != stored_body:
                spot_failures.append(f"callback {callback_id}: stored bytes are not a body sent")
                continue
            if row[2] != _kind_of(stored_body):
                spot_failures.append(f"callback {callback_id}: kind {row[2]}, sent a {_kind_of(stored_body)}")
            if signed and signatures and row[3] != "verified":
                spot_failures.append(f"callback {callback_id}: signature_status {row[3]!r}, not 'verified'")
    finally:
        conn.close()
    lost = len(unknown) + max(0, len(acks) - stored_deliveries)
    report = {
        "acknowledged_200": codes.get(200, 0),
        "acks_recorded": len(acks),
        "stored_deliveries": stored_deliveries,
        "stored_callbacks": len(rows),
        "unanswered_at_stop": unanswered,
        "stored_not_answered": stored_deliveries - len(acks),
        "lost": lost,
        "acks_not_in_db": len(unknown),
        "acks_repeated": len(repeated),
        "sent_bodies": len(sent),
        "sent_not_stored": len(not_stored),
        "unexpected_bodies": len(unexpected),
        "overcounted_bodies": len(overcounted),
        "spot_checked": len(picks),
        "spot_failures": spot_failures[:20],
        "non_2xx": non_2xx,
        "tables": tables,
        "kinds": kinds,
        "signatures": signatures,
        "examples": {"acks_not_in_db": unknown[:5], "unexpected": unexpected[:5],
                     "overcounted": overcounted[:5]},
    }
    report["ok"] = (
        lost == 0 and not repeated and not unexpected and not overcounted and not spot_failures
        and len(acks) == codes.get(200, 0)
        and 0 <= stored_deliveries - len(acks) <= unanswered
        and len(not_stored) <= unanswered
        and (tables.get("rejected_callbacks") or 0) == 0 and non_2xx == 0
    )
    return report


def verify_textbook(db_path, loads):
    """The textbook peer keeps a row per 200 (no de-duplication): at least as many rows as 200s."""
    codes = Counter()
    for result in loads:
        codes.update(summarise_codes(result))
    non_2xx = sum(n for c, n in codes.items() if not 200 <= c < 300)
    errors = sum(r["errors"][k] for r in loads for k in ("connect", "read", "write", "timeout"))
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT count(*) FROM callbacks").fetchone()[0]
    finally:
        conn.close()
    return {"ok": non_2xx == 0 and errors == 0 and rows >= codes.get(200, 0),
            "acknowledged_200": codes.get(200, 0), "stored_rows": rows, "non_2xx": non_2xx}


# --- the writer alone ----------------------------------------------------------------------

def bench_plans(args, bodies, count):
    """The first ``count`` bodies of the measured load, each turned into what a worker hands
    the writer: signature checked, parsed, its rows planned (as routes.receive does)."""
    from receiver.callbacks import parse
    from receiver.config import load_settings
    from receiver.rows import plan
    from receiver.signatures import Verifier
    from receiver.store import Delivery, utcnow

    verifier = Verifier(load_settings(db_path=":memory:", signature_secret=args.secret or ""))
    lines, plans = [], []
    prefix = bodies["main"][min(args.threads, args.connections[0])].prefix
    for authorization, body in make_bodies.read_lines(f"{prefix}.0"):
        delivery = Delivery(body, TARGET_PATH, utcnow(), "127.0.0.1", "wrk", "application/json",
                            authorization or None)
        signature = verifier.check(delivery)
        lines.append((authorization, body))
        plans.append(plan(parse(body), delivery, signature))
        if len(plans) >= count:
            break
    return lines, plans


def _batches(items, size):
    return [items[i:i + size] for i in range(0, len(items), size)]


def _fresh_store(path):
    """A new, empty event store at ``path``, opened as the writer opens it."""
    from receiver import db as receiver_db

    for old in Path(path).parent.glob(Path(path).name + "*"):
        old.unlink()
    receiver_db.init_db(str(path))
    return receiver_db.connect(str(path), synchronous="FULL")


def _project_all(conn):
    """Run the store's deferred projection until it has caught up (``store.project``, if this
    receiver has one; None otherwise). Whether it opens its own transaction or expects the
    caller's is left to it: inside ours first, alone if it starts its own."""
    from receiver import store

    project = getattr(store, "project", None)
    if project is None:
        return None
    for _ in range(100_000):
        try:
            with store.transaction(conn):
                done = project(conn)
        except sqlite3.OperationalError as error:
            if "within a transaction" not in str(error):
                raise
            done = project(conn)
        if not isinstance(done, int) or isinstance(done, bool) or done <= 0:
            break
    return True


def writer_alone(args, bodies, run_dir):
    """Callbacks/s through the writer's serial stage, no HTTP: ``store.store_batch`` on the
    planned bench bodies in batches of ``args.writer_batch``, each batch one synced commit
    (FULL, WAL), then the deferred projection (``store.project``) if the store has one; against
    a raw insert of the same bodies (sha256, body, time) into one table, batch for batch. One
    process, fresh files on the benchmark's disk.
    """
    from receiver import store
    from receiver.store import utcnow

    lines, plans = bench_plans(args, bodies, args.writer_alone)
    conn = _fresh_store(run_dir / "writer-alone.db")
    cpu, started = time.process_time(), time.perf_counter()
    for batch in _batches(plans, args.writer_batch):
        with store.transaction(conn):
            store.store_batch(conn, batch)
    writer_s, writer_cpu = time.perf_counter() - started, time.process_time() - cpu
    cpu, started = time.process_time(), time.perf_counter()
    projected = _project_all(conn)
    project_s, project_cpu = time.perf_counter() - started, time.process_time() - cpu
    derived_ok = not any(store.derived_differences(conn).values())
    conn.close()

    raw_path = run_dir / "raw-insert.db"
    conn = sqlite3.connect(raw_path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("CREATE TABLE raw (id INTEGER PRIMARY KEY, sha256 TEXT, body TEXT, received_at TEXT)")
    cpu, started = time.process_time(), time.perf_counter()
    for batch in _batches(lines, args.writer_batch):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO raw (sha256, body, received_at) VALUES (?, ?, ?)",
                         [(hashlib.sha256(body).hexdigest(), body.decode(), utcnow())
                          for _, body in batch])
        conn.execute("COMMIT")
    raw_s, raw_cpu = time.perf_counter() - started, time.process_time() - cpu
    conn.close()
    if not args.keep_db:
        for path in list(run_dir.glob("writer-alone.db*")) + list(run_dir.glob("raw-insert.db*")):
            path.unlink()
    n = len(plans)
    return {"callbacks": n, "batch": args.writer_batch, "derived_equal_rebuild": derived_ok,
            "writer_per_s": round(n / writer_s), "writer_cpu_us": round(1e6 * writer_cpu / n, 1),
            "projection_per_s": round(n / project_s) if projected and project_s else None,
            "projection_cpu_us": round(1e6 * project_cpu / n, 1) if projected else None,
            "raw_per_s": round(n / raw_s), "raw_cpu_us": round(1e6 * raw_cpu / n, 1),
            "ratio": round(raw_s and (n / writer_s) / (n / raw_s), 3)}


def _wal_frames(conn, wal_path, action):
    """WAL frames (pages written) and bytes that ``action()`` adds, checkpointing off."""
    page = conn.execute("PRAGMA page_size").fetchone()[0]
    before = wal_path.stat().st_size if wal_path.exists() else 0
    action()
    grown = (wal_path.stat().st_size if wal_path.exists() else 0) - max(before, 32)
    return grown // (page + 24), grown


# The writer derives what was committed every PROJECT_EVERY_S (20 ms): about this many callbacks
# at the benchmark's rate, what storage_cost derives at a time.
PROJECTION_CALLBACKS = 32


def storage_cost(args, bodies, run_dir, count=2_000, batch_sizes=()):
    """What one callback writes, measured in process from the WAL with checkpoints off (each
    frame is one page a transaction dirtied): the receiver's commit path in batches of 1 (a
    lone callback), of ``batch_sizes`` (the requests per commit the HTTP runs had) and of
    ``args.writer_batch``, its deferred projection apart (a transaction of its own after every
    PROJECTION_CALLBACKS callbacks committed, as the writer's 20 ms holds); and the textbook
    peer's sqlite-utils insert (one transaction per callback, as it runs)."""
    import sqlite_utils

    from receiver import store

    lines, plans = bench_plans(args, bodies, count)
    n = len(plans)
    cost = {"callbacks": n, "batch": args.writer_batch, "receiver": {},
            "projection_every": PROJECTION_CALLBACKS}
    for batch_size in sorted({1, args.writer_batch, *batch_sizes}):
        path = run_dir / f"wal-b{batch_size}.db"
        conn = _fresh_store(path)
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        wal = Path(f"{path}-wal")
        written = {"store": [0, 0], "projection": [0, 0]}

        def add(part, action):
            frames, grown = _wal_frames(conn, wal, action)
            written[part][0] += frames
            written[part][1] += grown

        def commit(batch):
            with store.transaction(conn):
                store.store_batch(conn, batch)

        pending = 0
        for batch in _batches(plans, batch_size):
            add("store", lambda: commit(batch))
            pending += len(batch)
            if getattr(store, "project", None) and pending >= PROJECTION_CALLBACKS:
                add("projection", lambda: _project_all(conn))
                pending = 0
        if getattr(store, "project", None) and pending:
            add("projection", lambda: _project_all(conn))
        frames, grown = written["store"]
        entry = {"pages": round(frames / n, 2), "wal_bytes": round(grown / n)}
        if getattr(store, "project", None):
            frames, grown = written["projection"]
            entry["projection_pages"] = round(frames / n, 2)
            entry["projection_wal_bytes"] = round(grown / n)
        cost["receiver"][batch_size] = entry
        conn.close()

    path = run_dir / "wal-textbook.db"
    for old in run_dir.glob("wal-textbook.db*"):
        old.unlink()
    db = sqlite_utils.Database(str(path))
    db.enable_wal()
    db.execute("PRAGMA synchronous = FULL")
    db.execute("PRAGMA wal_autocheckpoint = 0")
    table = db["callbacks"]
    table.create({"id": int, "received_at": str, "kind": str, "status": str, "sha256": str,
                  "body": str}, pk="id")

    def insert_all():
        for _, body in lines:
            data = json.loads(body)
            table.insert({"received_at": datetime.now().isoformat(),
                          "kind": "message_status" if "message_uuid" in data else "final_report",
                          "status": data.get("status"), "sha256": hashlib.sha256(body).hexdigest(),
                          "body": body.decode()})

    frames, grown = _wal_frames(db.conn, Path(f"{path}-wal"), insert_all)
    cost["textbook"] = {"pages": round(frames / n, 2), "wal_bytes": round(grown / n)}
    db.close()
    if not args.keep_db:
        for old in list(run_dir.glob("wal-b*.db*")) + list(run_dir.glob("wal-textbook.db*")):
            old.unlink()
    return cost


def receiver_check(db_path):
    """``receiver check``: integrity, and the derived rows equal a rebuild from the event log."""
    done = subprocess.run([str(VENV_BIN / "receiver"), "check", "--db", str(db_path)],
                          capture_output=True, text=True, timeout=600)
    return {"ok": done.returncode == 0, "output": (done.stdout + done.stderr).strip()}


# --- one run --------------------------------------------------------------------------------

def one_run(app_name, connections, args, bodies, out_dir, env_extra, label=None, profile=None,
            disk="normal"):
    """Start gunicorn, warm up, load, stop, check; return the run's record."""
    label = label or f"{app_name}-{disk}-c{connections}"
    run_dir = Path(tempfile.mkdtemp(prefix=f"{label.replace(':', '_')}-", dir=args.db_dir))
    syncs = SyncCounter(run_dir / "fsync-count")
    env_extra = {**env_extra, **args.variants.get(app_name, {}),
                 **syncs.environment(args.shim, args.fsync_ms if disk == "slow" else 0)}
    server = Server(app_name, run_dir, env_extra)
    threads = min(args.threads, connections)
    record = {"app": app_name, "disk": disk, "connections": connections, "label": label,
              "gunicorn_app": APPS[base_app(app_name)], "run_dir": str(run_dir)}
    print(f"  {label}: starting gunicorn on {server.url} ...", flush=True)
    server.start()
    try:
        record["workers"] = server.workers()
        rss_boot = server.rss()
        warm = run_wrk(server.url, bodies["warm"][threads].prefix, connections, threads,
                       args.warmup, run_dir / "wrk-warmup.log")
        rss_start = server.rss()
        sampler = Sampler(server, args.rss_interval)
        sampler.start()
        lags = LagSampler(server.url) if base_app(app_name) == "receiver" else None
        if lags:
            lags.start()
        cpu_before, machine_before, syncs_before = server.cpu(), machine_cpu(), syncs.read()
        http_before = server.http_worker_cpu()
        profilers = profile(server) if profile else None
        main_set = bodies["main"][threads]
        if args.soak:
            stop_after, duration = main_set.lengths[0], args.max_duration
        else:
            stop_after, duration = 0, args.duration
        print(f"  {label}: load {'until each body is sent once' if stop_after else f'{duration} s'}"
              f" ({threads} wrk threads, {connections} connections)", flush=True)
        main = run_wrk(server.url, main_set.prefix, connections, threads, duration,
                       run_dir / "wrk.log", stop_after=stop_after)
        cpu_after, machine_after, syncs_after = server.cpu(), machine_cpu(), syncs.read()
        http_after = server.http_worker_cpu()
        if profilers:
            profilers.wait()
        sampler.stop()
        record["projection_lag_ms"] = lags.stop() if lags else None
        rss_end = server.rss()
        record["workers_end"] = server.workers()
    finally:
        server.stop()
    codes = summarise_codes(main)
    seconds = main["duration_us"] / 1e6
    busy = machine_after[0] - machine_before[0]
    total = machine_after[1] - machine_before[1]
    steal = machine_after[2] - machine_before[2]
    # CPU the machine spent on anything but this run's workers and wrk (another job, say).
    other = busy / TICKS - (cpu_after - cpu_before) - main["wrk_cpu_s"]
    record.update({
        "requests": main["requests"],
        "seconds": round(seconds, 2),
        "rps": round(main["requests"] / seconds, 1),
        "latency_ms": {k: round(v / 1000, 2) for k, v in main["latency_us"].items()},
        "codes": {str(k): v for k, v in sorted(codes.items())},
        "non_2xx": sum(n for c, n in codes.items() if not 200 <= c < 300),
        "errors": main["errors"],
        "request_errors": sum(main["errors"][k] for k in ("connect", "read", "write", "timeout")),
        "wraps": sum(t["wraps"] for t in main["threads"]),
        "warmup": {"requests": warm["requests"], "codes": {str(k): v for k, v in summarise_codes(warm).items()},
                   "errors": warm["errors"]},
        "warmup_non_2xx": sum(n for c, n in summarise_codes(warm).items() if not 200 <= c < 300),
        "warmup_request_errors": sum(warm["errors"][k] for k in ("connect", "read", "write", "timeout")),
        "rss_kib": {"boot": sum(rss_boot.values()), "start": sum(rss_start.values()),
                    "end": sum(rss_end.values()), "peak": max([s for _, s in sampler.samples] or [0]),
                    "per_worker_boot": rss_boot, "per_worker_end": rss_end},
        "rss_samples": sampler.samples,
        "cpu": {"workers_s": round(cpu_after - cpu_before, 2), "wrk_s": main["wrk_cpu_s"],
                "machine_busy_pct": round(100 * busy / total, 1) if total else None,
                "steal_pct": round(100 * steal / total, 1) if total else None,
                "other_processes_s": round(max(other, 0.0), 2),
                "other_processes_cores": round(max(other, 0.0) / seconds, 2) if seconds else None,
                "worker_ms_per_request": round(1000 * (cpu_after - cpu_before) / max(main["requests"], 1), 3),
                "http_workers_ms_per_request": round(1000 * (http_after - http_before) / max(main["requests"], 1), 3)},
        "syncs": {"total": syncs_after - syncs_before,
                  "requests_per_sync": round(main["requests"] / (syncs_after - syncs_before), 2)
                  if syncs_after > syncs_before else None},
    })
    main_slices = main_set.slices()
    record["sent_mix"] = dict(sent_mix(issued_lines(main_slices, main)))
    if record["workers_end"] != record["workers"]:
        record["note"] = "workers were replaced during the run (restart or recycling)"
    if base_app(app_name) == "receiver":
        record["check"] = verify_receiver(server.db_path, [(bodies["warm"][threads].slices(), warm),
                                                           (main_slices, main)],
                                          signed=bool(args.secret))
        record["receiver_check"] = receiver_check(server.db_path)
    elif app_name == "textbook":
        record["check"] = verify_textbook(server.db_path, [warm, main])
    else:
        ok = record["non_2xx"] == 0 and record["request_errors"] == 0
        record["check"] = {"ok": ok, "acknowledged_200": codes.get(200, 0)}
    record["log_problems"] = server.log_problems()[:20]
    if not args.keep_db:
        for path in run_dir.glob("events.db*"):
            path.unlink()
    return record


# --- profiling ------------------------------------------------------------------------------

def _py_spy():
    exe = Path(sys.executable).parent / "py-spy"
    return str(exe) if exe.exists() else shutil.which("py-spy")


class Profilers(threading.Thread):
    """py-spy on the workers, started ``delay`` s into the load so that it samples steady state."""

    def __init__(self, exe, server, seconds, base, delay=2):
        super().__init__(daemon=True)
        self.exe, self.server, self.seconds, self.base, self.delay = exe, server, seconds, base, delay
        self.procs = []

    def spy(self, pid, fmt, path, *extra):
        return subprocess.Popen(
            [self.exe, "record", "--pid", str(pid), "--duration", str(int(self.seconds)),
             "--rate", "200", "--nonblocking", "--threads", "--format", fmt,
             "--output", str(path), *extra],
            stdout=subprocess.DEVNULL, stderr=open(f"{path}.log", "wb"))

    def run(self):
        time.sleep(self.delay)
        workers = self.server.workers()
        # Worker 1: a flamegraph of its busy threads, and the raw stacks of whichever thread
        # holds the GIL (where the process's Python time goes: one thread runs at a time).
        # Another worker: every thread, idle ones included (waits on the commit, the write
        # lock, the queue or the socket show up there).
        self.procs.append(self.spy(workers[0], "flamegraph", f"{self.base}-worker1.svg"))
        self.procs.append(self.spy(workers[0], "raw", f"{self.base}-worker1-gil.txt", "--gil"))
        self.procs.append(self.spy(workers[-1], "raw", f"{self.base}-worker{len(workers)}-idle.txt", "--idle"))

    def wait(self):
        self.join()
        for proc in self.procs:
            proc.wait()


def profiler_factory(seconds, out_dir, connections):
    """A function that starts py-spy on a server's workers (see Profilers)."""
    exe = _py_spy()
    if not exe:
        raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")

    def start(server):
        profilers = Profilers(exe, server, seconds, out_dir / f"profile-receiver-c{connections}")
        profilers.start()
        return profilers

    return start


# Frames every stack has (thread start-up, the gunicorn loop): left out of the inclusive list.
PLUMBING = re.compile(r"\((threading|runpy|<frozen runpy>|concurrent/futures/thread|gunicorn/(arbiter|app/|__main__|workers/base))")


def summarise_profile(path, top=15):
    """Self and inclusive sample shares per function from py-spy's raw (collapsed) stacks."""
    own, inclusive, per_thread, total = Counter(), Counter(), Counter(), 0
    for line in Path(path).read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        per_thread[re.sub(r"thread \(\d+\): ", "", frames[0])] += n
        names = [re.sub(r":\d+\)$", ")", f) for f in frames[1:]]
        if names:
            own[names[-1]] += n
        for name in set(names):
            if not PLUMBING.search(name):
                inclusive[name] += n
    if not total:
        return f"{Path(path).name}: no samples"
    threads = Counter()
    for name, n in per_thread.items():
        threads[re.sub(r"_\d+$", "_*", name)] += n
    lines = [f"{Path(path).name}: {total} samples"]
    lines.append("  by thread (ThreadPoolExecutor-* are gunicorn's request threads):")
    lines += [f"    {100 * n / total:5.1f} %  {name}" for name, n in threads.most_common(6)]
    lines.append("  self (the function on top of the stack):")
    lines += [f"    {100 * n / total:5.1f} %  {name}" for name, n in own.most_common(top)]
    lines.append("  inclusive (the function anywhere on the stack; thread plumbing left out):")
    lines += [f"    {100 * n / total:5.1f} %  {name}" for name, n in inclusive.most_common(top + 10)]
    return "\n".join(lines)


# --- reporting ------------------------------------------------------------------------------

def _mib(kib):
    return f"{kib / 1024:.0f}"


def _fmt(value, spec=".2f", none="n/a"):
    return none if value is None else format(value, spec)


def print_table(records):
    """Every run, in the order run."""
    rounds = any(r.get("repeat", 1) > 1 for r in records)
    head = (f"{'disk':<6} {'conns':>5}  {'app':<22} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} "
            f"{'CPU ms/req':>10} {'req/fsync':>9} {'lag p50/p99 ms':>14} {'non-2xx':>7} {'errors':>6} "
            f"{'/textb.':>7} {'/valid.':>7} {'/no-op':>6}  {'stored/acked':>13}  {'RSS MiB boot→end':<16}")
    print(head)
    print("-" * len(head))
    for r in records:
        check = r["check"]
        stored = (f"{check['stored_deliveries']}/{check['acknowledged_200']}"
                  if "stored_deliveries" in check else "-")
        rss = r["rss_kib"]
        ratio, textbook, validate = (_fmt(r.get(k), none="") for k in
                                     ("ratio", "ratio_textbook", "ratio_validate_only"))
        lag = r.get("projection_lag_ms")
        lag = (f"{lag['p50']:.0f}/{lag['p99']:.0f}" if lag else
               "n/a" if base_app(r["app"]) == "receiver" else "")
        app = r["app"] + (f"#{r['repeat']}" if rounds else "")
        print(f"{r['disk']:<6} {r['connections']:>5}  {app:<22} {r['rps']:>7.0f} "
              f"{r['latency_ms']['p50']:>7.2f} {r['latency_ms']['p99']:>7.2f} "
              f"{r['cpu']['worker_ms_per_request']:>10.3f} {_fmt(r['syncs']['requests_per_sync'], none='-'):>9} "
              f"{lag:>14} {r['non_2xx']:>7} {r['request_errors']:>6} {textbook:>7} {validate:>7} "
              f"{ratio:>6}  {stored:>13}  {_mib(rss['boot']) + '→' + _mib(rss['end']):<16}")


def print_summary(summary, cost, repeat):
    """Per disk and concurrency, the medians over the rounds, with what a callback writes."""
    print("per server" + (f", medians of {repeat} rounds" if repeat > 1 else "")
          + " (pages dirtied and WAL per callback: in process at the run's requests per fsync, "
            "see 'what one callback writes'):")
    head = (f"{'disk':<6} {'conns':>5}  {'app':<22} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} "
            f"{'CPU ms/req':>10} {'req/fsync':>9} {'pages/cb':>8} {'WAL KiB/cb':>10} "
            f"{'lag p50/p99 ms':>14} {'×textbook':>9} {'×valid.':>7} {'×no-op':>6}")
    print(head)
    print("-" * len(head))
    for key, entry in summary.items():
        disk, connections = key.split(" c")
        for app, f in entry.items():
            pages = wal = "-"
            if cost and base_app(app) == "receiver":
                mine = cost["receiver"][_batch_of(f)]
                pages = f"{mine['pages'] + mine.get('projection_pages', 0):.1f}"
                wal = f"{(mine['wal_bytes'] + mine.get('projection_wal_bytes', 0)) / 1024:.1f}"
            elif cost and app == "textbook":
                pages, wal = f"{cost['textbook']['pages']:.1f}", f"{cost['textbook']['wal_bytes'] / 1024:.1f}"
            elif base_app(app) in ("no-op", "validate-only"):
                pages = wal = "0"
            lag = (f"{f['lag_p50_ms']:.0f}/{f['lag_p99_ms']:.0f}" if f["lag_p50_ms"] is not None
                   else "n/a" if base_app(app) == "receiver" else "")
            print(f"{disk:<6} {connections:>5}  {app:<22} {f['rps']:>7.0f} {f['p50_ms']:>7.2f} "
                  f"{f['p99_ms']:>7.2f} {f['cpu_ms']:>10.3f} {_fmt(f['requests_per_sync'], none='-'):>9} "
                  f"{pages:>8} {wal:>10} {lag:>14} {_fmt(f.get('ratio_textbook'), none=''):>9} "
                  f"{_fmt(f.get('ratio_validate_only'), none=''):>7} {_fmt(f.get('ratio'), none=''):>6}")


def _batch_of(figures):
    """The commit batch a receiver's run had: its requests per fsync, rounded (1 at least)."""
    return max(1, round(figures["requests_per_sync"] or 1))


def print_storage(cost, alone):
    """The writer alone and what one callback writes."""
    if alone:
        projection = (f"; then the deferred projection {alone['projection_per_s']} callbacks/s "
                      f"({alone['projection_cpu_us']} µs CPU each)" if alone["projection_per_s"]
                      else "; no deferred projection (derived rows on the commit path)")
        print(f"the writer alone (store.store_batch, {alone['callbacks']} callbacks, batches of "
              f"{alone['batch']}, synced commits, no HTTP): {alone['writer_per_s']} callbacks/s "
              f"({alone['writer_cpu_us']} µs CPU each){projection}; a raw insert of the same bodies "
              f"{alone['raw_per_s']}/s ({alone['raw_cpu_us']} µs): writer / raw {alone['ratio']:.2f}; "
              f"derived rows equal a rebuild: {'yes' if alone['derived_equal_rebuild'] else 'NO'}")
    if cost:
        print(f"what one callback writes (in process, {cost['callbacks']} bench bodies, WAL with "
              f"checkpoints off, one frame per page a transaction dirtied; the projection every "
              f"{cost.get('projection_every', 'n/a')} callbacks):")
        rows = [(cost["receiver"][batch], f"receiver, {batch} callback(s) per commit")
                for batch in sorted(cost["receiver"])]
        for c, label in rows + [(cost["textbook"], "textbook, one sqlite-utils insert per commit")]:
            extra = (f" + projection {c['projection_pages']:.2f} pages, "
                     f"{c['projection_wal_bytes'] / 1024:.1f} KiB" if "projection_pages" in c else "")
            print(f"  {label}: {c['pages']:.2f} pages, {c['wal_bytes'] / 1024:.1f} KiB of WAL per "
                  f"callback{extra}")


def print_checks(records):
    for r in records:
        c = r["check"]
        if base_app(r["app"]) != "receiver":
            continue
        status = "OK" if c["ok"] else "FAILED"
        print(f"  {r['label']}: {status}: {c['acknowledged_200']} answered 200 (warm-up included), "
              f"{c['acks_recorded'] - c['acks_not_in_db']} of them found as committed deliveries "
              f"(callback_id, delivery_count) in the database, {c['acks_repeated']} repeated; "
              f"sum(delivery_count) = {c['stored_deliveries']} over {c['stored_callbacks']} callbacks, "
              f"{c['stored_not_answered']} stored but unanswered (wrk left {c['unanswered_at_stop']} "
              f"requests unanswered at its stop); lost {c['lost']}")
        print(f"    {c['sent_bodies']} distinct bodies sent, {c['sent_not_stored']} not stored, "
              f"{c['unexpected_bodies']} stored but never sent, {c['overcounted_bodies']} stored more "
              f"often than sent; spot check {c['spot_checked'] - len(c['spot_failures'])}/"
              f"{c['spot_checked']} byte-exact; rejected_callbacks {c['tables'].get('rejected_callbacks')}; "
              f"signature_status {c['signatures']}; rows {c['tables']}")
        for failure in c["spot_failures"]:
            print(f"    {failure}")
        rc = r.get("receiver_check")
        if rc:
            print(f"    receiver check: {'OK' if rc['ok'] else 'FAILED'}: {'; '.join(rc['output'].splitlines())}")
        if r.get("log_problems"):
            print(f"    gunicorn log: {len(r['log_problems'])} problem line(s), first: {r['log_problems'][0]}")


def _met(ok):
    return "met" if ok else "NOT MET"


def print_targets(summary, records, alone, args):
    """Issue 17's targets, from this run (reported, never the exit status)."""
    print("targets of issue 17 (reported, never the exit status)"
          + (f"; medians over {args.repeat} rounds" if args.repeat > 1 else "") + ":")
    for key, entry in summary.items():
        disk, connections = key.split(" c")
        for app, f in entry.items():
            if base_app(app) != "receiver":
                continue
            ratio = f.get("ratio_textbook")
            rounds = f" (rounds {f['ratio_textbook_rounds']})" if ratio is not None and len(f["ratio_textbook_rounds"]) > 1 else ""
            if ratio is None:
                print(f"  {key} {app}: × textbook n/a (textbook not run)")
            elif disk == "normal":
                line = f"  {key} {app}: {ratio:.2f} × textbook{rounds}: ≥ 1.0 {_met(ratio >= 1.0)}"
                if connections == "16":
                    line += (f"; aim ≥ 1.3 with p99 ≤ 20 ms (p99 {f['p99_ms']} ms) "
                             f"{_met(ratio >= 1.3 and f['p99_ms'] <= 20)}")
                print(line)
            else:
                print(f"  {key} {app}: {ratio:.2f} × textbook{rounds} (fsync + {args.fsync_ms:g} ms): "
                      f"≥ 3 {_met(ratio >= 3)}")
            lag = f["lag_p99_ms"]
            print(f"  {key} {app}: projection lag p99 "
                  + (f"{lag:.0f} ms: ≤ 100 ms {_met(lag <= 100)}" if lag is not None
                     else "n/a (no projection_lag_ms in /healthz)"))
    if alone:
        print(f"  the writer alone: {alone['writer_per_s']} callbacks/s: ≥ 10,000 "
              f"{_met(alone['writer_per_s'] >= 10_000)}")
    receivers = [r for r in records if base_app(r["app"]) == "receiver"]
    errors = sum(r["non_2xx"] + r["warmup_non_2xx"] + r["request_errors"] + r["warmup_request_errors"]
                 for r in records)
    print(f"  0 errors (non-2xx and failed requests, every app): {errors} {_met(errors == 0)}")
    print(f"  every 200 found committed byte-exact: {_met(all(r['check']['ok'] for r in receivers))}"
          f" ({sum(r['check'].get('lost', 0) for r in receivers)} lost)")
    print(f"  derived rows equal a rebuild after each run (receiver check): "
          f"{_met(all(r['receiver_check']['ok'] for r in receivers))}")


# --- main -----------------------------------------------------------------------------------

def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Benchmark the receiver against a no-op Flask app under the production "
                    "gunicorn config (config/gunicorn.conf.py), loaded by wrk on 127.0.0.1.",
        epilog="Exit status: 1 if a callback was lost or any answer was not 2xx (or a request "
               "failed), 2 if the harness could not run; never for speed.")
    parser.add_argument("--quick", action="store_true",
                        help=f"short runs to see that it all works: --duration {QUICK['duration']} "
                             f"--bodies {QUICK['bodies']} --writer-alone {QUICK['writer_alone']} "
                             "(options given explicitly win)")
    parser.add_argument("--duration", type=int, default=None,
                        help=f"seconds per measured run (default {DEFAULTS['duration']})")
    parser.add_argument("--disks", default=",".join(DISKS),
                        help="normal (the disk under --db-dir), slow (the same with every fsync "
                             "and fdatasync of the server processes delayed by --fsync-ms, "
                             "bench/slow_fsync.c preloaded), or both (default normal,slow)")
    parser.add_argument("--fsync-ms", type=float, default=2.0,
                        help="the slow disk's delay before each fsync/fdatasync (default 2 ms, "
                             "a cloud network disk costs 1-5 ms)")
    parser.add_argument("--connections", default="16,64",
                        help="comma-separated concurrency levels (default 16,64)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds of receiver + no-op per concurrency, the order alternating; "
                             "the summary gives medians (default 1; the machine is noisy, 3 helps)")
    parser.add_argument("--warmup", type=int, default=1, help="warm-up seconds before each run (default 1)")
    parser.add_argument("--bodies", type=int, default=None,
                        help=f"distinct lines in the body file (default {DEFAULTS['bodies']})")
    parser.add_argument("--seed", type=int, default=1, help="random seed of the bodies (default 1)")
    parser.add_argument("--unsigned", action="store_true",
                        help="send unsigned callbacks and run without VONAGE_SIGNATURE_SECRET "
                             "(default: signed like Vonage, the secret set for both apps)")
    parser.add_argument("--apps", default=DEFAULT_APPS,
                        help=f"apps to run, in order (default {DEFAULT_APPS}): the receiver; "
                             "validate-only (its checks without storage: the bound any storage "
                             "design can reach); textbook (bench/textbook_app.py, the peer a user "
                             "compares with); no-op (Flask and gunicorn alone)")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:VAR=VALUE,...",
                        help="also run the receiver with these environment variables, labelled "
                             "receiver:NAME (repeatable), e.g. --variant nice5:GUNICORN_WORKER_NICE=5")
    parser.add_argument("--writer-alone", type=int, default=None, metavar="N",
                        help="callbacks through the writer's serial stage alone (store.store_batch), "
                             "in process, against a raw insert of the same bodies; and what one "
                             f"callback writes (default {DEFAULTS['writer_alone']}; 0: skip both)")
    parser.add_argument("--writer-batch", type=int, default=64,
                        help="batch size of the writer-alone measurement (default 64)")
    parser.add_argument("--soak", type=int, metavar="N",
                        help="soak mode: one receiver run per concurrency posting N bodies, each "
                             "once, with RSS sampled throughout (e.g. --soak 1000000)")
    parser.add_argument("--max-duration", type=float, default=3600,
                        help="time bound of a soak run in seconds (default 3600)")
    parser.add_argument("--profile", type=float, metavar="SECONDS", default=0,
                        help="after the table, one more receiver run with py-spy recording a "
                             "worker for SECONDS (flamegraph and summary in the results dir)")
    parser.add_argument("--rss-interval", type=float, default=1.0,
                        help="seconds between RSS samples during a run (default 1; soak 5)")
    parser.add_argument("--db-dir", default=None,
                        help="where the fresh databases go (default: the results dir, i.e. the "
                             "repository's disk; not /tmp, which may be tmpfs)")
    parser.add_argument("--keep-db", action="store_true",
                        help="keep each run's database and the body files (deleted by default)")
    parser.add_argument("--out", default=None,
                        help="results JSON path (default bench-results/bench-<time>.json)")
    parser.add_argument("--results-dir", default=str(REPO / "bench-results"),
                        help="where the logs, wrk output and results go (default bench-results/)")
    args = parser.parse_args(argv)
    for name, default in DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, QUICK[name] if args.quick else default)
    args.disks = [d.strip() for d in args.disks.split(",") if d.strip()]
    if not args.disks or set(args.disks) - set(DISKS):
        parser.error(f"--disks: choose from {', '.join(DISKS)}, e.g. normal,slow")
    if args.fsync_ms < 0:
        parser.error("--fsync-ms needs a number of milliseconds ≥ 0")
    if args.duration < 1 or args.bodies < 1 or args.writer_alone < 0:
        parser.error("--duration and --bodies need a positive number, --writer-alone ≥ 0")
    try:
        args.connections = [int(c) for c in str(args.connections).split(",") if c.strip()]
    except ValueError:
        parser.error("--connections takes integers, e.g. 16,64")
    if not args.connections or min(args.connections) < 1:
        parser.error("--connections needs at least one positive number")
    if args.repeat < 1:
        parser.error("--repeat needs a positive number")
    args.apps = [a.strip() for a in args.apps.split(",") if a.strip()]
    unknown = [a for a in args.apps if a not in APPS]
    if unknown or not args.apps:
        parser.error(f"--apps: unknown {unknown}; choose from {', '.join(APPS)}")
    args.variants = {}
    for spec in args.variant:
        name, _, assignments = spec.partition(":")
        try:
            env = dict(a.split("=", 1) for a in assignments.split(",") if a)
        except ValueError:
            parser.error(f"--variant {spec!r}: expected NAME:VAR=VALUE[,VAR=VALUE...]")
        if not name or not env:
            parser.error(f"--variant {spec!r}: expected NAME:VAR=VALUE[,VAR=VALUE...]")
        args.variants[f"receiver:{name}"] = env
        args.apps.insert(args.apps.index("receiver") + 1 if "receiver" in args.apps else 0,
                         f"receiver:{name}")
    if args.soak is not None and args.soak < 1:
        parser.error("--soak needs a positive number of requests")
    if args.soak and args.rss_interval == 1.0:
        args.rss_interval = 5.0
    if args.soak and args.disks == list(DISKS):
        args.disks = ["normal"]  # one soak; --disks slow for the other
    return args


def prepare_bodies(args, work_dir):
    """Write the measured and the warm-up bodies, one stream per wrk thread."""
    count = args.soak or args.bodies
    bodies = {"main": {}, "warm": {}}
    for threads in sorted({min(args.threads, c) for c in args.connections}):
        for name, n, seed in (("main", count, args.seed),
                              ("warm", min(WARMUP_BODIES, count), args.seed + 7919)):
            started = time.perf_counter()
            body_set = BodySet(work_dir / f"{name}-t{threads}", threads, n, seed, args.secret)
            bodies[name][threads] = body_set
            total = sum(body_set.mix.values())
            shares = ", ".join(f"{k} {100 * v / total:.1f} %" for k, v in sorted(body_set.mix.items()))
            print(f"  {name} bodies for {threads} wrk thread(s): {total} lines ({shares}) "
                  f"in {time.perf_counter() - started:.1f} s", flush=True)
    return bodies


def run_pair(apps, connections, repeat, args, bodies, out_dir, env_extra, disk="normal"):
    """Every app at one concurrency on one disk; each record gets its ratios to the no-op, and
    the receivers theirs to the textbook peer and to validation alone."""
    by_app = {}
    for app_name in apps:
        label = f"{app_name}-{disk}-c{connections}" + (f"-r{repeat}" if args.repeat > 1 else "")
        record = one_run(app_name, connections, args, bodies, out_dir, env_extra, label=label,
                         disk=disk)
        record["repeat"] = repeat
        by_app[app_name] = record
        check = record["check"]["ok"] and record.get("receiver_check", {"ok": True})["ok"]
        print(f"  {record['label']}: {record['rps']:.0f} req/s, p50 {record['latency_ms']['p50']} ms, "
              f"p99 {record['latency_ms']['p99']} ms, non-2xx {record['non_2xx']}, "
              f"errors {record['request_errors']}, check {'OK' if check else 'FAILED'}",
              flush=True)
    for name, record in by_app.items():
        for key, peer in (("ratio", "no-op"), ("ratio_textbook", "textbook"),
                          ("ratio_validate_only", "validate-only")):
            if peer in by_app and name != peer and (key == "ratio" or base_app(name) == "receiver"):
                record[key] = round(record["rps"] / by_app[peer]["rps"], 3)
    return [by_app[a] for a in app_order(by_app)]


def app_order(names):
    """The receiver (and its variants) first, then the peers, as in the table."""
    rank = {"receiver": 0, "validate-only": 1, "textbook": 2, "no-op": 3}
    return sorted(names, key=lambda a: (rank.get(base_app(a), 9), a))


def summary_by_concurrency(records):
    """Per disk and concurrency ("normal c16"): the medians over the rounds."""
    summary = {}
    for disk in [d for d in DISKS if any(r["disk"] == d for r in records)]:
        for connections in sorted({r["connections"] for r in records if r["disk"] == disk}):
            runs = [r for r in records if r["connections"] == connections and r["disk"] == disk]
            entry = {}
            for app in app_order({r["app"] for r in runs}):
                mine = [r for r in runs if r["app"] == app]
                lags = [r["projection_lag_ms"] for r in mine if r.get("projection_lag_ms")]
                entry[app] = {
                    "rps": _median([r["rps"] for r in mine]),
                    "p50_ms": _median([r["latency_ms"]["p50"] for r in mine]),
                    "p99_ms": _median([r["latency_ms"]["p99"] for r in mine]),
                    "cpu_ms": _median([r["cpu"]["worker_ms_per_request"] for r in mine]),
                    "requests_per_sync": _median([r["syncs"]["requests_per_sync"] for r in mine
                                                  if r["syncs"]["requests_per_sync"]] or [None]),
                    "lag_p50_ms": _median([lag["p50"] for lag in lags]) if lags else None,
                    "lag_p99_ms": _median([lag["p99"] for lag in lags]) if lags else None,
                    "non_2xx": sum(r["non_2xx"] + r["warmup_non_2xx"] for r in mine),
                    "errors": sum(r["request_errors"] + r["warmup_request_errors"] for r in mine),
                    "checks_ok": all(r["check"]["ok"] and r.get("receiver_check", {"ok": True})["ok"]
                                     for r in mine)}
                for key in ("ratio", "ratio_textbook", "ratio_validate_only"):
                    values = [r[key] for r in mine if r.get(key) is not None]
                    if values:
                        entry[app][key] = _median(values)
                        entry[app][key + "_rounds"] = values
            summary[f"{disk} c{connections}"] = entry
    return summary


def _median(values):
    if None in values:
        return None
    values = sorted(values)
    middle = len(values) // 2
    return values[middle] if len(values) % 2 else round((values[middle - 1] + values[middle]) / 2, 3)


def main(argv=None):
    args = parse_args(argv)
    if not shutil.which("wrk"):
        print("wrk is not installed: `make system-deps` (or apt-get install wrk)", file=sys.stderr)
        return 2
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    results_dir = Path(args.results_dir).resolve()
    out_dir = results_dir / f"run-{stamp}"
    out_dir.mkdir(parents=True, exist_ok=True)
    args.db_dir = Path(args.db_dir) if args.db_dir else out_dir
    args.db_dir.mkdir(parents=True, exist_ok=True)
    out_path = Path(args.out) if args.out else results_dir / f"bench-{stamp}.json"
    args.secret = None if args.unsigned else "bench-" + os.urandom(24).hex()
    env_extra = {"VONAGE_SIGNATURE_SECRET": args.secret} if args.secret else {}
    if args.unsigned:
        env_extra["VONAGE_SIGNATURE_SECRET"] = ""

    machine = machine_info(args.db_dir)
    load = os.getloadavg()
    machine["loadavg_at_start"] = [round(x, 2) for x in load]
    print(f"machine: {machine['nproc']} CPU ({machine['cpu_model']}), {machine['memory_mib']} MiB, "
          f"kernel {machine['kernel']}; Python {machine['python']}, SQLite {machine['sqlite']}, "
          f"Flask {machine['flask']}, gunicorn {machine['gunicorn']}, {machine['wrk']}")
    if load[0] > 0.5:
        print(f"warning: load average {load[0]:.2f} before the start: something else is running; "
              f"the figures will be lower and noisier than on a quiet machine")
    # What the production config resolves to in this environment (read, not assumed).
    config = {}
    exec(compile((REPO / GUNICORN_CONFIG).read_text(), GUNICORN_CONFIG, "exec"), config)
    workers, gthreads, worker_class = config["workers"], config["threads"], config["worker_class"]
    print(f"gunicorn: -c {GUNICORN_CONFIG} ({worker_class}, {workers} workers x {gthreads} thread(s), "
          f"access log off), databases on {machine['db_filesystem']} under {args.db_dir}")
    print(f"load: wrk on 127.0.0.1, {args.threads} threads, POST {TARGET_PATH}, "
          f"{'unsigned' if args.unsigned else 'signed (HS256 JWT)'} callbacks; "
          + (f"soak: {args.soak} bodies each once, at most {args.max_duration:.0f} s" if args.soak
             else f"{args.duration:g} s per run after {args.warmup:g} s warm-up"))
    try:
        args.shim = build_shim(out_dir)
    except RuntimeError as error:
        print(f"harness error: {error}", file=sys.stderr)
        return 2
    print(f"disks: {', '.join(args.disks)}" + (f" (slow: {SHIM_SOURCE.name} preloaded, "
          f"+{args.fsync_ms:g} ms before each fsync/fdatasync of the server processes)"
          if "slow" in args.disks else "") + "; the shim counts the syncs on both")
    try:
        bodies = prepare_bodies(args, out_dir)
    except Exception as error:
        print(f"could not generate the bodies: {error}", file=sys.stderr)
        return 2

    records = []
    try:
        for disk in args.disks:
            for connections in args.connections:
                for repeat in range(1, args.repeat + 1):
                    print(f"{disk} disk, concurrency {connections}"
                          + (f", round {repeat}" if args.repeat > 1 else "") + ":", flush=True)
                    # Alternate the order of the apps, so that drift of the machine hits all alike.
                    apps = ["receiver"] if args.soak else args.apps[:: 1 if repeat % 2 else -1]
                    records += run_pair(apps, connections, repeat, args, bodies, out_dir,
                                        env_extra, disk=disk)
        alone = cost = None
        if args.writer_alone and not args.soak:
            print(f"the writer alone: {args.writer_alone} callbacks in batches of "
                  f"{args.writer_batch}, then a raw insert of the same bodies ...", flush=True)
            alone = writer_alone(args, bodies, out_dir)
            print("what one callback writes (WAL, checkpoints off) ...", flush=True)
            batches = {_batch_of(f) for entry in summary_by_concurrency(records).values()
                       for app, f in entry.items() if base_app(app) == "receiver"}
            cost = storage_cost(args, bodies, out_dir, min(2_000, args.writer_alone), batches)
        profile_record = None
        if args.profile and not args.soak:
            connections = args.connections[0]
            print(f"profile (not part of the table: py-spy slows what it samples), {connections} connections:")
            saved = args.duration
            args.duration = args.profile + 4
            profile_record = one_run("receiver", connections, args, bodies, out_dir, env_extra,
                                     label=f"profile-c{connections}",
                                     profile=profiler_factory(args.profile, out_dir, connections))
            args.duration = saved
    except RuntimeError as error:
        print(f"harness error: {error}", file=sys.stderr)
        return 2

    print()
    print("every run:")
    print_table(records)
    print()
    print("check (every 200 in the database; derived rows equal a rebuild):")
    print_checks(records)
    failures = [r for r in records if base_app(r["app"]) == "receiver" and (
        not r["check"]["ok"] or not r["receiver_check"]["ok"] or r["request_errors"]
        or r["warmup_request_errors"])]
    noop_bad = [r for r in records if r["app"] == "no-op" and not r["check"]["ok"]]
    print()
    for r in records:
        cpu = r["cpu"]
        print(f"  cpu {r['label']}: server tree {cpu['workers_s']} s ({cpu['worker_ms_per_request']} ms/request, "
              f"the HTTP workers {cpu.get('http_workers_ms_per_request')}), "
              f"wrk {cpu['wrk_s']} s, machine busy {cpu['machine_busy_pct']} %, "
              f"other processes {cpu['other_processes_cores']} cores"
              + (f", steal {cpu['steal_pct']} %" if cpu.get("steal_pct") else "")
              + f"; {r['syncs']['total']} fsync/fdatasync = {_fmt(r['syncs']['requests_per_sync'], none='-')} requests per sync")
    summary = summary_by_concurrency(records)
    print()
    print_summary(summary, cost, args.repeat)
    print()
    print_storage(cost, alone)
    print()
    print_targets(summary, records, alone, args)
    if args.soak:
        for r in records:
            samples = r["rss_samples"]
            marks = samples[:: max(1, len(samples) // 8)] + samples[-1:]
            print(f"  RSS over the soak ({r['label']}, sum of workers, MiB): "
                  + ", ".join(f"{t:.0f}s {s / 1024:.0f}" for t, s in marks))

    if profile_record:
        summaries = []
        for path in sorted(out_dir.glob("profile-*.txt")):
            summaries.append(summarise_profile(path))
        summary_path = out_dir / "profile-summary.txt"
        summary_path.write_text("\n\n".join(summaries) + "\n")
        print()
        print(f"profile: {profile_record['rps']:.0f} req/s while sampled; files in {out_dir}:")
        for path in sorted(out_dir.glob("profile-*")):
            if not path.name.endswith(".log"):
                print(f"  {path}")
        print()
        print("\n\n".join(summaries))

    if not args.keep_db:
        for sets in bodies.values():
            for body_set in sets.values():
                body_set.remove()

    results = {
        "started": stamp,
        "machine": machine,
        "settings": {"duration_s": args.duration, "connections": args.connections,
                     "disks": args.disks, "fsync_ms": args.fsync_ms,
                     "wrk_threads": args.threads, "warmup_s": args.warmup,
                     "bodies": args.soak or args.bodies, "seed": args.seed,
                     "signed": not args.unsigned, "soak": args.soak,
                     "gunicorn_workers": workers, "gunicorn_threads": gthreads,
                     "gunicorn_worker_class": worker_class,
                     "repeat": args.repeat,
                     "body_mix": dict(next(iter(bodies["main"].values())).mix)},
        "summary": summary,
        "writer_alone": alone,
        "storage_per_callback": cost,
        "runs": records,
        "profile": profile_record,
        "ok": not failures,
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print()
    print(f"results: {out_path.relative_to(REPO) if out_path.is_relative_to(REPO) else out_path}; "
          f"logs and wrk output under {out_dir.relative_to(REPO) if out_dir.is_relative_to(REPO) else out_dir}")
    others = [r["cpu"].get("other_processes_cores") or 0 for r in records]
    noisy = [r["label"] for r, cores in zip(records, others) if cores > 0.15]
    if noisy:
        print(f"warning: other processes used {min(others):.2f}–{max(others):.2f} cores during "
              f"{len(noisy)} of {len(records)} runs ({', '.join(noisy[:4])}{' …' if len(noisy) > 4 else ''};"
              f" see 'other processes' above): their figures are depressed, only ratios within a "
              f"round compare; rerun on a quiet machine")
    if noop_bad:
        print("warning: the no-op app had non-2xx answers or request errors; its figures are suspect")
    if failures:
        print("FAILED: lost callbacks, non-2xx answers or request errors in a receiver run (see above)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
