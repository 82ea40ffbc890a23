"""Browsing and export speed on a large event store (issue: browse, reconcile, export).

Builds (or reuses) a database of realistic traffic written through the receiver's own storage
code (`receiver simulate`), starts the real `receiver datasette` on 127.0.0.1, and times:

- a dispatch's timeline (canned query), a message's history (canned query) and the
  `dispatches` page filtered by uuid, each against Datasette's own `/-/versions.json` measured
  in the same run as the baseline;
- `receiver export billing` (rows per second and peak memory) for the whole period, against a
  plain `SELECT * FROM billing_lines` written as CSV by Python in the same run;
- the database's size per stored callback.

    .venv/bin/python bench/browse.py --dispatches 1000000        # builds it first (~30 min)
    .venv/bin/python bench/browse.py --db bench-results/browse-1m.db --samples 100
"""

import argparse
import csv
import json
import random
import sqlite3
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from testing.processes import Datasette  # noqa: E402


def timed_get(url):
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=30) as response:
        response.read()
        status = response.status
    return (time.perf_counter() - start) * 1000, status


def summary(samples):
    samples = sorted(samples)
    return {"p50": round(statistics.median(samples), 1),
            "p95": round(samples[int(len(samples) * 0.95) - 1], 1),
            "max": round(samples[-1], 1)}


def build(db, dispatches, seed):
    print(f"building {db} with {dispatches} dispatches through `receiver simulate` ...", flush=True)
    subprocess.run([str(BIN / "receiver"), "simulate", "--db", str(db), "--dispatches",
                    str(dispatches), "--seed", str(seed), "--days", "60"], check=True)


def counts(db):
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        names = ("callbacks", "status_events", "final_reports", "messages", "dispatches")
        found = {name: conn.execute(f"SELECT count(*) FROM {name}").fetchone()[0] for name in names}
        span = conn.execute("SELECT min(charged_at), max(charged_at) FROM billing_lines").fetchone()
        return found, span
    finally:
        conn.close()


def pick(db, table, column, n, rng):
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        top = conn.execute(f"SELECT max(rowid) FROM {table}").fetchone()[0]
        values = []
        while len(values) < n:
            row = conn.execute(f"SELECT {column} FROM {table} WHERE rowid = ?",
                               (rng.randint(1, top),)).fetchone()
            if row and row[0]:
                values.append(row[0])
        return values
    finally:
        conn.close()


def browse(db, samples, rng):
    process = Datasette(db, Path(db).with_name("datasette.log")).start(timeout=60)
    base = process.url
    name = Path(db).stem
    try:
        dispatch_ids = pick(db, "dispatches", "dispatch_uuid", samples, rng)
        message_ids = pick(db, "messages", "message_uuid", samples, rng)
        pages = {
            "baseline: /-/versions.json": [f"{base}/-/versions.json"] * samples,
            "dispatch timeline (canned query)": [
                f"{base}/{name}/dispatch_timeline?dispatch_uuid={d}" for d in dispatch_ids],
            "message history (canned query)": [
                f"{base}/{name}/message_history?message_uuid={m}" for m in message_ids],
            "dispatches page filtered by uuid": [
                f"{base}/{name}/dispatches?dispatch_uuid={d}" for d in dispatch_ids],
        }
        results = {}
        for label, urls in pages.items():
            timed_get(urls[0])  # warm
            times = []
            for url in urls:
                elapsed, status = timed_get(url)
                assert status == 200, (url, status)
                times.append(elapsed)
            results[label] = summary(times)
        return results
    finally:
        process.stop()


def export(db, start, end, out_dir):
    out = out_dir / "billing.csv"
    started = time.perf_counter()
    child = subprocess.run(
        [sys.executable, "-c",
         "import resource, sys; from receiver.cli import cli; "
         "sys.argv = ['receiver'] + sys.argv[1:]\n"
         "try:\n    cli()\nfinally:\n"
         "    print('MAXRSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)",
         "export", "billing", "--db", str(db), "--from", start, "--to", end, "-o", str(out)],
        capture_output=True, text=True)
    seconds = time.perf_counter() - started
    assert child.returncode == 0, child.stderr
    rows = sum(1 for _ in open(out, newline="")) - 1
    rss = int(child.stderr.rsplit("MAXRSS", 1)[1].split()[0])
    # Baseline in the same run: the view's rows written as CSV by Python, nothing else.
    started = time.perf_counter()
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    with open(out_dir / "baseline.csv", "w", newline="") as file:
        writer = csv.writer(file)
        for row in conn.execute("SELECT * FROM billing_lines"):
            writer.writerow(row)
    conn.close()
    baseline = time.perf_counter() - started
    return {"rows": rows, "seconds": round(seconds, 2), "rows_per_s": round(rows / seconds),
            "peak_rss_mib": round(rss / 1024, 1), "baseline_seconds": round(baseline, 2),
            "ratio_to_baseline": round(baseline / seconds, 2)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default=str(REPO / "bench-results" / "browse-1m.db"))
    parser.add_argument("--dispatches", type=int, default=1_000_000,
                        help="size to build when --db does not exist (default 1000000)")
    parser.add_argument("--samples", type=int, default=50, help="requests per page (default 50)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    db = Path(args.db)
    if not db.exists():
        db.parent.mkdir(parents=True, exist_ok=True)
        build(db, args.dispatches, args.seed)
    rng = random.Random(args.seed)
    found, (first, last) = counts(db)
    size = db.stat().st_size
    stored = found["status_events"] + found["final_reports"]
    print(f"database: {db} {size / 2**20:.0f} MiB; " + ", ".join(f"{k} {v:,}" for k, v in found.items()))
    print(f"size per stored callback: {size / stored:.0f} bytes")
    results = {"counts": found, "bytes": size, "bytes_per_callback": round(size / stored)}
    results["browse_ms"] = browse(db, args.samples, rng)
    for label, figures in results["browse_ms"].items():
        print(f"  {label:36s} p50 {figures['p50']:7.1f} ms  p95 {figures['p95']:7.1f} ms  max {figures['max']:7.1f} ms")
    out_dir = db.parent / "browse-export"
    out_dir.mkdir(exist_ok=True)
    results["export"] = export(db, first[:10], last[:10], out_dir)
    e = results["export"]
    print(f"  export billing: {e['rows']:,} rows in {e['seconds']} s = {e['rows_per_s']:,} rows/s, "
          f"peak RSS {e['peak_rss_mib']} MiB; baseline (plain SELECT to CSV) {e['baseline_seconds']} s, "
          f"ratio {e['ratio_to_baseline']}")
    (db.parent / "browse-results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
