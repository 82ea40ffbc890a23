"""Benchmark: the receiver against a no-op Flask app, both under the production gunicorn config.

For each concurrency it starts ``gunicorn -c config/gunicorn.conf.py receiver.wsgi:app`` on a
fresh database, warms it up, loads it with wrk from 127.0.0.1 with pre-generated real callbacks
(80 % statuses, 15 % final reports, 5 % exact re-deliveries, signed as Vonage signs them), stops
it and checks that every acknowledged callback is in the database; then does the same with
``bench.noop_app:app`` under identical settings. It prints req/s, p50 and p99 latency, the
ratio receiver / no-op, the check, and the workers' memory. Results go to bench-results/.

The exit status is non-zero only for a correctness failure (a non-2xx answer, a request error,
an acknowledged callback missing from the database), never for speed.

    python bench/run.py                      # 15 s per run at 16 and 64 connections
    python bench/run.py --duration 5 --connections 16
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


def cpu_seconds(pid):
    """User + system CPU seconds used by ``pid`` so far (0 if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


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
        """CPU seconds of the master, its workers and the writer processes."""
        return sum(cpu_seconds(pid) for pid in [self.master, *children(self.master)])

    def stop(self, grace=40):
        """SIGTERM (graceful: in-flight requests finish), SIGKILL of its group if it hangs."""
        return super().stop(grace)

    def log_problems(self):
        """Lines of the error log that are not routine (errors, tracebacks, worker timeouts)."""
        text = self.log_path.read_text(errors="replace")
        pattern = re.compile(r"\[(ERROR|CRITICAL)\]|Traceback|WORKER TIMEOUT| ERROR | 503 ")
        return [line for line in text.splitlines() if pattern.search(line)]


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

def writer_alone(args, bodies, run_dir):
    """Callbacks/s the writer commits from pre-built batches, against a raw insert of the same
    bodies (sha256, body, time) into one table: both durable (FULL, WAL), one process, batches
    of ``args.writer_batch``, on fresh files on the benchmark's disk.

    The writer's side starts from the frames the workers send (encoded beforehand), so it
    times what the writer process does per batch: decode the frames, run the store's SQL,
    commit. The raw side is SQLite's own limit on this disk.
    """
    from receiver import db as receiver_db
    from receiver.callbacks import parse
    from receiver.rows import plan
    from receiver.config import load_settings
    from receiver.signatures import Verifier
    from receiver.store import Delivery, utcnow
    from receiver.writer import GroupCommitWriter, _Pending, decode_request, encode_request

    lines = []
    for line in make_bodies.read_lines(f"{bodies['main'][min(args.threads, args.connections[0])].prefix}.0"):
        lines.append(line)
        if len(lines) >= args.writer_alone:
            break
    settings = load_settings(db_path=str(run_dir / "writer-alone.db"), synchronous="FULL",
                             signature_secret=args.secret or "", max_batch=args.writer_batch)
    verifier = Verifier(settings)
    frames = []
    for authorization, body in lines:
        received_at = utcnow()
        delivery = Delivery(body, TARGET_PATH, received_at, "127.0.0.1", "wrk",
                            "application/json", authorization or None)
        signature = verifier.check(delivery.authorization, body, delivery.received_epoch)
        # What a worker sends: the rows planned where the request is (as routes.receive does).
        frames.append(encode_request("store_planned", (plan(parse(body), delivery, signature),), {}))
    batches = [frames[i:i + args.writer_batch] for i in range(0, len(frames), args.writer_batch)]

    receiver_db.init_db(settings.db_path)
    writer = GroupCommitWriter(settings)
    cpu, started = time.process_time(), time.perf_counter()
    failed = 0
    for batch in batches:
        pending = [_Pending(decode_request(frame)) for frame in batch]
        writer.commit_batch(pending)
        failed += sum(p.error is not None for p in pending)
    writer_s, writer_cpu = time.perf_counter() - started, time.process_time() - cpu
    writer.close()

    raw_path = run_dir / "raw-insert.db"
    conn = sqlite3.connect(raw_path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("CREATE TABLE raw (id INTEGER PRIMARY KEY, sha256 TEXT, body TEXT, received_at TEXT)")
    raw_batches = [lines[i:i + args.writer_batch] for i in range(0, len(lines), args.writer_batch)]
    cpu, started = time.process_time(), time.perf_counter()
    for batch in raw_batches:
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
    n = len(lines)
    return {"callbacks": n, "batch": args.writer_batch, "failed": failed,
            "writer_per_s": round(n / writer_s), "writer_cpu_us": round(1e6 * writer_cpu / n, 1),
            "raw_per_s": round(n / raw_s), "raw_cpu_us": round(1e6 * raw_cpu / n, 1),
            "ratio": round(raw_s and (n / writer_s) / (n / raw_s), 3)}


# --- one run --------------------------------------------------------------------------------

def one_run(app_name, connections, args, bodies, out_dir, env_extra, label=None, profile=None):
    """Start gunicorn, warm up, load, stop, check; return the run's record."""
    label = label or f"{app_name}-c{connections}"
    run_dir = Path(tempfile.mkdtemp(prefix=f"{label.replace(':', '_')}-", dir=args.db_dir))
    env_extra = {**env_extra, **args.variants.get(app_name, {})}
    server = Server(app_name, run_dir, env_extra)
    threads = min(args.threads, connections)
    record = {"app": app_name, "connections": connections, "label": label,
              "gunicorn_app": APPS[base_app(app_name)], "run_dir": str(run_dir)}
    print(f"  {label}: starting gunicorn on {server.url} ...", flush=True)
    server.start()
    try:
        record["workers"] = server.workers()
        rss_boot = server.rss()
        warm = run_wrk(server.url, bodies["warm"][threads].prefix, connections, threads,
                       args.warmup, run_dir / "wrk-warmup.log")
        rss_start = server.rss()
        perf = (_start_perf([server.master, *children(server.master)], run_dir)
                if base_app(app_name) == "receiver" and args.perf else None)
        sampler = Sampler(server, args.rss_interval)
        sampler.start()
        cpu_before, machine_before = server.cpu(), machine_cpu()
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
        cpu_after, machine_after = server.cpu(), machine_cpu()
        if profilers:
            profilers.wait()
        sampler.stop()
        rss_end = server.rss()
        syncs = _stop_perf(perf)
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
                "worker_ms_per_request": round(1000 * (cpu_after - cpu_before) / max(main["requests"], 1), 3)},
    })
    main_slices = main_set.slices()
    record["sent_mix"] = dict(sent_mix(issued_lines(main_slices, main)))
    if syncs is not None:
        record["syncs"] = syncs
        if syncs.get("total"):
            record["syncs"]["requests_per_sync"] = round(main["requests"] / syncs["total"], 2)
    if record["workers_end"] != record["workers"]:
        record["note"] = "workers were replaced during the run (restart or recycling)"
    if base_app(app_name) == "receiver":
        record["check"] = verify_receiver(server.db_path, [(bodies["warm"][threads].slices(), warm),
                                                           (main_slices, main)],
                                          signed=bool(args.secret))
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


