"""Reconciliation speed at 1,000,000 Vonage records (issue 15): does the per-day view answer
within Datasette's time limit (sql_time_limit_ms 5000, receiver/browse.py)?

Builds (or reuses) a database with N messages of ours and N Vonage records over 30 days, made
by SQL (not through the receiver: the view's speed depends on the rows, not on how they came),
with 1 % of records priced differently, 1 % missing and 1 % without callbacks, and 30 daily
imports of product MESSAGES. Then times, in process (SQLite as Datasette uses it) and over
HTTP from the real `receiver datasette` on 127.0.0.1:

- the whole vonage_reconciliation_by_day view, and one day of it;
- the dashboard's card query over the whole period;
- vonage_reconciliation filtered to one class (the page a user opens from the card).

    .venv/bin/python bench/reconciliation.py                  # 1,000,000 records (~1 min to build)
    .venv/bin/python bench/reconciliation.py --records 100000 --samples 3
"""

import argparse
import json
import os
import re
import sqlite3
import statistics
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from receiver import db  # noqa: E402
from testing.processes import Datasette  # noqa: E402

CHANNELS = ("sms", "whatsapp", "viber_service_msg", "messenger", "rcs")
PRICES = ("0.0333", "0.0147", "0.0120", "0.0010", "0.0075")
DAYS = 30