def _start_perf(pids, run_dir):
    """Count fsync/fdatasync syscalls of the master, workers and writer (≈ commits) with perf."""
    if not shutil.which("perf") or not pids:
        return None
    out = run_dir / "perf-syncs.txt"
    proc = subprocess.Popen(
        ["perf", "stat", "-x", ",", "-o", str(out), "-e",
         "syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync", "-p", ",".join(map(str, pids))],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    if proc.poll() is not None:
        return None
    return proc, out


def _stop_perf(perf):
    if perf is None:
        return None
    proc, out = perf
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    counts = {}
    try:
        for line in out.read_text().splitlines():
            parts = line.split(",")
            if len(parts) > 2 and parts[2].startswith("syscalls:sys_enter_"):
                name = parts[2].rsplit("_", 1)[1]
                counts[name] = int(parts[0]) if parts[0].isdigit() else None
    except OSError:
        return None
    counts["total"] = sum(v for v in counts.values() if v)
    return counts


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


def print_table(records):
    rounds = any(r.get("repeat", 1) > 1 for r in records)
    head = (f"{'conns':>5}  {'app':<22} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'non-2xx':>7} "
            f"{'errors':>6} {'/no-op':>6} {'/textb.':>7} {'/valid.':>7}  {'stored/acked':>15}  "
            f"{'RSS MiB boot→end (peak)':<24} {'reqs/sync':>9}")
    print(head)
    print("-" * len(head))
    for r in records:
        check = r["check"]
        stored = (f"{check['stored_deliveries']}/{check['acknowledged_200']}"
                  if "stored_deliveries" in check else "-")
        rss = r["rss_kib"]
        ratio, textbook, validate = (f"{r[k]:.2f}" if r.get(k) is not None else ""
                                     for k in ("ratio", "ratio_textbook", "ratio_validate_only"))
        syncs = r.get("syncs", {}).get("requests_per_sync", "")
        app = r["app"] + (f"#{r['repeat']}" if rounds else "")
        print(f"{r['connections']:>5}  {app:<22} {r['rps']:>8.0f} {r['latency_ms']['p50']:>7.2f} "
              f"{r['latency_ms']['p99']:>7.2f} {r['non_2xx']:>7} {r['request_errors']:>6} {ratio:>6} "
              f"{textbook:>7} {validate:>7}  "
              f"{stored:>15}  {_mib(rss['boot']) + '→' + _mib(rss['end']) + ' (' + _mib(rss['peak']) + ')':<24} "
              f"{syncs:>9}")


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
        if r.get("log_problems"):
            print(f"    gunicorn log: {len(r['log_problems'])} problem line(s), first: {r['log_problems'][0]}")


def _meets(value, target, higher=True):
    return "meets" if (value >= target if higher else value <= target) else "MISSES"


def print_targets(summary, records, alone, args):
    """The issue's five targets, from this run (reported, never the exit status)."""
    print("targets (reported, never the exit status)"
          + (f"; medians over {args.repeat} rounds" if args.repeat > 1 else "") + ":")
    for connections, entry in summary.items():
        for app, figures in entry.items():
            if base_app(app) != "receiver":
                continue
            mine = [r for r in records if r["connections"] == connections and r["app"] == app]
            parts = []
            for key, peer, target in (("ratio_textbook", "textbook", 1.3),
                                      ("ratio_validate_only", "validation alone", 0.75)):
                if key in figures:
                    rounds = figures[key + "_rounds"]
                    parts.append(f"{app} / {peer} {figures[key]:.2f} ({_meets(figures[key], target)} "
                                 f"≥ {target})" + (f" rounds {rounds}" if len(rounds) > 1 else ""))
            p99 = figures["p99_ms"]
            parts.append(f"p99 {p99} ms" + (f" ({_meets(p99, 20, higher=False)} ≤ 20 ms)"
                                            if connections == 16 else ""))
            parts.append(f"non-2xx {figures['non_2xx']} ({_meets(-figures['non_2xx'], 0)} 0), "
                         f"request errors {sum(r['request_errors'] for r in mine)}, "
                         f"lost {sum(r['check'].get('lost', 0) for r in mine)}")
            print(f"  c{connections}: " + "; ".join(parts))
    if alone:
        print(f"  the writer alone: {alone['writer_per_s']} callbacks/s "
              f"({alone['writer_cpu_us']} µs CPU each) against a raw insert {alone['raw_per_s']}/s "
              f"({alone['raw_cpu_us']} µs): writer / raw {alone['ratio']:.2f} "
              f"({_meets(alone['ratio'], 0.5)} ≥ 0.5); {alone['failed']} failed writes")


# --- main -----------------------------------------------------------------------------------

def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Benchmark the receiver against a no-op Flask app under the production "
                    "gunicorn config (config/gunicorn.conf.py), loaded by wrk on 127.0.0.1.",
        epilog="Exit status: 1 if a callback was lost or any answer was not 2xx (or a request "
               "failed), 2 if the harness could not run; never for speed.")
    parser.add_argument("--duration", type=int, default=15, help="seconds per measured run (default 15)")
    parser.add_argument("--connections", default="16,64",
                        help="comma-separated concurrency levels (default 16,64)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds of receiver + no-op per concurrency, the order alternating; "
                             "the summary gives medians (default 1; the machine is noisy, 3 helps)")
    parser.add_argument("--warmup", type=int, default=1, help="warm-up seconds before each run (default 1)")
    parser.add_argument("--bodies", type=int, default=200_000,
                        help="distinct lines in the body file (default 200000)")
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
    parser.add_argument("--writer-alone", type=int, default=20_000, metavar="N",
                        help="callbacks committed by the writer alone, in process, against a raw "
                             "insert of the same bodies (default 20000; 0: skip)")
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
    parser.add_argument("--no-perf", dest="perf", action="store_false",
                        help="do not count the workers' fsync calls with perf")
    parser.add_argument("--rss-interval", type=float, default=1.0,
                        help="seconds between RSS samples during a run (default 1; soak 5)")
    parser.add_argument("--db-dir", default=None,
                        help="where the fresh databases go (default: the results dir, i.e. the "
                             "repository's disk; not /tmp, which may be tmpfs)")
    parser.add_argument("--keep-db", action="store_true",
                        help="keep each run's database and the body files (deleted by default)")
    parser.add_argument("--out", default=None,
                        help="results JSON path (default bench-results/bench-<time>.json)")
    args = parser.parse_args(argv)
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
    return args