def build(path, n):
    """N messages and N records, by SQL, in one transaction."""
    print(f"building {path} with {n} messages and records ...", flush=True)
    db.init_db(str(path))
    conn = db.connect(str(path), synchronous="OFF")
    started = time.perf_counter()
    channels = "CASE i % 5 " + " ".join(f"WHEN {k} THEN '{c}'" for k, c in enumerate(CHANNELS)) + " END"
    prices = "CASE i % 5 " + " ".join(f"WHEN {k} THEN '{p}'" for k, p in enumerate(PRICES)) + " END"
    at = f"strftime('%Y-%m-%dT%H:%M:%S.000000Z', '2026-11-01', '+' || (i * {DAYS * 86400} / {n}) || ' seconds')"
    series = f"WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM s WHERE i < {n - 1})"
    conn.execute("BEGIN")
    for day in range(DAYS):
        conn.execute(
            "INSERT INTO vonage_record_imports (file_name, sha256, source, product, account_id, "
            "date_start, date_end, row_count, imported_at) VALUES (?, ?, 'csv', 'MESSAGES', "
            "'5140a7ed', strftime('%Y-%m-%dT00:00:00.000000Z', '2026-11-01', ?), "
            "strftime('%Y-%m-%dT00:00:00.000000Z', '2026-11-01', ?), ?, '2026-12-06T00:00:00Z')",
            (f"report_{day}.csv", f"{day:064d}", f"+{day} days", f"+{day + 1} days", n // DAYS))
    # Every 100th message has no callbacks (no messages row); every 100th + 1 has no record.
    conn.execute(f"""{series}
        INSERT INTO messages (message_uuid, api, channel, status, status_rank, first_seen_at,
            last_seen_at, submitted_at, delivered_at, price, price_nano, currency, price_source,
            event_count, workflow_id, workflow_position)
        SELECT printf('m%09d', i), CASE WHEN i % 2 THEN 'messages' ELSE 'dispatch' END,
            {channels}, 'delivered', 2, {at}, {at}, {at}, {at}, {prices},
            CAST(round(({prices}) * 1e9) AS INTEGER), 'EUR', 'status', 2,
            printf('w%09d', i / 2), 1 + i % 2
        FROM s WHERE i % 100 <> 0""")
    conn.execute("""INSERT INTO workflows (workflow_id, api, legs, legs_seen, outcome, first_seen_at)
        SELECT workflow_id, min(api), 2, count(*), 'delivered', min(first_seen_at)
        FROM messages GROUP BY workflow_id""")
    # Every 100th + 2 is priced differently by Vonage.
    conn.execute(f"""{series}
        INSERT INTO vonage_records (message_id, import_id, product, account_id, direction, provider,
            channel, status, date_received, price, price_nano, currency)
        SELECT printf('m%09d', i), 1 + (i * {DAYS} / {n}), 'MESSAGES', '5140a7ed', 'outbound',
            {channels}, {channels}, 'delivered', {at},
            CASE WHEN i % 100 = 2 THEN '0.05' ELSE {prices} END,
            CASE WHEN i % 100 = 2 THEN 50000000 ELSE CAST(round(({prices}) * 1e9) AS INTEGER) END,
            'EUR'
        FROM s WHERE i % 100 <> 1""")
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    conn.close()
    print(f"built in {time.perf_counter() - started:.1f} s", flush=True)


def card_query():
    metadata = yaml.safe_load((REPO / "config/metadata.yml").read_text())
    query = metadata["plugins"]["datasette-dashboards"]["callbacks"]["charts"]["vonage-billed"]["query"]
    return re.sub(r"\[\[.*?\]\]", "", query)


def timed(function, samples):
    """Median and max wall time (ms), median CPU time of this process (ms), last result."""
    times, cpu = [], []
    for _ in range(samples):
        started, started_cpu = time.perf_counter(), time.process_time()
        result = function()
        times.append((time.perf_counter() - started) * 1000)
        cpu.append((time.process_time() - started_cpu) * 1000)
    return round(statistics.median(times)), round(max(times)), round(statistics.median(cpu)), result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--db", type=Path, help="database to build or reuse "
                        "(default: bench-results/reconciliation-<records>.db)")
    parser.add_argument("--samples", type=int, default=3)
    args = parser.parse_args()
    path = args.db or REPO / "bench-results" / f"reconciliation-{args.records}.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        build(path, args.records)
    day = "2026-11-15"
    queries = {
        "by_day, whole view": "SELECT * FROM vonage_reconciliation_by_day",
        "by_day, one day": f"SELECT * FROM vonage_reconciliation_by_day WHERE day = '{day}'",
        "dashboard card, whole period": card_query(),
        "per message, class = price_differs": "SELECT * FROM vonage_reconciliation "
                                              "WHERE class = 'price_differs' LIMIT 101",
    }
    results = {"records": args.records, "in_process_ms": {}, "http_ms": {},
               "load_before": os.getloadavg()[0]}
    conn = db.connect(str(path), readonly=True)
    for name, sql in queries.items():
        median, most, cpu, rows = timed(lambda: conn.execute(sql).fetchall(), args.samples)
        results["in_process_ms"][name] = {"median": median, "max": most, "cpu": cpu, "rows": len(rows)}
        print(f"in process  {name:40} median {median:6} ms  max {most:6} ms  CPU {cpu:6} ms  "
              f"({len(rows)} rows; load {os.getloadavg()[0]:.1f})", flush=True)
    conn.close()

    log = path.with_suffix(".datasette.log")
    server = Datasette(path, log).start(timeout=60)
    try:
        name_ = path.stem
        pages = {
            "by_day, whole view (JSON, 1,000 rows)": f"/{name_}/vonage_reconciliation_by_day.json?_size=max",
            "by_day, one day (JSON)": f"/{name_}/vonage_reconciliation_by_day.json?day={day}",
            "by_day, CSV stream of every row": f"/{name_}/vonage_reconciliation_by_day.csv?_stream=on&_size=max",
            "dashboard card query": f"/{name_}.json?" + urllib.parse.urlencode({"sql": card_query()}),
        }
        for name, page in pages.items():
            def get():
                try:
                    with urllib.request.urlopen(server.url + page, timeout=120) as response:
                        return response.status, response.read()
                except urllib.error.HTTPError as error:
                    return error.code, error.read()
            median, most, _, (status, body) = timed(get, args.samples)
            note = "" if status == 200 else body[:200].decode(errors="replace")
            results["http_ms"][name] = {"median": median, "max": most, "status": status}
            print(f"over HTTP   {name:40} median {median:6} ms  max {most:6} ms  HTTP {status} "
                  f"(load {os.getloadavg()[0]:.1f}) {note}", flush=True)
    finally:
        server.stop()
    out = path.parent / f"reconciliation-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"results: {out}")
    slow = [name for name, r in results["http_ms"].items() if r["status"] != 200]
    return 1 if slow else 0


if __name__ == "__main__":
    sys.exit(main())