def prepare_bodies(args, work_dir):
    """Write the measured and the warm-up bodies, one stream per wrk thread."""
    count = args.soak or args.bodies
    bodies = {"main": {}, "warm": {}}
    for threads in sorted({min(args.threads, c) for c in args.connections}):
        for name, n, seed in (("main", count, args.seed), ("warm", WARMUP_BODIES, args.seed + 7919)):
            started = time.perf_counter()
            body_set = BodySet(work_dir / f"{name}-t{threads}", threads, n, seed, args.secret)
            bodies[name][threads] = body_set
            total = sum(body_set.mix.values())
            shares = ", ".join(f"{k} {100 * v / total:.1f} %" for k, v in sorted(body_set.mix.items()))
            print(f"  {name} bodies for {threads} wrk thread(s): {total} lines ({shares}) "
                  f"in {time.perf_counter() - started:.1f} s", flush=True)
    return bodies


def run_pair(apps, connections, repeat, args, bodies, out_dir, env_extra):
    """Every app at one concurrency; each record gets its ratios to the no-op, and the
    receivers theirs to the textbook peer and to validation alone."""
    by_app = {}
    for app_name in apps:
        label = f"{app_name}-c{connections}" + (f"-r{repeat}" if args.repeat > 1 else "")
        record = one_run(app_name, connections, args, bodies, out_dir, env_extra, label=label)
        record["repeat"] = repeat
        by_app[app_name] = record
        print(f"  {record['label']}: {record['rps']:.0f} req/s, p50 {record['latency_ms']['p50']} ms, "
              f"p99 {record['latency_ms']['p99']} ms, non-2xx {record['non_2xx']}, "
              f"errors {record['request_errors']}, check {'OK' if record['check']['ok'] else 'FAILED'}",
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
    """Per concurrency: the medians over the rounds (all that one round gives, with one)."""
    summary = {}
    for connections in sorted({r["connections"] for r in records}):
        runs = [r for r in records if r["connections"] == connections]
        entry = {}
        for app in app_order({r["app"] for r in runs}):
            mine = [r for r in runs if r["app"] == app]
            entry[app] = {"rps": _median([r["rps"] for r in mine]),
                          "p50_ms": _median([r["latency_ms"]["p50"] for r in mine]),
                          "p99_ms": _median([r["latency_ms"]["p99"] for r in mine]),
                          "non_2xx": sum(r["non_2xx"] + r["warmup_non_2xx"] for r in mine)}
            for key in ("ratio", "ratio_textbook", "ratio_validate_only"):
                values = [r[key] for r in mine if r.get(key) is not None]
                if values:
                    entry[app][key] = _median(values)
                    entry[app][key + "_rounds"] = values
        summary[connections] = entry
    return summary


def _median(values):
    values = sorted(values)
    middle = len(values) // 2
    return values[middle] if len(values) % 2 else round((values[middle - 1] + values[middle]) / 2, 3)


def main(argv=None):
    args = parse_args(argv)
    if not shutil.which("wrk"):
        print("wrk is not installed: `make system-deps` (or apt-get install wrk)", file=sys.stderr)
        return 2
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    results_dir = REPO / "bench-results"
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
        bodies = prepare_bodies(args, out_dir)
    except Exception as error:
        print(f"could not generate the bodies: {error}", file=sys.stderr)
        return 2

    records = []
    try:
        for connections in args.connections:
            for repeat in range(1, args.repeat + 1):
                print(f"concurrency {connections}" + (f", round {repeat}" if args.repeat > 1 else "")
                      + ":", flush=True)
                # Alternate the order of the apps, so that drift of the machine hits all alike.
                apps = ["receiver"] if args.soak else args.apps[:: 1 if repeat % 2 else -1]
                records += run_pair(apps, connections, repeat, args, bodies, out_dir, env_extra)
        alone = None
        if args.writer_alone and not args.soak:
            print(f"the writer alone: {args.writer_alone} callbacks in batches of "
                  f"{args.writer_batch}, then a raw insert of the same bodies ...", flush=True)
            alone = writer_alone(args, bodies, out_dir)
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
    print_table(records)
    print()
    print("check (every 200 in the database):")
    print_checks(records)
    failures = [r for r in records if base_app(r["app"]) == "receiver" and (
        not r["check"]["ok"] or r["request_errors"] or r["warmup_request_errors"])]
    noop_bad = [r for r in records if r["app"] == "no-op" and not r["check"]["ok"]]
    print()
    summary = summary_by_concurrency(records)
    print_targets(summary, records, alone, args)
    for r in records:
        cpu = r["cpu"]
        print(f"  cpu {r['label']}: gunicorn (master + workers) {cpu['workers_s']} s ({cpu['worker_ms_per_request']} ms/request), "
              f"wrk {cpu['wrk_s']} s, machine busy {cpu['machine_busy_pct']} %, "
              f"other processes {cpu['other_processes_cores']} cores"
              + (f", steal {cpu['steal_pct']} %" if cpu.get("steal_pct") else "")
              + (f"; {r['syncs']['total']} fsync/fdatasync = {r['syncs'].get('requests_per_sync')} requests per sync"
                 if r.get("syncs") else ""))
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
                print(f"  {path.relative_to(REPO)}")
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
                     "wrk_threads": args.threads, "warmup_s": args.warmup,
                     "bodies": args.soak or args.bodies, "seed": args.seed,
                     "signed": not args.unsigned, "soak": args.soak,
                     "gunicorn_workers": workers, "gunicorn_threads": gthreads,
                     "gunicorn_worker_class": worker_class,
                     "repeat": args.repeat,
                     "body_mix": dict(next(iter(bodies["main"].values())).mix)},
        "summary": summary,
        "writer_alone": alone,
        "runs": records,
        "profile": profile_record,
        "ok": not failures,
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print()
    print(f"results: {out_path.relative_to(REPO) if out_path.is_relative_to(REPO) else out_path}; "
          f"logs and wrk output under {out_dir.relative_to(REPO)}")
    noisy = [r["label"] for r in records if (r["cpu"].get("other_processes_cores") or 0) > 0.15]
    if noisy:
        print(f"warning: other processes used CPU during {', '.join(noisy)} (see 'other processes' "
              f"above): figures of those runs are depressed and ratios unreliable; rerun on a quiet machine")
    if noop_bad:
        print("warning: the no-op app had non-2xx answers or request errors; its figures are suspect")
    if failures:
        print("FAILED: lost callbacks, non-2xx answers or request errors in a receiver run (see above)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
